"""A private, throw-away clamd for tests, with its own signature database.

No antivirus signatures can be downloaded here, so the instance writes a tiny
database of its own (as ``../shared/peers/10_clamav.sh`` does):

* ``harness.hdb`` - MD5 of the exact EICAR string (``Eicar-Test-Signature``) and
  of ClamAV's test file ``clam.exe`` (``ClamAV-Test-File``);
* ``harness.ndb`` - body signatures, any file type: the EICAR string anywhere
  (``Eicar-Test-Signature.NDB``, also hits EICAR + CRLF or EICAR inside text)
  and ``clam.exe``'s import table (``ClamAV-Test-File.NDB``, as ClamAV's own
  ``Test.NDB``), which also finds the packed variants in clamav-testfiles.

clamd reports our own signatures with the suffix ``.UNOFFICIAL``, e.g.
``Eicar-Test-Signature.UNOFFICIAL``.

Everything lives under a caller-supplied work directory::

    WORKDIR/db/          DatabaseDirectory (harness.hdb, harness.ndb)
    WORKDIR/tmp/         TemporaryDirectory
    WORKDIR/clamd.conf   the configuration
    WORKDIR/clamd.sock   LocalSocket (unix socket)
    WORKDIR/clamd.log    LogFile; WORKDIR/clamd.out is clamd's stdout/stderr

clamd listens on that unix socket AND on ``127.0.0.1:port`` (a free port unless
one is given).  It runs in the foreground as a child of the test process and is
stopped by its PID.  Typical use::

    with ClamdInstance(tmp_path / "clamd") as clamd:
        ...  # connect to clamd.socket_path or ("127.0.0.1", clamd.port)

or, in ``tests/engines``, the session fixture ``clamd_instance`` (conftest.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.helpers.samples import EICAR
from tests.helpers.sockets import recv_until

CLAMD = "/usr/sbin/clamd"
TESTFILES = Path("/usr/share/clamav-testfiles")
#: The names of ClamAV's test files (empty where clamav-testfiles is not installed).
TESTFILE_NAMES = sorted(path.name for path in TESTFILES.glob("*")) if TESTFILES.is_dir() else []

#: The EICAR antivirus test string (68 bytes), built from pieces so that this file is not itself flagged.

#: What clamd answers for EICAR with this database (the .hdb exact-file match wins on the bare string).
EICAR_NAMES = ("Eicar-Test-Signature.UNOFFICIAL", "Eicar-Test-Signature.NDB.UNOFFICIAL")

#: clam.exe's import table, the body signature that finds clam.exe inside packers and containers.
_CLAM_IMPORTS = b"KERNEL32.DLL\0\0ExitProcess\0USER32.DLL\0CLAMessageBoxA"


class ClamdError(RuntimeError):
    """clamd failed to start or stop; the message includes the log tail."""


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1 (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ClamdInstance:
    """A clamd with a private signature DB on a unix socket and a loopback TCP port.

    ``socket_path``, ``port`` and ``database_dir`` are set at construction, so
    they can be used in configs before :meth:`start`.  ``options`` are extra
    clamd.conf lines (``{"IdleTimeout": "2"}``); ``stream_max_length`` is
    clamd's ``StreamMaxLength`` (clamd's own default is 25M).
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        port: int | None = None,
        stream_max_length: str = "25M",
        options: dict[str, str] | None = None,
        clamd: str = CLAMD,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.socket_path = self.workdir / "clamd.sock"
        self.database_dir = self.workdir / "db"
        self.conf_path = self.workdir / "clamd.conf"
        self.log_path = self.workdir / "clamd.log"
        self.stream_max_length = stream_max_length
        self.options = dict(options or {})
        self.clamd = clamd
        self.process: subprocess.Popen[bytes] | None = None
        if len(os.fsencode(self.socket_path)) >= 100:
            raise ClamdError(f"unix socket path too long for AF_UNIX: {self.socket_path}")

    # ------------------------------------------------------------------ setup

    @property
    def pid(self) -> int | None:
        """clamd's PID while it runs."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    @property
    def tcp_address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``, as the ``clamd(...)`` scanner takes it."""
        return ("127.0.0.1", self.port)

    def write_database(self) -> None:
        """(Re)write the private signature DB (EICAR and clam.exe, .hdb and .ndb)."""
        self.database_dir.mkdir(parents=True, exist_ok=True)
        clam_exe = (TESTFILES / "clam.exe").read_bytes()
        hdb = [f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Eicar-Test-Signature"]
        hdb.append(f"{hashlib.md5(clam_exe).hexdigest()}:{len(clam_exe)}:ClamAV-Test-File")
        ndb = [
            f"Eicar-Test-Signature.NDB:0:*:{EICAR.hex()}",
            f"ClamAV-Test-File.NDB:0:*:{_CLAM_IMPORTS.hex()}",
        ]
        (self.database_dir / "harness.hdb").write_text("\n".join(hdb) + "\n")
        (self.database_dir / "harness.ndb").write_text("\n".join(ndb) + "\n")

    def write_config(self) -> None:
        """Write clamd.conf (foreground, unix socket + 127.0.0.1:port, private DB)."""
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        settings = {
            "Foreground": "yes",
            "DatabaseDirectory": str(self.database_dir),
            "LocalSocket": str(self.socket_path),
            "LocalSocketMode": "600",
            "FixStaleSocket": "yes",
            "TCPSocket": str(self.port),
            "TCPAddr": "127.0.0.1",
            "LogFile": str(self.log_path),
            "LogTime": "yes",
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "MaxThreads": "4",
            "StreamMaxLength": self.stream_max_length,
            "SelfCheck": "3600",
            "ConcurrentDatabaseReload": "no",
        }
        settings.update(self.options)
        self.conf_path.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 60.0) -> None:
        """Write DB and config, start clamd, and wait until both sockets answer PING."""
        if self.pid is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_database()
        self.write_config()
        with open(self.workdir / "clamd.out", "ab") as out:
            self.process = subprocess.Popen(
                [self.clamd, "--foreground", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClamdError(f"clamd exited with {self.process.returncode} at start\n{self.log_tail()}")
            if self.ping() and self.ping(tcp=True):
                return
            time.sleep(0.1)
        self.stop()
        raise ClamdError(f"clamd did not answer PING within {timeout} s\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop clamd by its PID: SIGTERM, then SIGKILL if it does not exit in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again (same socket, port and DB)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> ClamdInstance:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers

    def command(self, command: str, *, tcp: bool = False, timeout: float = 5.0) -> str:
        """Send one ``z``-command (``PING``, ``VERSION``...) and return clamd's reply."""
        family = socket.AF_INET if tcp else socket.AF_UNIX
        address: tuple[str, int] | str = self.tcp_address if tcp else str(self.socket_path)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"z" + command.encode() + b"\0")
            reply = recv_until(sock, b"\0")
        return reply.rstrip(b"\0").decode(errors="replace")

    def ping(self, *, tcp: bool = False) -> bool:
        """Whether clamd answers PONG on the unix socket (or the TCP port)."""
        try:
            return self.command("PING", tcp=tcp, timeout=2.0) == "PONG"
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of clamd's log and stdout, for error messages."""
        text = []
        for path in (self.log_path, self.workdir / "clamd.out"):
            with contextlib.suppress(OSError):
                text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)
