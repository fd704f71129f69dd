"""A small ICAP client for the tests: requests built byte by byte, answers read whole.

Independent of the service's own code (nothing is imported from
``mailsift.services.icap*``), so a test speaks the protocol as RFC 3507 draws
it, and can send what a broken or hostile client would.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def http_request_head(url: str, method: str = "GET", extra: str = "") -> bytes:
    host = url.split("/")[2] if "://" in url else "example.org"
    return f"{method} {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def http_response_head(content_type: str = "application/octet-stream", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode()


def chunked(data: bytes, size: int = 4096) -> bytes:
    out = b"".join(
        b"%x\r\n" % len(data[i : i + size]) + data[i : i + size] + b"\r\n" for i in range(0, len(data), size)
    )
    return out + b"0\r\n\r\n"


def build(
    method: str,
    service: str,
    *,
    req_hdr: bytes | None = None,
    res_hdr: bytes | None = None,
    body: bytes | None = None,
    fields: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    """A whole ICAP request (no preview) with ``Encapsulated`` computed."""
    parts: list[str] = []
    offset = 0
    encapsulated = b""
    for name, section in (("req-hdr", req_hdr), ("res-hdr", res_hdr)):
        if section is not None:
            parts.append(f"{name}={offset}")
            offset += len(section)
            encapsulated += section
    body_name = "null-body" if body is None else ("res-body" if method == "RESPMOD" else "req-body")
    parts.append(f"{body_name}={offset}")
    head = f"{method} icap://{host}/{service} ICAP/1.0\r\nHost: {host}\r\nEncapsulated: {', '.join(parts)}\r\n"
    for name, value in (fields or {}).items():
        head += f"{name}: {value}\r\n"
    return head.encode() + b"\r\n" + encapsulated + (chunked(body) if body is not None else b"")


@dataclass
class Answer:
    status: int
    fields: dict[str, str]
    http_head: bytes = b""
    body: bytes = b""
    raw_head: bytes = b""
    extra: list[bytes] = field(default_factory=list)


def read_head(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before an ICAP head: {bytes(buffer)[:200]!r}")
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def _exactly(sock: socket.socket, buffer: bytearray, size: int) -> bytes:
    while len(buffer) < size:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed inside an answer")
        buffer += data
    out = bytes(buffer[:size])
    del buffer[:size]
    return out


def _line(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed inside a chunked body")
        buffer += data
    end = buffer.index(b"\r\n")
    line = bytes(buffer[:end])
    del buffer[: end + 2]
    return line


def read_answer(sock: socket.socket, buffer: bytearray, sink: Callable[[bytes], object] | None = None) -> Answer:
    """One ICAP answer: status, fields, the encapsulated HTTP head and the de-chunked body (given
    chunk by chunk to ``sink`` instead, when there is one: the body is then never held whole)."""
    head = read_head(sock, buffer)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    answer = Answer(status, fields, raw_head=head)
    encapsulated = fields.get("encapsulated", "")
    if status not in (200,) or not encapsulated:
        return answer
    entities = [(item.split("=")[0].strip(), int(item.split("=")[1])) for item in encapsulated.split(",")]
    answer.http_head = _exactly(sock, buffer, entities[-1][1])
    if entities[-1][0] in ("res-body", "req-body"):
        body = bytearray()
        while True:
            size = int(_line(sock, buffer).split(b";")[0], 16)
            if size == 0:
                _line(sock, buffer)
                break
            data = _exactly(sock, buffer, size)
            if sink is None:
                body += data
            else:
                sink(data)
            _line(sock, buffer)
        answer.body = bytes(body)
    return answer


def exchange(port: int, request: bytes, host: str = "127.0.0.1", timeout: float = 30) -> Answer:
    """Send one request on a new connection and read its answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_answer(sock, bytearray())


@dataclass
class Streamed:
    """An answer whose body was hashed as it came: its size, sha256 and first 64 KiB (``answer.body``
    stays empty)."""

    answer: Answer
    size: int
    sha256: str
    head: bytes


def streamed_exchange(port: int, head: bytes, pieces: Iterable[bytes], timeout: float = 120) -> Streamed:
    """Send ``head`` (an ICAP request up to its body) and ``pieces`` as a chunked body from another
    thread, while the answer is read and its body hashed: neither side is ever held whole, so a
    test may measure the service's memory with objects of any size."""
    digest = hashlib.sha256()
    size = 0
    first = bytearray()

    def sink(data: bytes) -> None:
        nonlocal size
        digest.update(data)
        size += len(data)
        first.extend(data[: max(0, 65536 - len(first))])

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send() -> None:
            try:
                sock.sendall(head)
                for piece in pieces:
                    sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the service closed: the answer says why

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = read_answer(sock, bytearray(), sink)
        sender.join(timeout)
    return Streamed(answer, size, digest.hexdigest(), bytes(first))


def icap_options(host: str, port: int, service: str, timeout: float = 5) -> bytes:
    """The raw head of an OPTIONS answer."""
    request = f"OPTIONS icap://{host}:{port}/{service} ICAP/1.0\r\nHost: {host}\r\nEncapsulated: null-body=0\r\n\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        return read_head(sock, bytearray())
