"""Scan the evasive messages with mailsift and with clamd on the raw message; print a table.

``python bench/evasive/run.py [--clamd-socket PATH] [--out FILE.md] [--messages DIR]``

For every technique of ``generate.py`` (built in memory unless ``--messages``
points at a directory written by it) the message is scanned by:

* **mailsift** = ``parsemail(decompress(regexp_scan(EICAR)), raw=True)``
  (strict parts, then the lenient views, then the raw message) **or**
  ``bad_mime()`` (qmail-scanner's format checks): blocked if either detects;
* the same content expression with ``views=False`` (strict parts only), and
  ``bad_mime()`` alone, to show what each half contributes;
* **clamd raw**: the real clamd (``tests/helpers/clamd.py``'s
  private instance with the EICAR signatures, or the one at
  ``--clamd-socket``) on the raw message alone, clamd parsing MIME itself;
* ``parsemail(clamd, raw=True)``: clamd on every part and view mailsift finds.

A clamd error (``ERROR`` answer) counts as not blocked and is shown as such.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "src")]

from generate import build  # noqa: E402

from mailsift.errors import ScannerError  # noqa: E402
from mailsift.message.mail import Mail  # noqa: E402
from mailsift.message.result import Result  # noqa: E402
from mailsift.scanners.archive import decompress  # noqa: E402
from mailsift.scanners.badmime import bad_mime  # noqa: E402
from mailsift.scanners.base import MailTarget, Scanner  # noqa: E402
from mailsift.scanners.basic import regexp_scan  # noqa: E402
from mailsift.scanners.engines.clamav import clamd  # noqa: E402
from mailsift.scanners.parsemail import parsemail  # noqa: E402

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]


@contextlib.contextmanager
def clamd_socket(path: str | None) -> Iterator[str]:
    """The given clamd socket, or a private clamd started for the run (stopped by PID after)."""
    if path:
        yield path
        return
    from tests.helpers.clamd import ClamdInstance

    with tempfile.TemporaryDirectory(prefix="evasive-clamd-") as workdir, ClamdInstance(Path(workdir)) as instance:
        yield str(instance.socket_path)


async def verdict(scanner: Scanner, mail: Mail) -> tuple[bool, str]:
    try:
        result: Result = await scanner.scan(MailTarget(mail))
    except ScannerError as error:
        return False, f"error: {error.message[:60]}"
    return result.detected, result.name if result.detected else ""


def load(messages: str | None) -> list[tuple[str, str, str, bytes]]:
    if not messages:
        return build()
    folder = Path(messages)
    rows = (folder / "techniques.tsv").read_text(encoding="utf-8").splitlines()[1:]
    out = []
    for row in rows:
        ident, family, description = row.split("\t", 2)
        out.append((ident, family, description, (folder / f"{ident}.eml").read_bytes()))
    return out


async def run(socket_path: str, messages: str | None) -> str:
    content = parsemail(decompress(regexp_scan(EICAR_RULE)), raw=True)
    strict = parsemail(decompress(regexp_scan(EICAR_RULE)), views=False)
    format_checks = bad_mime()
    clamd_raw = clamd(socket_path)
    clamd_parts = parsemail(clamd(socket_path), raw=True)
    rows = []
    totals = {"mailsift": 0, "strict": 0, "views": 0, "bad_mime": 0, "clamd": 0, "clamd_parts": 0}
    cases = load(messages)
    for ident, family, description, data in cases:
        mail = Mail(data=data)
        found_content, _ = await verdict(content, mail)
        found_strict, _ = await verdict(strict, Mail(data=data))
        found_format, name_format = await verdict(format_checks, mail)
        found_clamd, name_clamd = await verdict(clamd_raw, Mail(data=data))
        found_parts, _ = await verdict(clamd_parts, mail)
        blocked = found_content or found_format
        for key, hit in (
            ("mailsift", blocked),
            ("strict", found_strict),
            ("views", found_content),
            ("bad_mime", found_format),
            ("clamd", found_clamd),
            ("clamd_parts", found_parts),
        ):
            totals[key] += hit
        mark = {True: "yes", False: "no"}
        rows.append(
            f"| `{ident}` | {family} | {description} | {mark[blocked]} | {mark[found_strict]} | "
            f"{mark[found_content]} | {name_format or '-'} | {mark[found_clamd]}"
            f"{'' if found_clamd or not name_clamd else ' (' + name_clamd + ')'} | {mark[found_parts]} |"
        )
    n = len(cases)

    def rate(key: str) -> str:
        return f"{totals[key]}/{n} ({100 * totals[key] / n:.0f}%)"

    summary = [
        "| method | messages | blocked |",
        "|---|---|---|",
        f"| mailsift: `parsemail(decompress(regexp_scan(EICAR)), raw=True)` or `bad_mime()` "
        f"| {n} | {rate('mailsift')} |",
        f"| clamd on the raw message alone | {n} | {rate('clamd')} |",
        f"| mailsift content scan, strict parts only (`views=False`) | {n} | {rate('strict')} |",
        f"| mailsift content scan with the views (no `bad_mime`) | {n} | {rate('views')} |",
        f"| `bad_mime()` alone | {n} | {rate('bad_mime')} |",
        f"| `parsemail(clamd, raw=True)`: clamd on every part and view | {n} | {rate('clamd_parts')} |",
    ]
    detail = [
        "| technique | family | how the zip is hidden | mailsift | strict only | with views | bad_mime | clamd raw "
        "| clamd on views |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(summary) + "\n\n" + "\n".join(detail) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clamd-socket", help="a running clamd's unix socket (default: start a private one)")
    parser.add_argument("--messages", help="a directory written by generate.py (default: build in memory)")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args()
    with clamd_socket(args.clamd_socket) as socket_path:
        table = asyncio.run(run(socket_path, args.messages))
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
