"""A private Exim for end-to-end tests: Debian's exim4-daemon-light, extracted, never installed.

Debian's Exim and Postfix conflict as packages (both provide ``mail-transport-agent``),
and the tests need Postfix, so ``scripts/setup.sh --test`` extracts ``exim4-daemon-light``
and ``exim4-base`` with ``dpkg-deb -x`` into :data:`EXIM_ROOT` (and installs the libraries
the binary needs, which do not conflict).  The binary is run as root with its own
configuration (``exim4 -C FILE``): root may name any file with ``-C`` and keeps its
privileges.  The processes Exim re-executes itself as (a delivery after a reception, a
queue run) start as its user, ``Debian-exim`` (compiled in; the setup creates it): for
them Debian's build trusts a ``-C`` file only when it is listed in
``/etc/exim4/trusted_configs`` (``TRUSTED_CONFIG_LIST``) and owned by root, so
:meth:`EximInstance.start` lists its file there and removes the line at stop.

Everything else lives under the instance's work directory::

    WORKDIR/exim.conf      the configuration (mode 0644, root's)
    WORKDIR/spool/         spool_directory (messages, hints databases)
    WORKDIR/log/           log_file_path: mainlog, rejectlog, paniclog
    MAILDIR_ROOT/<local part>/new/   local deliveries (Maildir, as ``nobody``)

The configuration is the README's Exim block (its main-section lines, router and
transport) put into a small whole: local domain ``example.test``, an RCPT ACL that
accepts its listed users, and a last router delivering to the Maildirs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tests.helpers.postfix import postfix_home

#: Where scripts/setup.sh --test extracts the packages (``MAILSIFT_EXIM_ROOT`` overrides it).
EXIM_ROOT = Path(os.environ.get("MAILSIFT_EXIM_ROOT", "/opt/mailsift-test/exim"))
TRUSTED_CONFIGS = Path("/etc/exim4/trusted_configs")
DELIVERY_USER = "nobody"
EXIM_USER = "Debian-exim"
"""The user compiled into Debian's Exim (``EXIM_USER=ref:Debian-exim``)."""


def exim_binary() -> Path:
    return EXIM_ROOT / "usr" / "sbin" / "exim4"


def why_not_runnable() -> str | None:
    """Why this machine cannot run the extracted Exim here, or None."""
    binary = exim_binary()
    if not binary.exists():
        return f"{binary} is missing: scripts/setup.sh --test extracts exim4-daemon-light there"
    if os.geteuid() != 0:
        return "the private Exim runs as root (-C with its own config keeps root's privileges only for root)"
    missing = [line.split()[0] for line in _ldd(binary).splitlines() if "not found" in line]
    if missing:
        return f"libraries the extracted Exim needs are not installed: {', '.join(missing)}"
    try:
        pwd.getpwnam(EXIM_USER)
    except KeyError:
        return "the user Debian-exim (compiled into Debian's Exim) does not exist: scripts/setup.sh --test makes it"
    return None


def _ldd(binary: Path) -> str:
    return subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False).stdout


def exim_home(prefix: str = "mailsift-exim-") -> contextlib.AbstractContextManager[Path]:
    """A fresh directory under /tmp, mode 0711 (``nobody`` delivers below it), removed at the end:
    :func:`tests.helpers.postfix.postfix_home`'s."""
    return postfix_home(prefix)


def sections(block: str) -> dict[str, str]:
    """A configuration fragment split by its ``begin NAME`` lines: ``{"main": ..., "routers": ...}``."""
    found: dict[str, list[str]] = {"main": []}
    current = "main"
    for line in block.splitlines():
        match = re.fullmatch(r"\s*begin\s+(\w+)\s*", line)
        if match:
            current = match[1]
            found.setdefault(current, [])
        else:
            found[current].append(line)
    return {name: "\n".join(lines).strip() + "\n" for name, lines in found.items()}


#: The README block's ports: the public SMTP port, mailsift's smtpd, the port mail comes back on.
README_PORTS = (25, 10024, 10025)


def localize(block: str, ports: Mapping[int, int], required: Iterable[int] = README_PORTS) -> str:
    """The README's Exim block on this test's ports, its public listener on loopback only.

    Every ``required`` port must occur (a block that lost one is an error), and no other
    number that looks like one is touched.
    """
    for port in required:
        if not re.search(rf"(?<![\d.]){port}(?![\d.])", block):
            raise ValueError(f"the Exim block no longer names port {port}")
    block = re.sub(r"(?<![\d.])(25|10024|10025)(?![\d.])", lambda m: str(ports[int(m[1])]), block)
    return block.replace("[0.0.0.0]", "[127.0.0.1]")


class EximInstance:
    """``exim4 -C WORKDIR/exim.conf -bdf`` (the daemon in the foreground) until stopped.

    ``block`` is the README's Exim fragment with its ports already moved to this test's.
    """

    def __init__(
        self,
        workdir: Path,
        block: str,
        *,
        maildir_root: Path,
        domain: str = "example.test",
        mailboxes: Iterable[str] = ("alice", "bob", "carol", "postmaster"),
    ) -> None:
        self.workdir = workdir
        self.block = sections(block)
        self.maildir_root = maildir_root
        self.domain = domain
        self.mailboxes = tuple(mailboxes)
        self.config = workdir / "exim.conf"
        self.spool = workdir / "spool"
        self.logdir = workdir / "log"
        self.process: subprocess.Popen[bytes] | None = None
        self._listed = False

    def config_text(self) -> str:
        main, routers, transports = (self.block.get(name, "") for name in ("main", "routers", "transports"))
        unknown = set(self.block) - {"main", "routers", "transports"}
        if unknown:
            raise ValueError(f"the Exim block has sections this harness does not place: {sorted(unknown)}")
        users = " : ".join(self.mailboxes)
        return f"""\
# ---- the harness: a private instance
primary_hostname = exim-test.{self.domain}
# Exim re-executes itself (delivery, queue runs): the extracted binary, not /usr/sbin/exim4
exim_path = {exim_binary()}
qualify_domain = {self.domain}
domainlist local_domains = {self.domain}
spool_directory = {self.spool}
log_file_path = {self.logdir}/%slog
log_selector = +received_recipients +incoming_interface +incoming_port
keep_environment =
tls_advertise_hosts =
never_users = root
host_lookup =
rfc1413_hosts =
acl_smtp_rcpt = acl_check_rcpt
# the harness's test never waits for the retry database of an earlier run
queue_run_max = 1
# ---- the README's main-section lines
{main}
begin acl

acl_check_rcpt:
  accept hosts = :
  accept domains = +local_domains
         local_parts = {users}
  deny   message = unknown user or relay not permitted

begin routers

# ---- the README's router(s), first
{routers}
# ---- the harness: local delivery
local_maildir:
  driver = accept
  domains = +local_domains
  local_parts = {users}
  transport = maildir

begin transports

# ---- the README's transport(s)
{transports}
maildir:
  driver = appendfile
  directory = {self.maildir_root}/$local_part_data
  maildir_format
  create_directory
  user = {DELIVERY_USER}
  group = {_group_of(DELIVERY_USER)}
  mode = 0600

begin retry

*   *   F,1h,15s
"""

    def exim(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``exim4 -C CONFIG ARGS...`` (e.g. ``-bV``, ``-bt bob@example.test``)."""
        return subprocess.run(
            [str(exim_binary()), "-C", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def write(self) -> None:
        exim_user = pwd.getpwnam(EXIM_USER)
        for path in (self.spool, self.logdir):  # Exim writes them as its user (logs are created by it)
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, exim_user.pw_uid, exim_user.pw_gid)
        self.maildir_root.mkdir(parents=True, exist_ok=True)
        entry = pwd.getpwnam(DELIVERY_USER)
        os.chown(self.maildir_root, entry.pw_uid, entry.pw_gid)
        self.config.write_text(self.config_text())
        os.chmod(self.config, 0o644)

    def trust(self) -> None:
        """List the config in /etc/exim4/trusted_configs (root's, 0644) so re-executed Exims keep root."""
        with _trusted_lock():  # another test process may be editing the list too
            TRUSTED_CONFIGS.parent.mkdir(exist_ok=True)
            lines = TRUSTED_CONFIGS.read_text().splitlines() if TRUSTED_CONFIGS.exists() else []
            if str(self.config) not in lines:
                TRUSTED_CONFIGS.write_text("\n".join([*lines, str(self.config)]) + "\n")
                os.chmod(TRUSTED_CONFIGS, 0o644)
        self._listed = True

    def untrust(self) -> None:
        if not self._listed:
            return
        with _trusted_lock():
            if TRUSTED_CONFIGS.exists():
                lines = [line for line in TRUSTED_CONFIGS.read_text().splitlines() if line != str(self.config)]
                if lines:
                    TRUSTED_CONFIGS.write_text("\n".join(lines) + "\n")
                else:
                    TRUSTED_CONFIGS.unlink()
        self._listed = False

    def start(self, ports: Iterable[int], timeout: float = 30) -> None:
        self.write()
        self.trust()
        checked = self.exim("-bV")
        if checked.returncode:
            raise RuntimeError(f"exim -bV refused the config:\n{checked.stdout}{checked.stderr}")
        out = (self.workdir / "daemon.out").open("wb")
        self.process = subprocess.Popen(
            [str(exim_binary()), "-C", str(self.config), "-bdf", "-q5s"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        for port in ports:
            while not _listening(port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Exim did not listen on {port}:\n{self.log_text()}")
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            self.untrust()

    def __enter__(self) -> EximInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        parts = []
        for name in ("daemon.out", "log/mainlog", "log/paniclog", "log/rejectlog"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def maildir_new(self, local_part: str) -> Path:
        return self.maildir_root / local_part / "new"

    def wait_delivered(self, local_part: str, count: int = 1, timeout: float = 60) -> list[Path]:
        deadline = time.monotonic() + timeout
        while True:
            folder = self.maildir_new(local_part)
            found = sorted(folder.iterdir()) if folder.exists() else []
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} messages for {local_part}:\n{self.log_text()}")
            time.sleep(0.2)

    def queue_is_empty(self) -> bool:
        listed = self.exim("-bpc")
        return listed.stdout.strip() == "0"


#: update-exim4.conf.conf of a plain Debian "internet site" (what debconf writes), before the README's lines.
DEBIAN_BASE = """\
dc_eximconfig_configtype='internet'
dc_other_hostnames='example.test'
dc_readhost=''
dc_relay_domains=''
dc_minimaldns='false'
dc_relay_nets=''
dc_smarthost=''
CFILEMODE='644'
dc_hide_mailname=''
dc_mailname_in_oh='true'
dc_localdelivery='maildir_home'
"""


def debian_split_config(home: Path, block: str, settings: str) -> Path:
    """Debian's exim4-config with the README's router and transport in conf.d and its
    ``update-exim4.conf.conf`` lines, built by Debian's own ``update-exim4.conf`` into one file.

    The package's /etc/exim4 (extracted into :data:`EXIM_ROOT`) is copied under ``home``; the
    script is run with ``-d`` (that directory) and ``-o`` (the output), and told where the
    extracted exim4 is (it checks the result with it).
    """
    confdir = home / "exim4"
    shutil.copytree(EXIM_ROOT / "etc" / "exim4", confdir)
    parts = sections(block)
    (confdir / "conf.d" / "router" / "010_mailsift").write_text(parts["routers"])
    (confdir / "conf.d" / "transport" / "30_mailsift").write_text(parts["transports"])
    (confdir / "update-exim4.conf.conf").write_text(DEBIAN_BASE + settings)
    script = (EXIM_ROOT / "usr" / "sbin" / "update-exim4.conf").read_text()
    script = script.replace('EXIM="/usr/sbin/exim4"', f'EXIM="{exim_binary()}"')
    (home / "update-exim4.conf").write_text(script)
    output = home / "exim4.conf.generated"
    built = subprocess.run(
        ["bash", str(home / "update-exim4.conf"), "-d", str(confdir), "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if built.returncode or not output.exists():
        raise RuntimeError(f"update-exim4.conf failed ({built.returncode}):\n{built.stdout}{built.stderr}")
    return output


@contextlib.contextmanager
def _trusted_lock() -> Iterator[None]:
    with open("/tmp/mailsift-exim-trusted-configs.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _group_of(user: str) -> str:
    import grp

    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
