"""The ``mailsift`` command: serve, check-config, scan."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping

import click

from mailsift import __version__
from mailsift import config as config_module
from mailsift.config import Config
from mailsift.errors import ConfigError
from mailsift.mail import Envelope, Mail
from mailsift.pipeline import Pipeline
from mailsift.result import Disposition

CONFIG_HELP = "Config file (Python, SAGATOR style). Default: the bundled config (loopback, local Maildir)."


def _load(path: str | None) -> Config:
    try:
        return config_module.load(path or config_module.DEFAULT_CONFIG)
    except ConfigError as error:
        click.echo(f"mailsift: config error: {error}", err=True)
        sys.exit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("mail.log", "aiosmtpd"):  # aiosmtpd logs every command at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailsift")
def main() -> None:
    """mailsift: a mail content-filtering gateway (SAGATOR's heir).

    An MTA hands it every message; it runs the scanners of the config file's
    SCANNERS and delivers, tags, rejects, drops or quarantines, answering the
    MTA only once the message is safe downstream or on disk.
    """


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option(
    "-w", "--workers", type=click.IntRange(1, 256), default=None, help="Worker processes. Default: number of cores."
)
@click.option("--drain-seconds", type=float, default=30.0, show_default=True, help="On SIGTERM, time to finish mail.")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
def serve(config_path: str | None, workers: int | None, drain_seconds: float, log_level: str) -> None:
    """Run the services of SRV (e.g. smtpd on 127.0.0.1:10024) until stopped.

    SIGTERM drains open sessions and exits; SIGHUP reloads the config (a broken
    new config is reported and the running one kept).
    """
    from mailsift.supervisor import Supervisor

    _setup_logging(log_level)
    config = _load(config_path)
    if not config.services:
        click.echo(f"mailsift: {config.path}: SRV lists no services; nothing to serve", err=True)
        sys.exit(2)
    try:
        code = Supervisor(config, workers or os.cpu_count() or 1, drain_seconds).run()
    except ConfigError as error:
        click.echo(f"mailsift: {error}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.command("check-config")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def check_config(config_path: str | None) -> None:
    """Load the config, print its scanner tree and services; exit 2 if it is broken."""
    config = _load(config_path)
    click.echo(f"config: {config.path}")
    click.echo(f"state directory: {config.settings.state_dir}")
    click.echo("SCANNERS:")
    for line in Pipeline(config.scanners).tree():
        click.echo(f"  {line}")
    click.echo("SRV:")
    for service in config.services:
        click.echo(f"  {service.describe()}")
        for line in Pipeline(service.scanners).tree():
            click.echo(f"    {line}")
    click.echo("config OK")


def _message_files(paths: tuple[str, ...]) -> Iterator[str]:
    for path in paths:
        if path == "-" or not os.path.isdir(path):
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield os.path.join(folder, name)


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option("--sender", default="", help="Envelope sender to assume.")
@click.option("--recipient", "recipients", multiple=True, help="Envelope recipient to assume (repeatable).")
@click.argument("paths", nargs=-1, required=True)
def scan(
    config_path: str | None, as_json: bool, sender: str, recipients: tuple[str, ...], paths: tuple[str, ...]
) -> None:
    """Run SCANNERS offline on message files (a file, a directory, or - for stdin).

    Prints one line per message (with --json: an object with file, action,
    level, name, scanner). Nothing is delivered or quarantined. Exit status: 0
    if every message would be delivered clean, 1 if anything was detected, 2 on
    an error (unreadable file, scanner failure, broken config).
    """
    config = _load(config_path)
    pipeline = Pipeline(config.scanners)
    status = 0
    for path in _message_files(paths):
        envelope = Envelope(sender=sender, recipients=list(recipients), protocol="FILE")
        try:
            if path == "-":
                mail = Mail(envelope, sys.stdin.buffer.read())
            else:
                mail = Mail(envelope, path=path)
        except OSError as error:
            _report(as_json, path, {"action": "error", "error": error.strerror or str(error)})
            status = 2
            continue
        decision = asyncio.run(pipeline.evaluate(mail))
        result = decision.result
        record = {
            "action": decision.disposition.value,
            "level": round(result.level, 4),
            "name": result.name,
            "scanner": result.scanner,
            "detail": result.detail,
            "quarantine": list(decision.quarantine),
            "headers": [f"{h.name}: {h.value}" for h in decision.headers],
            "subject_prefix": decision.subject_prefix,
            "reply": decision.reply.line(),
        }
        _report(as_json, path, record)
        if decision.disposition is Disposition.TEMPFAIL:
            status = 2
        elif (result.detected or decision.disposition is not Disposition.DELIVER) and status == 0:
            status = 1
    sys.exit(status)


def _report(as_json: bool, path: str, record: Mapping[str, object]) -> None:
    if as_json:
        click.echo(json.dumps({"file": path, **record}, ensure_ascii=False))
        return
    if record["action"] == "error":
        click.echo(f"{path}: error: {record['error']}")
        return
    name = f" {record['name']}" if record["name"] else ""
    scanner = f" ({record['scanner']})" if record["scanner"] else ""
    click.echo(f"{path}: {record['action']} level={record['level']}{name}{scanner}")


if __name__ == "__main__":
    main()
