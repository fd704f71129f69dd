"""Command-line scanners: ``cmd(args, result_regex)`` and SAGATOR's presets.

``cmd`` runs any scanner program on ``target.data`` (the whole message, or a
part under ``parsemail``): on its standard input, or in a temporary file when
an argument contains the placeholder ``{file}``.  The run is bounded: the
program is killed (its whole process group) after ``timeout`` seconds
(:class:`ScannerTimeout`), and at most ``max_output`` bytes of its output are
kept.  The exit code decides: ``found_codes`` -> detection, ``clean_codes`` ->
clean, anything else (or a signal) -> :class:`ScannerError` with the end of its
stderr, so the mail is tempfailed, never passed.  ``result_regex`` is searched
in the output; its group ``name`` (or its first group) is the virus name.  A
program that cannot be started (removed since the config was loaded) is
:class:`ScannerUnavailable`.  These mappings are :mod:`.common`'s, as for every
engine.

``max_size`` (bytes, default: no limit) bounds what is given to the program;
a bigger object is not scanned and ``oversize`` says what it becomes, as for
``clamd``: ``"detect"`` (default for ``cmd`` and ``clamscan``: a finding named
``Heuristics.Limits.Exceeded.MaxSize``), ``"pass"`` (default for
``bogofilter``: clean, ``not scanned`` in the detail) or ``"tempfail"``.

Presets (SAGATOR's names, §4 of its README):

* ``clamscan(database=None)`` / ``cmd_clamav(...)``: ClamAV's command-line
  scanner reading stdin; ``database`` points it at a signature directory or file.
  It loads the database on every run, so prefer ``clamd`` for traffic.
* ``bogofilter(wordlist_dir=None)``: the Bayesian spam filter; its spamicity
  becomes the level (``spamicity / threshold``, so it is ``>= 1.0`` from the
  threshold on, bogofilter's ``spam_cutoff`` 0.99 by default).  Read-only: it
  never registers the message.

SAGATOR's other ``cmd_*`` presets (drweb, fprot, kavscanner, trendmicro,
uvscan, vbuster, bdc) are for commercial scanners that cannot be installed or
tested here; ``cmd(...)`` with the scanner's exit codes and output format
covers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Sequence
from typing import Any

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout
from mailsift.message.result import Result
from mailsift.scanners import work
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.engines.common import Oversize, SizeLimit, deadline, oversize_policy, oversized, unavailable
from mailsift.validators import number, positive, positive_int

FILE = "{file}"
"""The placeholder in ``cmd`` arguments replaced by the path of a temporary file holding the data."""

OVERSIZE_NAME = "Heuristics.Limits.Exceeded.MaxSize"
"""The detection name of an object bigger than ``max_size`` under ``oversize="detect"``."""

_READ = 64 * 1024
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")


class cmd(Scanner):
    """Run a command-line scanner; exit codes and ``result_regex`` give the verdict.

    ``args``: the program and its arguments (the program is looked up on PATH
    at construction).  ``found_codes``/``clean_codes``: the exit codes that mean
    found and clean; with ``found_codes=()`` a program that always exits clean
    detects by ``result_regex`` matching.  ``level`` and ``virus_name`` (used
    when the regex gives no name) make the detection's result.  ``tmpdir``: where
    ``{file}`` temporary files go.  ``env``: the program's environment (default:
    inherited).  ``max_size`` and ``oversize``: see the module docstring.
    """

    name = "cmd"

    def __init__(
        self,
        args: Sequence[str],
        result_regex: str | re.Pattern[str] | None = None,
        *,
        found_codes: Sequence[int] = (1,),
        clean_codes: Sequence[int] = (0,),
        level: float = 1.0,
        virus_name: str = "unknown",
        timeout: float = 60.0,
        max_output: int = 256 * 1024,
        tmpdir: str | None = None,
        env: dict[str, str] | None = None,
        max_size: int | None = None,
        oversize: Oversize = "detect",
    ) -> None:
        what = self.name
        if isinstance(args, str) or not args or not all(isinstance(arg, str) for arg in args):
            raise ConfigError(f"{what}: args must be a non-empty list of strings, got {args!r}")
        program = shutil.which(args[0])
        if program is None:
            raise ConfigError(f"{what}: program {args[0]!r} not found or not executable")
        self.args = [program, *args[1:]]
        self.uses_file = any(FILE in arg for arg in self.args[1:])
        self.result_regex: re.Pattern[str] | None = None
        if isinstance(result_regex, str):
            try:
                self.result_regex = re.compile(result_regex, re.MULTILINE)
            except re.error as error:
                raise ConfigError(f"{what}: bad result_regex {result_regex!r}: {error}") from None
        elif isinstance(result_regex, re.Pattern):
            self.result_regex = result_regex
        elif result_regex is not None:
            raise ConfigError(f"{what}: result_regex must be a regular expression, got {result_regex!r}")
        self.found_codes = frozenset(_codes(found_codes, "found_codes", what))
        self.clean_codes = frozenset(_codes(clean_codes, "clean_codes", what))
        if self.found_codes & self.clean_codes:
            raise ConfigError(f"{what}: exit codes {sorted(self.found_codes & self.clean_codes)} both found and clean")
        if not self.found_codes and self.result_regex is None:
            raise ConfigError(f"{what}: without found_codes, a result_regex must say what is found")
        self.level = number(level, f"{what}: level")
        self.timeout = positive(timeout, f"{what}: timeout", unit="number of seconds")
        self.max_output = positive_int(max_output, f"{what}: max_output", unit="number of bytes")
        self.size_limit = SizeLimit.checked("max_size", max_size, what, optional=True)
        self.oversize: Oversize = oversize_policy(oversize, what)
        if tmpdir is not None and not os.path.isdir(tmpdir):
            raise ConfigError(f"{what}: tmpdir {tmpdir!r} is not a directory")
        self.virus_name = virus_name
        self.tmpdir = tmpdir
        self.env = env

    def describe(self) -> str:
        return f"{self.name}({' '.join(self.args)})"

    async def scan(self, target: Target) -> Result:
        if self.size_limit.exceeded(target.size):
            why = self.size_limit.why(target.size)
            engine_at = f"{self.name} {os.path.basename(self.args[0])}"
            return oversized(self.oversize, scanner=self.name, engine_at=engine_at, why=why, name=OVERSIZE_NAME)
        if not self.uses_file:
            returncode, stdout, stderr = await self.run(self.args, target.data)
            return self.interpret(returncode, stdout, stderr)
        path = await work.in_thread(self._write_temporary, target.data, _suffix(target.names))
        try:
            argv = [self.args[0], *(arg.replace(FILE, path) for arg in self.args[1:])]
            returncode, stdout, stderr = await self.run(argv, None)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return self.interpret(returncode, stdout, stderr)

    def interpret(self, returncode: int, stdout: bytes, stderr: bytes) -> Result:
        """Turn an exit code and output into a result (presets override this)."""
        text = stdout.decode("utf-8", "replace")
        match = self.result_regex.search(text) if self.result_regex is not None else None
        found = returncode in self.found_codes or (not self.found_codes and returncode in self.clean_codes and match)
        if found:
            virus = self.virus_name
            if match is not None and "name" in match.re.groupindex and match.group("name"):
                virus = match.group("name")
            elif match is not None and match.re.groups and match.group(1):
                virus = match.group(1)
            detail = match.group(0).strip() if match is not None else f"exit code {returncode}"
            return Result(self.level, virus, self.name, detail)
        if returncode in self.clean_codes:
            return Result(0.0, "", self.name)
        raise self.failure(returncode, stderr or stdout)

    def failure(self, returncode: int, output: bytes) -> ScannerError:
        """The error for an exit code that is neither clean nor found."""
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with {returncode}"
        tail = " ".join(output.decode("utf-8", "replace").split())[-300:]
        return ScannerError(f"{self.name}: {os.path.basename(self.args[0])} {how}" + (f": {tail}" if tail else ""))

    async def run(self, argv: Sequence[str], data: bytes | None) -> tuple[int, bytes, bytes]:
        """Run ``argv`` with ``data`` on stdin; return exit code, stdout and stderr (bounded)."""
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # its own process group: a timeout kills its children too
            )
        except OSError as error:
            raise unavailable(self.name, argv[0], error, how=f"cannot run {argv[0]}") from None
        assert process.stdout is not None
        assert process.stderr is not None

        def killed() -> ScannerTimeout:
            return ScannerTimeout(f"{self.name}: {os.path.basename(argv[0])} killed after {self.timeout:g} s")

        try:
            async with deadline(self.timeout, killed):
                stdout, stderr, _ = await asyncio.gather(
                    _read_bounded(process.stdout, self.max_output),
                    _read_bounded(process.stderr, self.max_output),
                    _feed(process.stdin, data),
                )
                returncode = await process.wait()
        except BaseException:  # the timeout, a cancellation: the program and its children go
            _kill_group(process.pid)
            await process.wait()
            raise
        return returncode, stdout, stderr

    def _write_temporary(self, data: bytes, suffix: str) -> str:
        fd, path = tempfile.mkstemp(prefix="mailsift-", suffix=suffix, dir=self.tmpdir)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return path


class clamscan(cmd):
    """ClamAV's ``clamscan`` on stdin: ``clamscan(database='/var/lib/clamav')``.

    Exit code 1 is found, 0 clean, 2 an error; the virus name is taken from
    ``stdin: <name> FOUND`` as clamscan prints it.  ``args`` are extra
    clamscan options; ``program`` its path.
    """

    name = "clamscan"

    def __init__(
        self,
        database: str | None = None,
        *,
        args: Sequence[str] = (),
        program: str = "clamscan",
        timeout: float = 120.0,
        **options: Any,
    ) -> None:
        if database is not None and not os.path.exists(database):
            raise ConfigError(f"{self.name}: database {database!r} does not exist")
        argv = [program, "--no-summary", "--stdout", "--infected"]
        if database is not None:
            argv += ["--database", database]
        argv += [*args, "-"]
        super().__init__(argv, r"^.*?: (?P<name>\S+) FOUND$", timeout=timeout, **options)
        self.database = database


class cmd_clamav(clamscan):
    """SAGATOR's name for :class:`clamscan`."""

    name = "cmd_clamav"


class bogofilter(cmd):
    """The bogofilter spam filter: level = spamicity / ``threshold``, named ``SPAM`` from 1.0.

    ``wordlist_dir`` is bogofilter's ``-d`` (default: its own, ``~/.bogofilter``);
    ``threshold`` should be your ``spam_cutoff`` (bogofilter's default 0.99).
    bogofilter exits 0 for spam, 1 for ham, 2 for unsure and 3 on errors (no
    wordlist yet, for one), which tempfail.
    """

    name = "bogofilter"
    SPAM = "SPAM"

    def __init__(
        self,
        wordlist_dir: str | None = None,
        *,
        threshold: float = 0.99,
        args: Sequence[str] = (),
        program: str = "bogofilter",
        timeout: float = 30.0,
        **options: Any,
    ) -> None:
        if not positive(threshold, f"{self.name}: threshold", unit="spamicity in (0, 1]") <= 1:
            raise ConfigError(f"{self.name}: threshold must be a positive spamicity in (0, 1], got {threshold!r}")
        if wordlist_dir is not None and not os.path.isdir(wordlist_dir):
            # bogofilter would create it and then fail on every message
            raise ConfigError(f"{self.name}: wordlist_dir {wordlist_dir!r} is not a directory")
        argv = [program, "-T", *(["-d", wordlist_dir] if wordlist_dir is not None else []), *args]
        regex = r"^(?P<verdict>[SHU]) (?P<spamicity>\S+)\s*$"
        options.setdefault("oversize", "pass")  # a spam filter: a big message is not spam for that
        super().__init__(argv, regex, clean_codes=(0, 1, 2), found_codes=(), timeout=timeout, **options)
        self.threshold = float(threshold)
        self.wordlist_dir = wordlist_dir

    def interpret(self, returncode: int, stdout: bytes, stderr: bytes) -> Result:
        match = self.result_regex.search(stdout.decode("utf-8", "replace")) if self.result_regex else None
        if returncode not in self.clean_codes or match is None:
            raise self.failure(returncode, stderr or stdout)
        try:
            spamicity = float(match.group("spamicity"))
        except ValueError:
            raise ScannerError(f"{self.name}: bad spamicity in {match.group(0)!r}") from None
        level = spamicity / self.threshold
        name = self.SPAM if level >= 1.0 else ""
        return Result(level, name, self.name, f"spamicity {spamicity:g} ({match.group('verdict')})")


async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read to EOF, keeping at most ``limit`` bytes (the rest is drained so the program never blocks)."""
    kept = bytearray()
    while chunk := await stream.read(_READ):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


async def _feed(stdin: asyncio.StreamWriter | None, data: bytes | None) -> None:
    """Write ``data`` to the program; one that exits without reading it all is not an error here."""
    if stdin is None:
        return
    try:
        if data:
            stdin.write(data)
            await stdin.drain()
        stdin.close()
        await stdin.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        stdin.close()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _codes(codes: Sequence[int], what: str, scanner: str) -> list[int]:
    if isinstance(codes, int) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise ConfigError(f"{scanner}: {what} must be a list of exit codes, got {codes!r}")
    return list(codes)


def _suffix(names: Sequence[str]) -> str:
    """The attachment's extension for the temporary file (some scanners look at it), if it is tame."""
    for name in names:
        suffix = os.path.splitext(name)[1]
        if _SAFE_SUFFIX.fullmatch(suffix):
            return suffix
    return ""
