"""A stand-in for qmail's qmail-queue (qmail is not in Debian), built from qmail-queue(8).

qmail-queue reads the message from descriptor 0, then the envelope from
descriptor 1: ``F`` sender ``\\0``, then ``T`` recipient ``\\0`` for each
recipient, then one more ``\\0``.  It exits 0 when the message is queued, 54
if it cannot read the message or sees end-of-file before the final 0 byte, and
91 on an envelope format error.

This stand-in does exactly that and, instead of queueing, records what it got
in ``$STANDIN_DIR/<n>.message`` and ``<n>.envelope`` (the envelope bytes up to
and including the final 0 byte) and its arguments in ``<n>.argv``; it then
exits ``$STANDIN_EXIT`` (default 0), so tests can check that its exit status
becomes the caller's.
"""

import os
import sys


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_envelope(fd: int) -> bytes:
    """Read byte by byte (as qmail-queue does) up to the final 0 byte; exit 54/91 as qmail-queue."""
    envelope = bytearray()

    def get() -> bytes:
        byte = os.read(fd, 1)
        if not byte:
            sys.exit(54)
        envelope.extend(byte)
        return byte

    if get() != b"F":
        sys.exit(91)
    while get() != b"\0":
        pass
    while True:
        letter = get()
        if letter == b"\0":
            return bytes(envelope)
        if letter != b"T":
            sys.exit(91)
        while get() != b"\0":
            pass


def main() -> None:
    try:
        message = read_all(0)
    except OSError:
        sys.exit(54)
    envelope = read_envelope(1)
    directory = os.environ["STANDIN_DIR"]
    number = len([n for n in os.listdir(directory) if n.endswith(".message")])
    for suffix, content in (("message", message), ("envelope", envelope), ("argv", "\0".join(sys.argv).encode())):
        with open(os.path.join(directory, f"{number}.{suffix}"), "wb") as handle:
            handle.write(content)
    sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))


if __name__ == "__main__":
    main()
