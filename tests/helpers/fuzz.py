"""What the fuzzers in tests/security share: their Hypothesis settings, per-example bounds, strategies.

Two profiles, chosen by the environment:

* CI (default): derandomized (the same examples every run), no deadline per
  example, no example database written, ``max_examples`` per target chosen so
  that all fuzzers together take about 3 minutes on 2 cores;
* long (``MAILSIFT_FUZZ=long``): random, each target runs rounds of
  :data:`LONG_ROUND` examples until ``MAILSIFT_FUZZ_SECONDS`` (default 1500)
  have passed; every distinct failure is printed (with Hypothesis's shrunk
  example) and the target fails at the end.  See tests/security/README.md.

Each example runs under :class:`Bounds`: a watchdog that interrupts it past
``seconds`` (a hang is a failure, with the stack of where it hung), and a
tracemalloc peak bound (Python allocations of every thread, the in-process
servers' included).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.paths import CORPORA

LONG = os.environ.get("MAILSIFT_FUZZ", "").lower() == "long"
"""The long run (``MAILSIFT_FUZZ=long``): random examples for MAILSIFT_FUZZ_SECONDS per target."""
LONG_SECONDS = float(os.environ.get("MAILSIFT_FUZZ_SECONDS", "1500"))
LONG_ROUND = 500
"""Examples per Hypothesis run in the long profile; runs repeat until the target's time is up."""
MB = 1024 * 1024


def fuzz_settings(ci_examples: int) -> settings:
    """The settings of one target: ``ci_examples`` derandomized examples in CI, rounds of random ones when long."""
    return settings(
        max_examples=LONG_ROUND if LONG else ci_examples,
        derandomize=not LONG,
        deadline=None,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


class Hang(AssertionError):
    """An example ran past its time bound (raised in the test's thread by the watchdog)."""


class Bounds:
    """Per-example bounds for one target: time (a watchdog) and memory (tracemalloc's peak).

    Use as ``with bounds.example(len(data)):`` around each example; counts the examples run.
    """

    def __init__(self, name: str, seconds: float, memory: int, per_input_byte: int = 64) -> None:
        self.name = name
        self.seconds = seconds
        self.memory = memory
        self.per_input_byte = per_input_byte
        self.examples = 0
        self.peak = 0
        self.slowest = 0.0

    @contextmanager
    def example(self, size: int = 0) -> Iterator[None]:
        """One example: tracemalloc runs only inside it (Hypothesis's own work is not traced, nor slowed)."""
        self.examples += 1
        limit = self.memory + self.per_input_byte * size
        tracemalloc.start()
        started = time.monotonic()
        try:
            with _watchdog(self.seconds, self.name):
                yield
            used = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - started
        self.slowest = max(self.slowest, elapsed)
        self.peak = max(self.peak, used)
        assert elapsed < self.seconds, f"{self.name}: one example took {elapsed:.1f} s (bound {self.seconds} s)"
        # tracemalloc counts every thread of the process: in the whole suite another test's
        # leftover thread once added ~190 MB inside one codec example (not reproducible alone);
        # the bounds (512 MB) are set well above that, to catch runaway growth, not to measure
        assert used < limit, f"{self.name}: one example allocated {used / MB:.1f} MB (bound {limit / MB:.1f} MB)"


@contextmanager
def _watchdog(seconds: float, name: str) -> Iterator[None]:
    """Raise :class:`Hang` in this (the main) thread after ``seconds``; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main = threading.get_ident()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        raise Hang(f"{name}: an example ran past {seconds} s; it was at:\n{stack}")

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGUSR1))
    timer.daemon = True
    timer.start()
    # C code that never returns to the interpreter cannot be interrupted: dump every stack then
    faulthandler.dump_traceback_later(seconds * 3, exit=False)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)


def run(check: Callable[[], None], bounds: Bounds) -> None:
    """Run a Hypothesis test ``check``: once in CI, in rounds until the time is up when long.

    In the long profile every distinct failure (by exception type and the
    innermost frame of src/) is printed as found, the rounds go on, and the
    target fails at the end naming them.
    """
    if not LONG:
        check()
        _summary(bounds)
        return
    deadline = time.monotonic() + LONG_SECONDS
    failures: dict[str, str] = {}
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        try:
            check()
        except Exception as error:
            key = _failure_key(error)
            if key not in failures:
                report = "".join(traceback.format_exception(error))
                failures[key] = report
                print(f"\n=== {bounds.name}: NEW FAILURE {key} (round {rounds})\n{report}", file=sys.stderr)
        print(
            f"--- {bounds.name}: round {rounds}, {bounds.examples} examples, "
            f"{len(failures)} distinct failures, {max(0, deadline - time.monotonic()):.0f} s left",
            file=sys.stderr,
            flush=True,
        )
    _summary(bounds)
    assert not failures, f"{bounds.name}: {len(failures)} distinct failures: {sorted(failures)}"


def _summary(bounds: Bounds) -> None:
    print(
        f"\n{bounds.name}: {bounds.examples} examples, slowest {bounds.slowest:.2f} s, peak {bounds.peak / MB:.1f} MB",
        file=sys.stderr,
    )


def _failure_key(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    inner = next((f for f in reversed(frames) if "/src/mailsift/" in f.filename), frames[-1] if frames else None)
    where = f"{Path(inner.filename).name}:{inner.lineno}" if inner else "?"
    first = str(error).splitlines()[0][:80] if str(error) else ""
    return f"{type(error).__name__} at {where}: {first}"


# =========================================================================== strategies: bytes and lines

NEWLINES = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\n\r", b""])
"""Line ends, mostly honest: CRLF, bare LF, bare CR, reversed, none."""


def noisy_bytes(max_size: int = 200) -> st.SearchStrategy[bytes]:
    """Short byte strings: random bytes, or text with controls, NUL, 8-bit and CR/LF."""
    return st.one_of(
        st.binary(max_size=max_size),
        st.text(max_size=max_size).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.text(alphabet="ab@.<>: \t\r\n\0\x1b%=\"'\\[]()", max_size=max_size).map(str.encode),
    )


def huge(unit: bytes = b"A") -> st.SearchStrategy[bytes]:
    """Long runs: a line longer than any limit, from 1 KB to 1.5 MB."""
    return st.sampled_from([1000, 1001, 1024, 8192, 8193, 65536, 1024 * 1024 + 17, 1536 * 1024]).map(lambda n: unit * n)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_edits: int = 6) -> bytes:
    """``data`` with a few edits: bytes flipped, slices cut, duplicated or moved, bytes and line ends inserted,
    the message truncated."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(0, max_edits))):
        if not buffer:
            buffer += draw(st.binary(min_size=1, max_size=16))
            continue
        where = draw(st.integers(0, len(buffer) - 1))
        span = draw(st.integers(1, max(1, min(len(buffer) - where, 4096))))
        edit = draw(st.sampled_from(["flip", "cut", "dup", "insert", "newline", "truncate", "move", "set8bit"]))
        if edit == "flip":
            buffer[where] = draw(st.integers(0, 255))
        elif edit == "cut":
            del buffer[where : where + span]
        elif edit == "dup":
            buffer[where:where] = buffer[where : where + span] * draw(st.integers(1, 50))
        elif edit == "insert":
            buffer[where:where] = draw(noisy_bytes(64))
        elif edit == "newline":
            buffer[where:where] = draw(NEWLINES)
        elif edit == "truncate":
            del buffer[where:]
        elif edit == "move":
            chunk = bytes(buffer[where : where + span])
            del buffer[where : where + span]
            target = draw(st.integers(0, len(buffer)))
            buffer[target:target] = chunk
        else:
            buffer[where] |= 0x80
    return bytes(buffer)


# =========================================================================== strategies: MIME

CHARSETS = st.sampled_from(
    ["utf-8", "us-ascii", "iso-8859-1", "iso-8859-2", "koi8-r", "gb2312", "shift_jis", "utf-16", "utf-7",
     "utf-32", "x-unknown", "", "utf-8'", "\"utf-8\"", "cp1252", "bogus charset", "idna", "rot13", "base64",
     "unicode-escape", "ascii\0"]
)  # fmt: skip
"""Charsets, good and bad: unknown names, codecs that are not text encodings, quotes, NUL."""
ENCODINGS = st.sampled_from(
    ["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "Base64 (comment)", "base64\"",
     "x-unknown", "", "base64, quoted-printable", "uue"]
)  # fmt: skip
TYPES = st.sampled_from(
    ["text/plain", "text/html", "application/octet-stream", "application/zip", "image/png", "message/rfc822",
     "application/ms-tnef", "text/plain; format=flowed", "TEXT/PLAIN", "text", "/", "application/pdf"]
)  # fmt: skip
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=20)
_ANYTEXT = st.text(max_size=40)


def _pct(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass"))


@st.composite
def encoded_word(draw: st.DrawFn) -> str:
    """An RFC 2047 encoded word, well formed or not."""
    charset = draw(CHARSETS)
    kind = draw(st.sampled_from(["B", "Q", "b", "q", "X", ""]))
    payload = draw(st.one_of(_ANYTEXT, st.text(alphabet="ABCDabcd0123+/=_?", max_size=40)))
    if kind in "Bb" and draw(st.booleans()):
        import base64

        payload = base64.b64encode(payload.encode("utf-8", "surrogatepass")).decode()
    return f"=?{charset}?{kind}?{payload}?="


@st.composite
def parameter(draw: st.DrawFn, name: str) -> str:
    """A Content-Type/-Disposition parameter: plain, quoted, RFC 2231 (charset'lang'%XX, continuations)."""
    value = draw(st.one_of(_ANYTEXT, encoded_word(), st.just("../../etc/passwd"), st.just("a" * 300)))
    form = draw(st.sampled_from(["plain", "quoted", "2231", "2231-cont", "2231-bad", "dup"]))
    if form == "plain":
        return f"{name}={value}"
    if form == "quoted":
        return f'{name}="{value}"'
    if form == "2231":
        return f"{name}*={draw(CHARSETS)}'{draw(st.sampled_from(['', 'en', 'x']))}'{_pct(value)}"
    if form == "2231-cont":
        pieces = draw(st.lists(st.integers(0, 9), min_size=1, max_size=5))
        return "; ".join(f"{name}*{i}*={_pct(value[: i + 3])}" if i % 2 else f'{name}*{i}="{value}"' for i in pieces)
    if form == "2231-bad":
        bad = draw(st.sampled_from(["%", "%G0", "%%", "x%FF%FE", "''", "'''"]))
        return f"{name}*={bad}{value}"
    return f"{name}={value}; {name}*=utf-8''{_pct(value)}"


@st.composite
def header_block(draw: st.DrawFn, content_type: str, extra: list[str]) -> list[bytes]:
    fields: list[str] = []
    if draw(st.booleans()):
        fields.append("MIME-Version: 1.0")
    if draw(st.booleans()):
        words = draw(st.lists(st.one_of(encoded_word(), _ANYTEXT), max_size=4))
        fields.append("Subject: " + " ".join(words))
    fields.append("Content-Type: " + "; ".join([content_type, *extra]))
    if draw(st.booleans()):
        fields.append("Content-Transfer-Encoding: " + draw(ENCODINGS))
    if draw(st.booleans()):
        disp = draw(st.sampled_from(["attachment", "inline", "bogus", ""]))
        fields.append("Content-Disposition: " + "; ".join([disp, draw(parameter("filename"))]))
    if draw(st.booleans()):
        fields.append(
            draw(st.sampled_from(["From", "To", "Message-ID", "X-Junk", "Content-Type"])) + ": " + draw(_ANYTEXT)
        )
    if draw(st.booleans()):  # a folded field, and one without a colon
        fields.append("X-Folded: a\r\n\tb\r\n c")
    if draw(st.integers(0, 9)) == 0:
        fields.append("no colon here")
    return [field.encode("utf-8", "surrogatepass") for field in fields]


def _leaf_body(draw: st.DrawFn) -> bytes:
    import base64
    import binascii
    import quopri

    raw = draw(
        st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
    )
    form = draw(st.sampled_from(["raw", "base64", "base64-broken", "qp", "uu", "yenc", "huge-line"]))
    if form == "base64":
        return base64.encodebytes(raw)
    if form == "base64-broken":
        text = base64.b64encode(raw)
        cut = draw(st.integers(0, len(text)))
        return text[:cut] + draw(st.sampled_from([b"=", b"==A", b"!!", b"\r\n==\r\n", b""])) + text[cut:]
    if form == "qp":
        return quopri.encodestring(raw) + draw(st.sampled_from([b"", b"=", b"=Z1", b"=\r\n"]))
    if form == "uu":
        lines = [binascii.b2a_uu(raw[i : i + 45]) for i in range(0, len(raw), 45)]
        return (
            b"begin 644 " + draw(_TOKEN).encode() + b"\n" + b"".join(lines) + draw(st.sampled_from([b"`\nend\n", b""]))
        )
    if form == "yenc":
        return b"=ybegin line=128 size=10 name=" + draw(_TOKEN).encode() + b"\r\n" + raw + b"\r\n=yend size=10\r\n"
    if form == "huge-line":
        return b"x" * draw(st.sampled_from([999, 1000, 20000, 200000])) + b"\r\n"
    return raw


@st.composite
def mime_entity(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One MIME entity: a leaf or a multipart (nested up to 4), with broken boundaries some of the time."""
    newline = b"\r\n" if draw(st.integers(0, 4)) else draw(NEWLINES)
    multipart = depth < 4 and draw(st.integers(0, 2)) == 0
    if multipart:
        boundary = draw(st.one_of(_TOKEN, st.just(""), st.just("a" * 80), st.just("b b"), st.just("--")))
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest", "signed", "bogus"]))
        params = [f'boundary="{boundary}"' if draw(st.booleans()) else f"boundary={boundary}"]
        if draw(st.integers(0, 5)) == 0:
            params.append(f'boundary="{boundary}x"')  # two boundaries
        head = draw(header_block(f"multipart/{subtype}", params))
        children = draw(st.lists(mime_entity(depth + 1), max_size=4))
        opener = draw(st.sampled_from([b"--" + boundary.encode(), b"--" + boundary.encode(), b"-" + boundary.encode()]))
        closer = draw(
            st.sampled_from([opener + b"--", opener + b"--", b"", opener, b"--" + boundary.encode()[:-1] + b"--"])
        )
        body = draw(st.sampled_from([b"preamble" + newline, b""]))
        for child in children:
            body += opener + draw(st.sampled_from([b"", b"  ", b"\t"])) + newline + child + newline
        body += closer + newline + draw(st.sampled_from([b"", b"epilogue" + newline]))
        return newline.join(head) + newline + newline + body
    content_type = draw(TYPES)
    if content_type == "message/rfc822" and depth < 4:
        return newline.join(draw(header_block(content_type, []))) + newline + newline + draw(mime_entity(depth + 1))
    extra = [
        draw(parameter(draw(st.sampled_from(["name", "charset", "format", "boundary"]))))
        for _ in range(draw(st.integers(0, 2)))
    ]
    if draw(st.booleans()):
        extra.append(f"charset={draw(CHARSETS)}")
    head = draw(header_block(content_type, extra))
    return newline.join(head) + newline + newline + _leaf_body(draw)


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """A multipart nested far deeper than mail ever is (recursion limits), or message/rfc822 in itself."""
    # 1,000+ levels take seconds each under tracemalloc (and far longer under Hypothesis's tracer
    # while it shrinks): the long run has them; CI keeps to depths that stay quick (the fault
    # matrix's test_poison[2000-nested] covers the deep case end to end)
    levels = draw(st.sampled_from([50, 200, 1000, 3000] if LONG else [50, 200]))
    kind = draw(st.sampled_from(["multipart", "rfc822"]))
    if kind == "rfc822":
        return b"Content-Type: message/rfc822\r\n\r\n" * levels + b"Subject: x\r\n\r\nbody\r\n"
    head = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(levels))
    return b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + head + b"--b%d\r\n\r\nleaf\r\n" % levels


def mime_messages() -> st.SearchStrategy[bytes]:
    """Whole messages: generated structures, sometimes mutated, and deep nesting."""
    generated = st.builds(
        lambda head, entity: head + entity, st.sampled_from([b"", b"From: a@example.test\r\n"]), mime_entity()
    )
    return st.one_of(generated, generated.flatmap(mutated), deep_nesting())


def corpus_files(limit: int = 256 * 1024) -> list[Path]:
    """The shared corpora's messages (``../shared/corpora``), up to ``limit`` bytes each, in a fixed order."""
    if not CORPORA.is_dir():
        return []
    return sorted(
        path
        for path in CORPORA.rglob("*")
        if path.is_file() and path.suffix not in (".tsv", ".md") and 0 < path.stat().st_size <= limit
    )


def corpus_mutations(files: list[Path]) -> st.SearchStrategy[bytes]:
    """A corpus message, mutated (a few edits), or spliced with a generated entity."""
    message = st.sampled_from(files).map(Path.read_bytes)
    spliced = st.builds(lambda a, b, at: a[:at] + b + a[at:], message, mime_entity(), st.integers(0, 4096))
    return st.one_of(message.flatmap(mutated), spliced)


def any_of(*errors: type[BaseException]) -> tuple[type[BaseException], ...]:
    """A tuple of the documented error types an entry point may raise (readability at call sites)."""
    return errors


def honest(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the honest client once more after a case; a failure says the service stopped answering."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:
        raise AssertionError(f"the service no longer answers an honest client: {error!r}") from error


# =========================================================================== the network targets


def exchange(port: int, payload: bytes, seconds: float) -> bytes:
    """Send ``payload`` to 127.0.0.1:``port``, half-close, read until the server closes; what it answered.

    The server may close first (a refused command): a reset or a broken pipe is an answer too.
    Not closed within ``seconds`` after our end of input is a hang (:class:`Hang`).
    """
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the server closed first
            pass
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            raise Hang(f"the server neither answered nor closed within {seconds} s of the end of input") from None
    return bytes(received)


def fuzz_service(
    port: int,
    sessions: st.SearchStrategy[bytes],
    bounds: Bounds,
    ci_examples: int,
    honest_client: Callable[[int], None],
    check_answer: Callable[[bytes], None] = lambda answer: None,
) -> None:
    """Fuzz the service listening on 127.0.0.1:``port``: an honest client first, then for each session
    drawn from ``sessions`` (under ``bounds``) send it (:func:`exchange`), ``check_answer`` what came
    back, and let the honest client in again (the service still answers)."""
    honest_client(port)

    @given(sessions)
    @fuzz_settings(ci_examples)
    def check(wire: bytes) -> None:
        with bounds.example(len(wire)):
            check_answer(exchange(port, wire, 20))
            honest_client(port)

    run(check, bounds)
