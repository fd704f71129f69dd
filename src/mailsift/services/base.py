"""What every front end shares: the service description and its listening socket.

A service object is built by the config file (``smtpd(SCANNERS, host, port)``)
and is a plain description until a worker starts it.  ``mail_path`` is the one
Mail → Pipeline → Decision → Disposition path that every front end calls, so
none of them duplicates scanning or delivery logic.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

from mailsift.errors import ConfigError
from mailsift.scanners.base import Scanner, as_scanners
from mailsift.settings import Settings

log = logging.getLogger("mailsift.mail")

LISTEN_BACKLOG = 1024


def check_address(host: Any, port: Any, what: str) -> tuple[str, int]:
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{what}: host must be an address string, got {host!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        raise ConfigError(f"{what}: port must be an integer 0-65535, got {port!r}")
    return host, port


class Service:
    """Base of the front ends listed in ``SRV``."""

    kind = "service"

    def __init__(self, scanners: Sequence[Any], host: str, port: int) -> None:
        self.scanners: tuple[Scanner, ...] = as_scanners([scanners], self.kind)
        self.host, self.port = check_address(host, port, self.kind)

    def describe(self) -> str:
        return f"{self.kind}({self.host}:{self.port})"

    def check(self, settings: Settings) -> None:
        """Validate what needs the global settings; raise ConfigError."""

    async def start(self, sock: socket.socket, settings: Settings) -> Any:
        """Serve on ``sock`` in the running event loop; returns an object with ``drain()``."""
        raise NotImplementedError

    def bind(self) -> socket.socket:
        """Create the listening socket (done once, in the supervisor, before forking)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as error:
            sock.close()
            raise ConfigError(
                f"{self.describe()}: cannot listen on {self.host}:{self.port}: {error.strerror}"
            ) from None
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock
