"""What every front end shares on the config side: the service description and its socket.

A service object is built by the config file (``smtpd(SCANNERS, host, port)``)
and is a plain description until a worker starts it (the running side is
:mod:`mailsift.services.server`).  This module holds what every front end
validated on its own before, once:

* where it listens (:func:`parse_listen`): TCP as ``host, port`` (unchanged:
  ``'127.0.0.1', 10024``, ``'::1', 10024``), or a unix socket as
  ``'unix:/run/mailsift/smtpd.sock'`` or simply ``'/run/mailsift/smtpd.sock'``
  (the port is then ignored), created with ``socket_mode`` (default 0o660:
  read/write for the owner and the group — put the MTA's user in mailsift's
  group), owned by ``socket_owner`` and ``socket_group`` (default: ``USER`` and
  its group when the supervisor runs as root and drops to it, else the
  supervisor's own: :func:`socket_ids`);
* the limits and timeouts (:func:`check_limit`, :func:`check_seconds`): one
  message for every front end, through :mod:`mailsift.validators` like every
  other config value (a ``bool`` or a string is never a number, nor is ``nan``
  or ``inf``: ``max_connections=True`` is refused everywhere);
* the connection limits (:meth:`Service.connection_limits`):
  ``max_connections`` per worker, ``max_connections_per_address`` per worker
  and client address (default half of ``max_connections``, as Postfix's
  ``smtpd_client_connection_count_limit`` is half of its process limit), and
  ``exempt_hosts``, networks held to ``max_connections`` only (the MTA in
  front, when it opens more connections than the per-address limit);
* binding, done once in the supervisor before the workers fork
  (:meth:`Service.bind`); a stale unix socket file left by an earlier run is
  replaced, one in use by a live process is refused.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import stat
from collections.abc import Sequence
from typing import Any

from mailsift import validators
from mailsift.errors import ConfigError
from mailsift.scanners.base import Scanner, as_scanners
from mailsift.settings import Settings
from mailsift.validators import Network

LISTEN_BACKLOG = 1024
UNIX_PREFIX = "unix:"
DEFAULT_SOCKET_MODE = 0o660
UNIX_PATH_MAX = 104  # sun_path is 108 bytes on Linux, 104 on the BSDs


def check_limit(value: Any, what: str, kind: str, *, minimum: int = 1) -> int:
    """A count limit (``max_connections``...): an int of at least ``minimum`` (:mod:`mailsift.validators`)."""
    if minimum == 1:
        return validators.positive_int(value, f"{kind}: {what}")
    return validators.integer(value, f"{kind}: {what}", minimum=minimum)


def check_networks(value: Any, what: str, kind: str) -> tuple[Network, ...]:
    """A list of networks or addresses (``'127.0.0.0/8'``, ``'::1'``, ``'192.0.2.7'``): a front end's
    host lists (``exempt_hosts``, ``xforward_hosts``...) are lists, never one string
    (:func:`mailsift.validators.networks`)."""
    return validators.networks(value, f"{kind}: {what}", single=False)


def default_per_address(max_connections: int) -> int:
    """The default ``max_connections_per_address``: half of ``max_connections`` (at least 1)."""
    return max(1, max_connections // 2)


def check_seconds(value: Any, what: str, kind: str) -> float:
    """A timeout: a positive, finite number of seconds (:func:`mailsift.validators.positive`)."""
    return validators.positive(value, f"{kind}: {what}", unit="number of seconds")


def check_mode(value: Any, kind: str) -> int:
    """A unix socket's permission bits, like ``0o660``."""
    return validators.permission_bits(value, f"{kind}: socket_mode")


def unix_path(host: Any) -> str | None:
    """The socket path when ``host`` names a unix socket (``unix:/path`` or ``/path``), else None."""
    if isinstance(host, str) and host.startswith(UNIX_PREFIX):
        return host[len(UNIX_PREFIX) :]
    if isinstance(host, str) and host.startswith("/"):
        return host
    return None


def check_address(host: Any, port: Any, what: str) -> tuple[str, int]:
    """A TCP listening address: a host string and a port 0-65535."""
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{what}: host must be an address string, got {host!r}")
    return host, validators.integer(port, f"{what}: port", minimum=0, maximum=65535)


def parse_listen(host: Any, port: Any, what: str) -> tuple[str, int]:
    """``(host, port)`` for TCP, or ``("unix:/abs/path", 0)`` for a unix socket."""
    path = unix_path(host)
    if path is None:
        return check_address(host, port, what)
    if not path.startswith("/"):
        raise ConfigError(f"{what}: unix socket path must be absolute, got {path!r}")
    if len(path.encode()) >= UNIX_PATH_MAX:
        raise ConfigError(f"{what}: unix socket path is too long ({len(path.encode())} bytes): {path}")
    return UNIX_PREFIX + path, 0


def check_owner(value: Any, what: str, kind: str) -> str | int | None:
    """A unix socket's ``socket_owner`` or ``socket_group``: a name, a number, or None (the default)."""
    if value is None or (isinstance(value, str) and value) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ConfigError(f"{kind}: {what} must be a user or group name (or number), or None, got {value!r}")


def socket_ids(
    owner: str | int | None, group: str | int | None, default_user: str | None, what: str
) -> tuple[int, int]:
    """The uid and gid to give a unix socket (-1: leave as created); ConfigError for an unknown name.

    ``owner`` defaults to ``default_user`` (the workers' ``USER`` when the
    supervisor drops to it), ``group`` to the owner's group.
    """
    owner = default_user if owner is None else owner
    uid, gid = -1, -1
    try:
        if owner is not None:
            entry = pwd.getpwuid(owner) if isinstance(owner, int) else pwd.getpwnam(owner)
            uid, gid = entry.pw_uid, entry.pw_gid
        if group is not None:
            gid = grp.getgrgid(group).gr_gid if isinstance(group, int) else grp.getgrnam(group).gr_gid
    except KeyError:
        unknown = f"user {owner!r}" if uid == -1 and owner is not None else f"group {group!r}"
        raise ConfigError(f"{what}: no {unknown} on this system (socket_owner / socket_group)") from None
    return uid, gid


def bind_unix(path: str, mode: int, what: str, owner: tuple[int, int] = (-1, -1)) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` and ``owner`` (uid, gid; -1 leaves it);
    a stale socket file is replaced."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{what}: {path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # nobody listens: a leftover of an earlier run
            else:
                raise ConfigError(f"{what}: {path} is in use by another process")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)  # before listen(): nobody can connect earlier
        if owner != (-1, -1):
            os.chown(path, *owner)
    except OSError as error:
        sock.close()
        raise ConfigError(f"{what}: cannot listen on {path}: {error.strerror}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int, what: str) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class Service:
    """Base of the front ends listed in ``SRV``."""

    kind = "service"
    max_connections = 500
    """Connections served at once per worker (beyond it, the protocol's refusal)."""
    max_connections_per_address = default_per_address(500)
    """Connections from one client address served at once per worker (TCP; a unix socket's
    clients are not counted: its mode says who may connect)."""
    exempt_hosts: tuple[Network, ...] = ()
    """Networks whose clients are held to ``max_connections`` only (the MTA in front)."""
    socket_owner: str | int | None = None
    """A unix socket's owner (None: ``USER`` when the supervisor drops to it, else the supervisor's)."""
    socket_group: str | int | None = None
    """A unix socket's group (None: the owner's group)."""

    def __init__(
        self,
        scanners: Sequence[Any],
        host: str,
        port: int,
        *,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        socket_owner: str | int | None = None,
        socket_group: str | int | None = None,
    ) -> None:
        self.scanners: tuple[Scanner, ...] = as_scanners([scanners], self.kind)
        self.host, self.port = parse_listen(host, port, self.kind)
        self.socket_mode = check_mode(socket_mode, self.kind)
        self.socket_owner = check_owner(socket_owner, "socket_owner", self.kind)
        self.socket_group = check_owner(socket_group, "socket_group", self.kind)

    def connection_limits(self, max_connections: Any, per_address: Any, exempt_hosts: Any) -> None:
        """Validate and set ``max_connections``, ``max_connections_per_address`` (None: the
        default, half of ``max_connections``) and ``exempt_hosts``, alike for every front end."""
        self.max_connections = check_limit(max_connections, "max_connections", self.kind)
        if per_address is None:
            per_address = default_per_address(self.max_connections)
        self.max_connections_per_address = check_limit(per_address, "max_connections_per_address", self.kind)
        self.exempt_hosts = check_networks(exempt_hosts, "exempt_hosts", self.kind)

    def limits_address(self, address: str) -> bool:
        """Whether connections from ``address`` count against ``max_connections_per_address``."""
        if not address:
            return False  # a unix socket's client
        ip = validators.ip_address(address)
        return ip is None or not validators.address_in(ip, self.exempt_hosts)

    @property
    def unix_path(self) -> str | None:
        """The unix socket's path, or None for TCP."""
        return unix_path(self.host)

    def where(self) -> str:
        """``host:port``, or ``unix:/path``."""
        return self.host if self.unix_path is not None else f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"{self.kind}({self.where()})"

    def check(self, settings: Settings) -> None:
        """Validate what needs the global settings; raise ConfigError."""

    async def start(self, sock: socket.socket, settings: Settings) -> Any:
        """Serve on ``sock`` in the running event loop; returns an object with ``drain()``."""
        raise NotImplementedError

    def bind(self, default_user: str | None = None) -> socket.socket:
        """Create the listening socket (done once, in the supervisor, before forking).

        ``default_user``: the unix socket's owner unless ``socket_owner`` says (the workers' ``USER``).
        """
        path = self.unix_path
        if path is not None:
            ids = socket_ids(self.socket_owner, self.socket_group, default_user, self.describe())
            return bind_unix(path, self.socket_mode, self.describe(), ids)
        return bind_tcp(self.host, self.port, self.describe())
