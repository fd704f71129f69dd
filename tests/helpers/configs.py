"""A config file of one extra line over a minimal head, loaded (for the tests of one global setting)."""

from __future__ import annotations

from pathlib import Path

from mailsift import config


def load_with(tmp_path: Path, line: str) -> config.Config:
    """Load ``STATE_DIR``, ``SMTP_SERVER`` and then ``line`` (line 4 of the file)."""
    path = tmp_path / "mailsift.conf.py"
    state = str(tmp_path / "state")
    head = f"from mailsift import *\nSTATE_DIR = {state!r}\nSMTP_SERVER = ('127.0.0.1', 10025)\n"
    path.write_text(f"{head}{line}\n", encoding="utf-8")
    return config.load(str(path))
