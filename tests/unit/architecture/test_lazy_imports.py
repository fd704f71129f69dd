"""A worker that serves only smtpd loads no web, archive, Office or libmagic code (issue 10, item 10).

The supervisor of ``mailsift serve`` loads the config and forks the workers, so
whatever the config surface, the config and the CLI import at start is in
every worker's memory.  Each case runs in a fresh interpreter: ``from mailsift
import *``, the bundled default config loaded (``config.load``), the smtpd
service's mail path built (not served; its ``webq`` line taken out), and with ``mailsift.cli.main`` (the
process ``mailsift serve`` runs in) imported too; none of the heavy libraries
below may be in ``sys.modules`` then.  They are imported where they are needed:
when a config names ``webq``/``notify``/``file_type``/``office_macros``, when the
web service starts, or at the first archive or TNEF file.

httpx (the rspamd client) is not listed yet: making it lazy is the engines
part of this issue (``scanners/engines/``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "argon2",  # web users' passwords
    "httpx",  # rspamd's HTTP protocol (scanners/engines/rspamd.py)
    "itsdangerous",  # signed links (webq, the digest)
    "jinja2",  # web pages, notifications
    "libarchive",  # decompress()
    "magic",  # file_type(), file_magic()
    "oletools",  # office_macros()
    "prometheus_client",  # webq's /metrics
    "pyfuse3",  # fusefs(): only in its own process (services/fusefs.py)
    "starlette",  # webq
    "tnefparse",  # decompress() of winmail.dat
    "uvicorn",  # webq
)

PROBE = """
import json, sys
{cli}
from mailsift import *
from mailsift import config
from mailsift.core.mailpath import MailPath

# The bundled default config without its webq (Build 10 serves one): a worker of a config that
# serves only smtpd (Postfix's content filter) must not load the web code.
import os, tempfile
text = "".join(line for line in open(config.DEFAULT_CONFIG) if not line.strip().startswith("webq("))
assert "webq(" not in text.split("SRV = [", 1)[1]
path = os.path.join(tempfile.mkdtemp(), "smtpd_only.py")
open(path, "w").write(text)
loaded = config.load(path)
paths = [MailPath(s.scanners, loaded.settings, s.next_hop) for s in loaded.services if s.kind == "smtpd"]
assert len(paths) == 1, loaded.services
print(json.dumps(sorted(sys.modules)))
"""


def imported(tmp_path: Path, *, cli: bool) -> set[str]:
    """The top-level packages in sys.modules after the probe, in a fresh interpreter."""
    code = PROBE.format(cli="import mailsift.cli.main" if cli else "")
    env = {**os.environ, "MAILSIFT_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout)}


@pytest.mark.parametrize("cli", [False, True], ids=["config-surface", "mailsift-serve"])
def test_the_default_configs_smtpd_worker_imports_no_heavy_library(tmp_path: Path, cli: bool) -> None:
    modules = imported(tmp_path, cli=cli)
    assert "aiosmtpd" in modules  # smtpd's library: the probe ran
    heavy = sorted(set(HEAVY) & modules)
    assert heavy == [], f"imported at start by a worker that serves only smtpd: {heavy}"
