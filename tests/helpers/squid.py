"""A private Squid (Debian's) for the ICAP tests: its own config, cache, logs and pid, on free ports.

Debian's squid package is installed by ``scripts/setup.sh --test`` with a
policy-rc.d that forbids starting services, so no system Squid runs on 3128;
each test module starts its own with ``squid -N -f <private.conf>`` (foreground,
no daemon) and stops it in teardown.  Started as root, Squid drops to
``cache_effective_user`` (``proxy``), so its directory is made under /tmp
(outside pytest's 0700 basetemp) and given to that user.

An origin server (:class:`Origin`, Python's ``http.server`` in a thread)
serves files and generated objects: ``/files/<name>`` with a
``Content-Length``, ``/stream/<size>`` chunked (no length: Squid cannot keep
a copy for ``Allow: 204``, so the ICAP service must stream the object back),
``/sized/<size>`` the same bytes with a ``Content-Length``, and takes uploads
(``POST``, with a ``Content-Length`` or chunked: hashed as they arrive, kept whole
only when small).  Bodies follow their heads at once, as from a fast web server.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SQUID = "/usr/sbin/squid"

BLOCK = 1024 * 1024


def available() -> str:
    """Why Squid cannot run here ('' when it can)."""
    if not os.path.exists(SQUID):
        return "squid is not installed (scripts/setup.sh --test installs it)"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pattern_block(seed: int = 7) -> bytes:
    """1 MiB of fixed pseudo-random bytes: the generated objects repeat it."""
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:BLOCK])


def generated(size: int) -> Iterator[bytes]:
    """The bytes of ``/stream/<size>``, in pieces (never the whole object in memory)."""
    block = pattern_block()
    left = size
    while left:
        piece = block[: min(left, BLOCK)]
        left -= len(piece)
        yield piece


def generated_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for piece in generated(size):
        digest.update(piece)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _OriginServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.path = self.path.removeprefix("/broken")  # /broken/...: the same objects, another ICAP route
        if self.path.startswith("/files/"):
            path = self.server.root / self.path.removeprefix("/files/").split("?")[0]
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        for prefix, chunked in (("/stream/", True), ("/sized/", False)):
            if self.path.startswith(prefix):
                self._generated(int(self.path.removeprefix(prefix).split("/")[0]), chunked)
                return
        self.send_error(404)

    def _generated(self, size: int, chunked: bool) -> None:
        """``size`` bytes of :func:`generated`: chunked, or with a ``Content-Length``."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        sent = 0
        for piece in generated(size):
            self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
            sent += len(piece)
            if self.server.on_block is not None:
                self.server.on_block(sent)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:
        """An upload, with a ``Content-Length`` or chunked: read in pieces and hashed
        (:attr:`_OriginServer.received`); kept whole in :attr:`_OriginServer.uploads` only up to
        :data:`KEPT_UPLOAD` bytes."""
        digest, size, kept = hashlib.sha256(), 0, bytearray()
        for piece in self._request_body():
            digest.update(piece)
            size += len(piece)
            if size <= KEPT_UPLOAD:
                kept += piece
        self.server.received.append(Upload(size, digest.hexdigest()))
        if size <= KEPT_UPLOAD:
            self.server.uploads.append(bytes(kept))
        body = b"stored\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _request_body(self) -> Iterator[bytes]:
        """The request's body in pieces: chunked, or as long as its ``Content-Length``."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            yield from self._exactly(int(self.headers.get("Content-Length", "0")))
            return
        while size := int(self.rfile.readline(1024).split(b";")[0], 16):
            yield from self._exactly(size)
            self.rfile.readline(1024)
        while self.rfile.readline(1024).strip():  # the trailer
            pass

    def _exactly(self, left: int) -> Iterator[bytes]:
        while left:
            piece = self.rfile.read(min(left, BLOCK))
            if not piece:
                raise ConnectionError("the upload ended early")
            left -= len(piece)
            yield piece


@dataclass
class Upload:
    """What the origin received in one ``POST``: its size and sha256."""

    size: int
    sha256: str


KEPT_UPLOAD = 8 * 1024 * 1024
"""Uploads up to this size are also kept whole (:attr:`_OriginServer.uploads`)."""


class _OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.uploads: list[bytes] = []
        """The bodies of the uploads of at most :data:`KEPT_UPLOAD` bytes."""
        self.received: list[Upload] = []
        """Every upload's size and sha256, in order (also the big ones)."""
        self.on_block: Callable[[int], None] | None = None
        """Called by ``/stream/<size>`` after each block with the bytes sent so far (a test's hook)."""


class Origin:
    """The origin HTTP server behind Squid (a thread of the test process)."""

    def __init__(self, root: Path) -> None:
        self.server = _OriginServer(root)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class IcapRoute:
    """One ``icap_service`` line and who goes to it: ``urlpath`` a regex (None: every request)."""

    name: str
    vectoring: str  # respmod_precache or reqmod_precache
    uri: str
    urlpath: str | None = None


CONFIG = """\
http_port 127.0.0.1:{port}
pid_filename {home}/squid.pid
cache_log {home}/cache.log
access_log stdio:{home}/access.log
cache_store_log none
coredump_dir {home}
netdb_filename none
cache deny all
cache_mem 8 MB
visible_hostname mailsift-test
shutdown_lifetime 0 seconds
acl localhost src 127.0.0.1/32 ::1
http_access allow localhost
http_access deny all
icap_enable on
icap_preview_enable on
icap_send_client_ip on
icap_service_failure_limit -1
{extra}
{routes}
"""


class Squid:
    """A private Squid: ``with Squid([IcapRoute(...)]) as squid: squid.get(url)``."""

    def __init__(self, routes: Sequence[IcapRoute], user: str = "proxy", extra: str = "") -> None:
        """``extra``: more squid.conf lines."""
        self.routes = routes
        self.extra = extra
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="mailsift-squid-", dir="/tmp"))
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """The routes in order: Squid takes, per vectoring point, the first service whose
        ``adaptation_access`` allows the request."""
        lines = [f"icap_service {route.name} {route.vectoring} bypass=off {route.uri}" for route in self.routes]
        for route in self.routes:
            if route.urlpath is None:
                lines.append(f"adaptation_access {route.name} allow all")
            else:
                lines.append(f"acl {route.name}_path urlpath_regex {route.urlpath}")
                lines.append(f"adaptation_access {route.name} allow {route.name}_path")
        return CONFIG.format(port=self.port, home=self.home, routes="\n".join(lines), extra=self.extra)

    def start(self, timeout: float = 30) -> Squid:
        (self.home / "squid.conf").write_text(self.config())
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chmod(self.home, 0o755)
            os.chown(self.home, entry.pw_uid, entry.pw_gid)
        with (self.home / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [SQUID, "-N", "-f", str(self.home / "squid.conf")],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"squid exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"squid did not listen on {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        shutil.rmtree(self.home, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("stderr.log", "cache.log"):
            path = self.home / name
            if path.exists():
                text += f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def __enter__(self) -> Squid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- through the proxy

    def opener(self) -> urllib.request.OpenerDirector:
        proxy = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{self.port}"})
        return urllib.request.build_opener(proxy)

    def fetch(self, url: str, data: bytes | None = None, timeout: float = 60) -> Fetched:
        """GET (or POST ``data``) ``url`` through Squid: status, headers, sha256 and size of the body,
        and its first 64 KiB (the body is hashed in pieces, never held whole)."""
        request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
        return self._answer(request, timeout)

    def _answer(self, request: urllib.request.Request, timeout: float) -> Fetched:
        try:
            response = self.opener().open(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            response = error
        digest = hashlib.sha256()
        size = 0
        head = b""
        with response:
            while piece := response.read(BLOCK):
                digest.update(piece)
                size += len(piece)
                if len(head) < 65536:
                    head += piece[: 65536 - len(head)]
            return Fetched(response.status, dict(response.headers), digest.hexdigest(), size, head)

    def upload(
        self,
        url: str,
        size: int,
        chunked: bool = False,
        tail: bytes = b"",
        timeout: float = 120,
        on_block: Callable[[int], None] | None = None,
    ) -> Fetched:
        """POST ``size`` bytes of :func:`generated` (then ``tail``) to ``url`` through Squid, sent in
        pieces (never held whole): with a ``Content-Length``, or chunked (``Transfer-Encoding: chunked``).
        ``on_block`` is called before each block after the first with the bytes sent so far."""

        def pieces() -> Iterator[bytes]:
            sent = 0
            for piece in generated(size):
                if sent and on_block is not None:
                    on_block(sent)
                yield piece
                sent += len(piece)
            if tail:
                yield tail

        request = urllib.request.Request(url, data=pieces(), method="POST")
        if not chunked:
            request.add_header("Content-Length", str(size + len(tail)))
        return self._answer(request, timeout)


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    sha256: str
    size: int
    head: bytes
