"""The README's fenced blocks, with their markers, for the tests that run them.

Every fenced block of README.md is preceded by a marker line a reader hardly sees::

    <!-- readme: shell config=webq-recipe -->        run in a temp dir (see tests/integration/test_readme.py)
    <!-- readme: config name=configuration -->       a config: `mailsift check-config -c` (and served where a test says)
    <!-- readme: postfix main.cf group=content-filter -->   lines loaded into the private Postfix
    <!-- readme: exim -->                            Exim lines run in a private Exim (tests/integration/test_exim.py)
    <!-- readme: synopsis -->                         every `mailsift ...` command and --option exists (--help)
    <!-- readme: skip: needs systemd as PID 1 -->    not run, with the reason
    <!-- readme: pending wip/opsconfig -->           waits for another branch (refused once the allowance goes)

``blocks()`` returns them in order with their line numbers; ``localize()`` moves a
block's fixed ports and system paths to a test's own, so nothing touches the real
``/etc``, ``/var/lib/mailsift`` or a port another test uses.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailsift.testing import free_port

README = Path(__file__).resolve().parents[2] / "README.md"

#: Marker kinds and what the tests do with them.
KINDS = ("shell", "config", "postfix", "exim", "synopsis", "skip", "pending")

#: Postfix groups tests/integration/test_readme.py knows how to run (one private Postfix each).
POSTFIX_GROUPS = ("content-filter", "milter", "lmtp", "policy")

#: What ``shell serve=`` may name besides a config block: the bundled default config.
SERVE_BUNDLED = "bundled"

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w.+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*readme:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the 1-based line of its opening fence."""

    line: int
    lang: str
    text: str
    kind: str | None  # None: no marker
    args: Mapping[str, str] = field(default_factory=dict)
    words: tuple[str, ...] = ()  # marker words that are not key=value (e.g. "main.cf")
    reason: str = ""  # for skip / pending

    @property
    def name(self) -> str:
        return self.args.get("name", "")

    def where(self) -> str:
        return f"README.md:{self.line}"


def parse_marker(body: str) -> tuple[str, dict[str, str], tuple[str, ...], str]:
    """``"skip: reason"`` -> ("skip", {}, (), "reason"); ``"config name=x"`` -> ("config", {"name": "x"}, (), "")."""
    head, sep, rest = body.partition(":")
    if sep and head.strip() in ("skip",):
        return head.strip(), {}, (), rest.strip()
    parts = shlex.split(body)
    if not parts:
        return "", {}, (), ""
    kind, args, words = parts[0], {}, []
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            args[key] = value
        else:
            words.append(part)
    reason = " ".join(words) if kind == "pending" else ""
    return kind, args, tuple(words), reason


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block of ``path``, in order, with the marker on the nearest non-blank line above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence = match["indent"], match["fence"]
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index])
            index += 1
        index += 1  # the closing fence
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = _MARKER.match(lines[above]) if above >= 0 else None
        if marker:
            kind, args, words, reason = parse_marker(marker["body"])
            found.append(Block(start + 1, match["lang"], "\n".join(body) + "\n", kind, args, words, reason))
        else:
            found.append(Block(start + 1, match["lang"], "\n".join(body) + "\n", None))
    return found


def named(name: str, path: Path = README) -> Block:
    """The one block whose marker says ``name=<name>``."""
    [block] = [b for b in blocks(path) if b.name == name]
    return block


def of_kind(kind: str, path: Path = README) -> list[Block]:
    return [b for b in blocks(path) if b.kind == kind]


# ---------------------------------------------------------------- making a block local to a test

#: Fixed addresses in the README's blocks that a test maps to its own free ports.
_PORT_PATTERNS = (
    re.compile(r"""(?P<pre>["']127\.0\.0\.1["'],\s*)(?P<port>\d+)"""),  # ("127.0.0.1", 10024)
    re.compile(r"""(?P<pre>\[?127\.0\.0\.1\]?:)(?P<port>\d+)"""),  # 127.0.0.1:10025, [127.0.0.1]:10024
    re.compile(r"""(?P<pre>inet:)(?P<port>\d+)(?=@)"""),  # libmilter's inet:3333@127.0.0.1
)

#: System paths in the README's blocks and where a test puts them (under its own directory).
SYSTEM_PATHS = {
    "/var/lib/mailsift": "state",
    "/run/clamav/clamd.ctl": "run/clamd.ctl",
    "/run/mailsift/": "run/",
    "/etc/mailsift/config.py": "config.py",
}


def localize(text: str, ports: Mapping[int, int], root: Path) -> str:
    """``text`` with every loopback port in ``ports`` replaced and the system paths moved under ``root``.

    A loopback port not in ``ports`` is an error (KeyError): a block must not quietly
    talk to a port the test did not give it.
    """
    for pattern in _PORT_PATTERNS:
        text = pattern.sub(lambda m: m["pre"] + str(ports[int(m["port"])]), text)
    for system, local in SYSTEM_PATHS.items():
        text = text.replace(system, str(root / local) + ("/" if system.endswith("/") else ""))
    return text


def postfix_settings(text: str) -> dict[str, str]:
    """main.cf lines (``name = value``, continuation lines indented, ``#`` comments on their own lines)."""
    settings: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and last is not None:
            settings[last] += " " + line.strip()
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ValueError(f"not a main.cf line: {line!r}")
        last = key.strip()
        settings[last] = value.strip()
    return settings


def synopsis_commands(text: str) -> list[tuple[list[str], list[str]]]:
    """The ``mailsift`` commands of a synopsis block: (command path, --options given for it).

    ``mailsift quarantine list|show|release`` gives three commands; ``mailsift policy show |
    lookup S | delete K`` three (each with the options of its own segment); a ``;`` starts
    another command; an indented line going on with ``[--option]`` continues the one above.
    """
    joined: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(" < ", 1)[0].rstrip()
        if joined and line.strip().startswith("[") and raw[:1].isspace():
            joined[-1] += " " + line.strip()
        elif line.strip():
            joined.append(line)
    found: list[tuple[list[str], list[str]]] = []
    for line in joined:
        for statement in line.split(";"):
            words = statement.split()
            if not words or words[0] not in ("mailsift", "/usr/bin/mailsift", ".venv/bin/mailsift"):
                continue
            segments = statement.split(" | ")
            path: list[str] = []
            for word in segments[0].split()[1:]:
                if not re.fullmatch(r"[a-z][a-z|-]*", word) or len(path) == 2:
                    break
                path.append(word)
            if not path:
                continue
            group, last = path[:-1], path[-1].split("|")
            if len(path) == 1 and len(segments) > 1:  # "mailsift a | b": alternatives of the top level
                group = []
            for alternative in last:
                found.append(([*group, alternative], _options(segments[0])))
            for segment in segments[1:]:
                if segment.split():
                    found.append(([*group, segment.split()[0]], _options(segment)))
    return found


def _options(text: str) -> list[str]:
    return re.findall(r"(?<![\w/.-])(--[a-z][a-z-]*|-[a-zA-Z])(?![\w-])", text)


# ---------------------------------------------------------------- running blocks (the tests' harness)

BIN = Path(sys.executable).parent
PASSWORD = "readme-password-1"

#: What a block marked ``prelude`` assumes is defined (the README's fragments name these).
PRELUDE = """\
from mailsift import *
STATE_DIR = "/var/lib/mailsift"
CLAMD = "/run/clamav/clamd.ctl"
SPAMD = ("127.0.0.1", 783)
SPAM = spamassassind(SPAMD)
SCANNERS = [regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])]
AV_ONLY = [clamd(CLAMD)]
SMTP_SERVER = ("127.0.0.1", 10025)
SRV = [smtpd(SCANNERS, "127.0.0.1", 10024)]
"""
EPILOGUE = "\nUSER = None  # the tests keep their user\n"


class Ports(dict[int, int]):
    """README port -> this test's free port, allocated on first use."""

    def __missing__(self, port: int) -> int:
        self[port] = free_port()
        return self[port]


def config_text(block: Block, ports: Ports, root: Path) -> str:
    """The config a reader builds from ``block`` (its base block first, or the prelude), localized."""
    if "base" in block.args:
        text = config_text(named(block.args["base"]), ports, root).removesuffix(EPILOGUE) + "\n"
        return text + localize(block.text, ports, root) + EPILOGUE
    prelude = PRELUDE if "prelude" in block.words else ""
    return localize(prelude + block.text, ports, root) + EPILOGUE


def write_config(block: Block, ports: Ports, root: Path) -> Path:
    path = root / f"{block.name}.py"
    path.write_text(config_text(block, ports, root))
    return path


def environment(**extra: str) -> dict[str, str]:
    env = {
        "MAILSIFT_ETC_CONFIG": os.environ.get("MAILSIFT_ETC_CONFIG", "/dev/null/mailsift/config.py"),
        "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "MAILSIFT_USER": "",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


class Serve:
    """``mailsift serve -c CONFIG`` in ``cwd`` until stopped; ``wait`` for a port."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.log = cwd / f"{config.stem}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailsift", "serve", "-c", str(config), "-w", "1"],
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment(),
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def shell_commands(text: str) -> list[tuple[str, str]]:
    """(command, its trailing comment) per command line; backslash continuations joined."""
    commands: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        code, _, comment = line.partition("  #")
        if code.rstrip().endswith("\\"):
            current += code.rstrip()[:-1] + " "
            continue
        if (current + code).strip():
            commands.append(((current + code).strip(), comment.strip()))
        current = ""
    return commands


def run_shell_block(block: Block, cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """The block's commands one by one in bash, with MAILSIFT_CONFIG; a password prompt gets
    its two answers on stdin (each command its own: a first reader would take the whole pipe)."""
    output = ""
    for command, _comment in shell_commands(block.text):
        result = subprocess.run(
            ["bash", "-e", "-c", command],
            cwd=cwd,
            input=f"{PASSWORD}\n{PASSWORD}\n",
            capture_output=True,
            text=True,
            timeout=120,
            env=environment(MAILSIFT_CONFIG=str(config)),
            start_new_session=True,  # no controlling terminal: the prompts read stdin
            check=False,
        )
        output += f"$ {command}\n{result.stdout}{result.stderr}"
        if result.returncode:
            return subprocess.CompletedProcess(command, result.returncode, output, "")
    return subprocess.CompletedProcess(block.text, 0, output, "")
