"""``mailsift serve``: a supervisor and N worker processes sharing the listening sockets.

The supervisor binds every service's socket once (backlog 1024), then forks
the workers; each worker runs one asyncio loop serving every service on the
inherited sockets, and the kernel spreads connections among them.

Signals (to the supervisor):

* ``SIGTERM``/``SIGINT`` — drain: workers stop accepting, finish the
  transactions in progress (up to ``drain_seconds``), then exit.
* ``SIGHUP`` — reload: the config file is loaded and checked again; if it is
  broken, the error is logged and the running workers keep the old config;
  if it is good, new workers start on it and the old ones drain.

A worker that dies unexpectedly is replaced (at most once per second).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from mailsift import config as config_module
from mailsift.config import Config
from mailsift.errors import ConfigError

log = logging.getLogger("mailsift.supervisor")


def prepare_state(config: Config) -> None:
    """Create the state directories the services write into."""
    for path in (config.settings.state_dir, config.settings.spool_dir, config.settings.quarantine_dir):
        os.makedirs(path, mode=0o750, exist_ok=True)


async def _worker_main(config: Config, sockets: dict[tuple[str, int], socket.socket], drain_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor handles reloads
    running = [
        await service.start(sockets[(service.host, service.port)], config.settings) for service in config.services
    ]
    await stop.wait()
    await asyncio.gather(*(server.drain(drain_seconds) for server in running))


def run_worker(config: Config, sockets: dict[tuple[str, int], socket.socket], drain_seconds: float) -> None:
    """The body of a worker process (also usable in-process for tests), on uvloop when installed."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_worker_main(config, sockets, drain_seconds))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory, or None (asyncio's own loop) when uvloop is missing."""
    try:
        import uvloop  # optional: asyncio's own loop works too
    except ImportError:
        return None
    return uvloop.new_event_loop


class Supervisor:
    """Forks and watches the workers; reloads on SIGHUP; drains on SIGTERM."""

    def __init__(self, config: Config, workers: int, drain_seconds: float = 30.0) -> None:
        self.config = config
        self.workers = max(1, workers)
        self.drain_seconds = drain_seconds
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.children: dict[int, Config] = {}
        self._pending: list[Callable[[], None]] = []
        self._stopping = False

    def _bind(self, config: Config) -> None:
        wanted = {(s.host, s.port): s for s in config.services}
        for key, service in wanted.items():
            if key not in self.sockets:
                self.sockets[key] = service.bind()
        for key in list(self.sockets):
            if key not in wanted:
                self.sockets.pop(key).close()

    def _spawn(self, config: Config) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                run_worker(config, self.sockets, self.drain_seconds)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = config
        log.info("worker %d started", pid)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._pending.append(self.reload)
        else:
            self._pending.append(self.stop)

    def reload(self) -> None:
        log.info("SIGHUP: reloading %s", self.config.path)
        try:
            new = config_module.load(self.config.path)
            prepare_state(new)
            self._bind(new)
        except ConfigError as error:
            log.error("reload failed, keeping the running config: %s", error)
            return
        old = list(self.children)
        self.config = new
        for _ in range(self.workers):
            self._spawn(new)
        for pid in old:
            self._kill(pid, signal.SIGTERM)
        log.info("reloaded: %d new workers, %d old ones draining", self.workers, len(old))

    def stop(self) -> None:
        log.info("stopping: draining %d workers (up to %.0f s)", len(self.children), self.drain_seconds)
        self._stopping = True
        for pid in list(self.children):
            self._kill(pid, signal.SIGTERM)

    @staticmethod
    def _kill(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            config = self.children.pop(pid, None)
            if config is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if not self._stopping and config is self.config and code != 0:
                log.error("worker %d exited with %d; starting a new one", pid, code)
                time.sleep(1)
                self._spawn(self.config)

    def run(self) -> int:
        prepare_state(self.config)
        self._bind(self.config)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for _ in range(self.workers):
            self._spawn(self.config)
        log.info(
            "mailsift serving %s with %d workers (pid %d)",
            ", ".join(s.describe() for s in self.config.services),
            self.workers,
            os.getpid(),
        )
        sys.stdout.flush()
        deadline: float | None = None
        while self.children:
            while self._pending:
                self._pending.pop(0)()
            if self._stopping and deadline is None:
                deadline = time.monotonic() + self.drain_seconds + 5
            if deadline is not None and time.monotonic() > deadline:
                for pid in list(self.children):
                    self._kill(pid, signal.SIGKILL)
            self._reap()
            time.sleep(0.1)
        for sock in self.sockets.values():
            sock.close()
        log.info("mailsift stopped")
        return 0
