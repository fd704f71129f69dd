"""No work at import time: importing any module of mailsift touches neither the network nor the disk.

Each check runs in a fresh interpreter (``sys.executable``) in which the
socket functions (``socket.socket`` and its ``connect``, ``create_connection``,
``getaddrinfo``, ``gethostname``, ``getfqdn``, ``gethostbyname``,
``gethostbyaddr``) and the file-system writers (``open``/``io.open`` for
writing, ``os.open`` with ``O_CREAT`` or write access, ``os.mkdir``,
``os.makedirs``, ``os.rename``/``os.replace``, ``sqlite3.connect``) are wrapped
to record each call before any mailsift module is imported.  Reading files
(templates, catalogs) is allowed, and so is opening ``/dev/null``: python-magic
and libarchive-c look for their C library with ``ctypes.util.find_library``,
which runs ``ldconfig -p`` with its output to ``/dev/null``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HARNESS = r"""
import builtins, io, json, os, socket, sqlite3, sys, traceback

touched = []

def record(what, detail):
    frames = [f for f in traceback.extract_stack()[:-2] if "<frozen" not in f.filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    touched.append(f"{what}({detail}) at {where}")

def wrap(owner, name, describe=lambda *a, **k: ", ".join(map(repr, a)), when=lambda *a, **k: True):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            record(name, describe(*args, **kwargs))
        return real(*args, **kwargs)
    setattr(owner, name, wrapper)

class RecordingSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        record("socket.socket", ", ".join(map(repr, args)))
        super().__init__(*args, **kwargs)
    def connect(self, address):
        record("socket.connect", repr(address))
        return super().connect(address)
    def connect_ex(self, address):
        record("socket.connect_ex", repr(address))
        return super().connect_ex(address)

socket.socket = RecordingSocket
for name in ("create_connection", "getaddrinfo", "gethostname", "getfqdn", "gethostbyname", "gethostbyname_ex",
             "gethostbyaddr"):
    wrap(socket, name)

def writes(file, mode="r", *args, **kwargs):
    return isinstance(mode, str) and any(c in mode for c in "wax+") and file != os.devnull

WRITE_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC
wrap(builtins, "open", when=writes)
wrap(io, "open", when=writes)
wrap(os, "open", when=lambda path, flags, *a, **k: bool(flags & WRITE_FLAGS) and path != os.devnull)
for name in ("mkdir", "makedirs", "rename", "replace", "symlink", "link"):
    wrap(os, name)
wrap(sqlite3, "connect")

sys.path[:0] = json.loads(sys.argv[1])
failures = {}
for module in json.loads(sys.argv[2]):
    try:
        __import__(module)
    except BaseException as error:
        failures[module] = f"{type(error).__name__}: {error}"
print(json.dumps({"touched": touched, "failures": failures}))
"""

NOT_IMPORTABLE = {"mailsift.storage.migrations.env"}
"""Alembic's environment script: runs only inside Alembic."""


def mailsift_modules() -> list[str]:
    """Every module of src/mailsift, found on disk (nothing is imported here)."""
    root = Path(__file__).resolve().parents[3] / "src"
    names = []
    for path in sorted((root / "mailsift").rglob("*.py")):
        relative = path.relative_to(root).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        if "data" in parts or not all((root / Path(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))):
            continue  # mailsift/data holds config files, not modules
        names.append(".".join(parts))
    return [name for name in names if name not in NOT_IMPORTABLE]


def imports(modules: list[str], path: list[str] | None = None) -> dict[str, object]:
    """Import ``modules`` in a fresh interpreter; what they touched, and the imports that failed."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    completed = subprocess.run(
        [sys.executable, "-B", "-c", HARNESS, json.dumps(path or []), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return dict(json.loads(completed.stdout.splitlines()[-1]))


def test_the_module_list_is_complete() -> None:
    modules = mailsift_modules()
    assert {"mailsift", "mailsift.settings", "mailsift.cli.main", "mailsift.storage.quarantine.store"} <= set(modules)
    assert len(modules) > 90


def test_importing_mailsift_touches_neither_network_nor_disk() -> None:
    found = imports(mailsift_modules())
    assert found["failures"] == {}
    assert found["touched"] == []


def test_the_check_sees_a_module_that_works_at_import(tmp_path: Path) -> None:
    """The harness is not blind: a module that resolves its name or writes a file at import is caught."""
    (tmp_path / "fqdn_at_import.py").write_text("import socket\nHOST = socket.getfqdn()\n")
    (tmp_path / "write_at_import.py").write_text(f"open({str(tmp_path / 'x')!r}, 'w').close()\n")
    (tmp_path / "mkdir_at_import.py").write_text(f"import os\nos.makedirs({str(tmp_path / 'd')!r})\n")
    (tmp_path / "sqlite_at_import.py").write_text("import sqlite3\nsqlite3.connect(':memory:').close()\n")
    (tmp_path / "reads_at_import.py").write_text(f"open({__file__!r}).close()\n")
    found = imports(
        ["fqdn_at_import", "write_at_import", "mkdir_at_import", "sqlite_at_import", "reads_at_import"], [str(tmp_path)]
    )
    touched = found["touched"]
    assert isinstance(touched, list)
    assert found["failures"] == {}
    assert any(t.startswith("getfqdn(") and "fqdn_at_import.py:2" in t for t in touched), touched
    assert any(t.startswith("open(") and "write_at_import.py:1" in t for t in touched), touched
    assert any(t.startswith("makedirs(") and "mkdir_at_import.py:2" in t for t in touched), touched
    assert any(t.startswith("connect(") and "sqlite_at_import.py:2" in t for t in touched), touched
    assert not any("reads_at_import" in t for t in touched), touched
