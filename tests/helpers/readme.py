"""The README's fenced blocks, with their markers, for the tests that run them.

Every fenced block of README.md is preceded by a marker line a reader hardly sees::

    <!-- readme: shell config=webq-recipe -->        run in a temp dir (see tests/integration/test_readme.py)
    <!-- readme: config name=configuration -->       a config: `mailsift check-config -c` (and served where a test says)
    <!-- readme: postfix main.cf group=content-filter -->   lines loaded into the private Postfix
    <!-- readme: synopsis -->                         every `mailsift ...` command and --option exists (--help)
    <!-- readme: skip: needs systemd as PID 1 -->    not run, with the reason
    <!-- readme: pending wip/opsconfig -->           waits for another branch (refused once the allowance goes)

``blocks()`` returns them in order with their line numbers; ``localize()`` moves a
block's fixed ports and system paths to a test's own, so nothing touches the real
``/etc``, ``/var/lib/mailsift`` or a port another test uses.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

#: Marker kinds and what the tests do with them.
KINDS = ("shell", "config", "postfix", "synopsis", "skip", "pending")

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
