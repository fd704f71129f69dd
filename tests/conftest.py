"""The whole suite: its own servers and commands keep the current user (``USER = None``).

Run as root (CI), a config without ``USER`` would make ``serve``'s workers and
the state commands drop to ``mailsift``; the suite's servers, the CLI tests run
in-process and the configs in tests/ do not want that.  Only
tests/security/test_privilege_drop.py runs the real drop, with its own user.
"""

import os

os.environ["MAILSIFT_USER"] = ""  # empty: USER = None unless a config says otherwise
