"""The whole suite: its own servers and commands keep the current user (``USER = None``), and
never read an installed ``/etc/mailsift/config.py``.

Run as root (CI), a config without ``USER`` would make ``serve``'s workers and
the state commands drop to ``mailsift``; the suite's servers, the CLI tests run
in-process and the configs in tests/ do not want that.  Only
tests/security/test_privilege_drop.py runs the real drop, with its own user.

``MAILSIFT_ETC_CONFIG`` replaces ``/etc/mailsift/config.py`` by a path that cannot exist
(under ``/dev/null``): a command without ``-c`` finds the bundled config, in process and
in every subprocess, even on a machine where the package is installed
(tests/unit/cli/test_common.py checks both; tests/integration/test_package.py gives the
installed commands systemd's environment, without it).
"""

import os
from collections.abc import Iterator

import pytest

os.environ["MAILSIFT_USER"] = ""  # empty: USER = None unless a config says otherwise
os.environ["MAILSIFT_ETC_CONFIG"] = os.path.join(os.devnull, "mailsift", "config.py")  # never a file


@pytest.fixture(autouse=True)
def _keep_the_umask() -> Iterator[None]:
    """Give each test the umask it started with: ``Supervisor.run`` (run in process by
    some tests) sets mailsift's 0027 for good, and a later test in the same worker
    would then write files others cannot read (a private Postfix's tables: 'Permission
    denied', mail deferred)."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)
