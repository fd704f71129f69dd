"""Scan the evasive messages with mailsift, clamd and two independent readers; print the tables.

``python bench/evasive/run.py [--clamd-socket PATH] [--out FILE.md] [--corpora DIR]``

Every message of ``generate.py`` (``cases()``: the 52 original techniques, then issue 14's
families) is scanned by:

* **mailsift** = ``parsemail(decompress(regexp_scan(EICAR)), raw=True)`` (strict parts,
  the lenient views, the raw message): *payload* when it names the virus (``EICAR-Test``);
  ``bad_mime()`` (qmail-scanner's format checks); *blocked* when either detects;
* the same content expression with ``views=False`` (strict parts only);
* **clamd raw**: the real clamd (``tests/helpers/clamd.py``'s private instance with the
  EICAR signatures, or the one at ``--clamd-socket``) on the raw message alone;
  ``parsemail(clamd, raw=True)``: clamd on every part and view mailsift finds;
* **names**: ``parsemail(mime_ext(r"\\.zip$"))``: mailsift sees the name ``file.zip``;
* the **readers** of ``readers.py``: Python's ``email`` (``policy=default``) and Perl's
  MIME::Tools: does the reader recover the payload (a zip that opens with eicar.com) or
  see the name ``file.zip``?  A message no reader opens is flagged: not an evasion.

It also times every message with every view (parse, views, the content scan, ``bad_mime``
and ``mime_ext``; clamd excluded) and reports the slowest, with ``--corpora`` over
the shared corpora too (Build 6: reported, not asserted).  A clamd error counts as not found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "src")]

from generate import cases  # noqa: E402
from readers import Reading, mime_tools, mime_tools_available, python_email  # noqa: E402

from mailsift.errors import ScannerError  # noqa: E402
from mailsift.message.mail import Mail  # noqa: E402
from mailsift.message.result import Result  # noqa: E402
from mailsift.scanners.archive import decompress  # noqa: E402
from mailsift.scanners.badmime import bad_mime  # noqa: E402
from mailsift.scanners.base import MailTarget, Scanner  # noqa: E402
from mailsift.scanners.basic import regexp_scan  # noqa: E402
from mailsift.scanners.engines.clamav import clamd  # noqa: E402
from mailsift.scanners.parsemail import mime_ext, parsemail  # noqa: E402

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]
NAME = "file.zip"
YES = {True: "yes", False: "no"}


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


def content_scanner() -> Scanner:
    return parsemail(decompress(regexp_scan(EICAR_RULE)), raw=True)


def name_scanner() -> Scanner:
    return parsemail(mime_ext(r"\.zip$"))


async def timed(data: bytes) -> float:
    """Seconds for a fresh Mail: parse, every view, the content scan, bad_mime and mime_ext."""
    start = time.perf_counter()
    mail = Mail(data=data)
    _ = mail.parts, mail.views
    for scanner in (content_scanner(), bad_mime(), name_scanner()):
        await verdict(scanner, mail)
    return time.perf_counter() - start


def readers_of(messages: dict[str, bytes]) -> tuple[dict[str, Reading], dict[str, Reading] | None]:
    python = {ident: python_email(data) for ident, data in messages.items()}
    perl = mime_tools(messages) if mime_tools_available() else None
    return python, perl


def revision() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, check=False)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, check=False
    )
    return done.stdout.decode().strip() + (" (src modified)" if dirty.stdout.strip() else "")


def corpus_messages(corpora: str) -> list[tuple[str, bytes]]:
    files = sorted(p for p in Path(corpora).rglob("*") if p.is_file() and p.name not in ("MANIFEST.tsv", "README.md"))
    return [(str(p.relative_to(corpora)), p.read_bytes()) for p in files]


def rate(hits: int, n: int) -> str:
    return f"{hits}/{n} ({100 * hits / n:.0f}%)" if n else "-"


async def run(socket_path: str, corpora: str | None) -> str:
    content = content_scanner()
    strict = parsemail(decompress(regexp_scan(EICAR_RULE)), views=False)
    format_checks = bad_mime()
    names = name_scanner()
    clamd_raw = clamd(socket_path)
    clamd_parts = parsemail(clamd(socket_path), raw=True)
    all_cases = cases()
    python, perl = readers_of({c[0]: c[5] for c in all_cases})

    def reader_marks(ident: str, kind: str) -> tuple[str, str, bool]:
        py, pl = python[ident], perl[ident] if perl else None
        if kind == "content":
            hit_py, hit_pl = py.eicar, (pl.eicar if pl else None)
        else:
            hit_py, hit_pl = py.sees(NAME), (pl.sees(NAME) if pl else None)
        shown_pl = "n/a" if hit_pl is None else YES[hit_pl]
        return YES[hit_py], shown_pl, bool(hit_py or hit_pl)

    content_rows, name_rows, control_rows = [], [], []
    families: dict[tuple[str, str], dict[str, int]] = {}
    slowest: list[tuple[float, str]] = []
    for ident, family, kind, description, _source, data in all_cases:
        mail = Mail(data=data)
        found_content, virus = await verdict(content, mail)
        found_strict, _ = await verdict(strict, Mail(data=data))
        found_format, name_format = await verdict(format_checks, mail)
        found_name, _ = await verdict(names, mail)
        py, pl, opened = reader_marks(ident, kind)
        slowest.append((await timed(data), ident))
        stats = families.setdefault((kind, family), {})
        for key, hit in (("n", True), ("opened", opened), ("name", found_name), ("format", found_format)):
            stats[key] = stats.get(key, 0) + hit
        flag = "" if opened else " **no reader**"
        if kind == "content":
            found_clamd, name_clamd = await verdict(clamd_raw, Mail(data=data))
            found_parts, _ = await verdict(clamd_parts, mail)
            payload = found_content and virus == "EICAR-Test"
            blocked = found_content or found_format
            for key, hit in (
                ("payload", payload),
                ("blocked", blocked),
                ("clamd", found_clamd),
                ("parts", found_parts),
            ):
                stats[key] = stats.get(key, 0) + hit
            for key, hit in (("strict", found_strict), ("py", py == "yes"), ("pl", pl == "yes")):
                stats[key] = stats.get(key, 0) + hit
            clamd_shown = YES[found_clamd] + ("" if found_clamd or not name_clamd else f" ({name_clamd})")
            content_rows.append(
                f"| `{ident}` | {family} | {description} | {YES[payload]} | {name_format or '-'} | {YES[blocked]} "
                f"| {YES[found_strict]} | {clamd_shown} | {YES[found_parts]} | {py} | {pl}{flag} |"
            )
        elif kind == "filename":
            for key, hit in (("py", py == "yes"), ("pl", pl == "yes")):
                stats[key] = stats.get(key, 0) + hit
            seen_py = ", ".join(sorted(python[ident].names)) or "-"
            seen_pl = ", ".join(sorted(perl[ident].names)) if perl else "n/a"
            name_rows.append(
                f"| `{ident}` | {family} | {description} | {YES[found_name]} | {name_format or '-'} "
                f"| {py} ({seen_py}) | {pl} ({seen_pl}){flag} |"
            )
        else:
            passes = not (found_content or found_format or found_name)
            control_rows.append(
                f"| `{ident}` | {description} | {'passes' if passes else 'FLAGGED'} | {YES[found_content]} "
                f"| {name_format or '-'} | {YES[found_name]} |"
            )

    def family_table(kind: str) -> list[str]:
        rows = []
        total: dict[str, int] = {}
        for (k, family), stats in families.items():
            if k != kind:
                continue
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
            rows.append((family, stats))
        rows.append(("**total**", total))
        out = []
        for family, stats in rows:
            n = stats["n"]
            if kind == "content":
                out.append(
                    f"| {family} | {n} | {stats['payload']} | {stats['blocked']} | {stats['clamd']} | {stats['parts']} "
                    f"| {stats['py']} | {stats['pl']} | {n - stats['opened']} |"
                )
            else:
                out.append(
                    f"| {family} | {n} | {stats['name']} | {stats['py']} | {stats['pl']} | {n - stats['opened']} |"
                )
        return out

    n_content = sum(1 for c in all_cases if c[2] == "content")
    totals = {
        key: sum(s.get(key, 0) for (k, _), s in families.items() if k == "content")
        for key in ("payload", "blocked", "clamd", "opened")
    }
    slowest.sort(reverse=True)
    lines = [
        f"Made on commit {revision()} (`python bench/evasive/run.py`); "
        f"MIME::Tools {'present' if perl is not None else 'missing: its column is n/a'}.",
        "",
        "## Hidden content: per family",
        "",
        f"mailsift finds the payload (names the virus) in {rate(totals['payload'], n_content)}, blocks "
        f"{rate(totals['blocked'], n_content)} (with `bad_mime`); clamd on the raw message finds "
        f"{rate(totals['clamd'], n_content)}; {n_content - totals['opened']} messages are opened by no reader "
        "here (not evasions for these readers).",
        "",
        "| family | messages | mailsift payload | mailsift blocked | clamd raw | clamd on views | Python email "
        "| MIME::Tools | no reader |",
        "|---|---|---|---|---|---|---|---|---|",
        *family_table("content"),
        "",
        "## Hidden filenames: per family",
        "",
        "| family | messages | mailsift `mime_ext(r'\\.zip$')` | Python email | MIME::Tools | no reader |",
        "|---|---|---|---|---|---|",
        *family_table("filename"),
        "",
        "## Controls (must pass)",
        "",
        "| message | what | verdict | EICAR found | bad_mime | zip name seen |",
        "|---|---|---|---|---|---|",
        *control_rows,
        "",
        "## Time (Build 6: reported, not asserted)",
        "",
        f"Slowest evasive message: `{slowest[0][1]}` {slowest[0][0] * 1000:.1f} ms (parse + every view + "
        f"content scan + bad_mime + mime_ext; clamd excluded); next: "
        + ", ".join(f"`{i}` {t * 1000:.1f} ms" for t, i in slowest[1:4])
        + f"; all {len(slowest)} together {sum(t for t, _ in slowest) * 1000:.0f} ms.",
    ]
    if corpora:
        corpus_times = []
        for name, data in corpus_messages(corpora):
            corpus_times.append((await timed(data), name))
        corpus_times.sort(reverse=True)
        lines.append(
            f"Slowest corpus message of {len(corpus_times)}: `{corpus_times[0][1]}` "
            f"{corpus_times[0][0] * 1000:.1f} ms; "
            "next: " + ", ".join(f"`{i}` {t * 1000:.1f} ms" for t, i in corpus_times[1:4]) + "."
        )
    lines += [
        "",
        "## Hidden content: every message",
        "",
        "| message | family | how the zip is hidden | mailsift payload | bad_mime | blocked | strict only "
        "| clamd raw | clamd on views | Python email | MIME::Tools |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *content_rows,
        "",
        "## Hidden filenames: every message",
        "",
        "| message | family | how `file.zip` is hidden | mailsift sees file.zip | bad_mime | Python email (names) "
        "| MIME::Tools (names) |",
        "|---|---|---|---|---|---|---|",
        *name_rows,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clamd-socket", help="a running clamd's unix socket (default: start a private one)")
    parser.add_argument("--corpora", help="also time every message of this corpora directory (e.g. ../shared/corpora)")
    parser.add_argument("--out", help="also write the Markdown tables to this file")
    args = parser.parse_args()
    with clamd_socket(args.clamd_socket) as socket_path:
        table = asyncio.run(run(socket_path, args.corpora))
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
