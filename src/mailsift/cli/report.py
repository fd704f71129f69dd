"""``mailsift report --since 24h``: send each user the digest of their quarantined and rejected mail.

Meant for a daily cron line or systemd timer (SAGATOR's ``reporter.py``).
The report's templates, filters and groups come from the config's
``reporter(...)`` (:mod:`mailsift.reporting.digest`; defaults without one); the links'
base URL from ``--url``, else ``reporter(webq=...)``, else the config's
``webq(host, port)`` service.  ``--dry-run`` prints the reports instead of
sending them, as a person reads them: the headers decoded, the body as text.

Once per cluster: every node may run the same cron line; the first to take the
report's lease for the window (``--since``, aligned: the UTC day for 24h) in the
shared ``DATABASE`` sends, the others say "already done by <node> at <time>"
(:mod:`mailsift.cli.once`).  ``--force`` sends anyway.

Exit status: 0 done, 1 a report could not be sent, 2 a usage or config error.
"""

from __future__ import annotations

import asyncio
import email.policy
import sys
import time
from email.parser import BytesParser
from typing import Any

import click

from mailsift.cli import once
from mailsift.cli.common import Duration, config_option, fail, load_config, printable_lines
from mailsift.config import Config
from mailsift.delivery.next_hop import resolve
from mailsift.errors import MailsiftError
from mailsift.reporting import links
from mailsift.reporting.digest import (
    LinkMaker,
    SendReport,
    build_reports,
    collect,
    fully_qualified,
    render,
    reporter,
    send,
)
from mailsift.storage.quarantine.admin import ADMIN_RELEASE


def find_reporter(config: Config) -> reporter:
    """The config's ``reporter(...)`` (in ``SRV``), or the defaults."""
    found = getattr(config, "reporter", None)
    if isinstance(found, reporter):
        return found
    for service in (*config.services, *config.daemons):
        if isinstance(service, reporter):
            return service
    return reporter()


def _webq(config: Config) -> Any:
    return next((s for s in config.services if getattr(s, "kind", "") == "webq"), None)


def base_url(config: Config, settings_url: str | None, option: str | None) -> str | None:
    """``--url``, else ``reporter(webq=...)``, else ``http://<webq host>:<port>``."""
    if option:
        return option.rstrip("/")
    if settings_url:
        return settings_url.rstrip("/")
    service = _webq(config)
    if service is None:
        return None
    host = str(service.host)
    if host in ("0.0.0.0", "::", ""):
        host = config.settings.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{service.port}"


def readable(data: bytes) -> str:
    """A report as a person reads it: each header decoded (RFC 2047), then the body's text."""
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    lines = [f"{name}: {value}" for name, value in message.items()]
    body = message.get_content() if message.get_content_maintype() == "text" else message.get_payload()
    return "\n".join(lines) + "\n\n" + str(body).replace("\r\n", "\n")


@click.command("report")
@config_option
@click.option(
    "--since", type=Duration(), default="24h", show_default=True, help="Report mail of this last period (24h, 7d)."
)
@click.option("--url", help="Base URL of the web quarantine for the links, like https://mail.example.com/webq.")
@click.option("--dry-run", is_flag=True, help="Print the reports instead of sending them.")
@once.force_option
def report_command(config_path: str | None, since: float, url: str | None, dry_run: bool, force: bool) -> None:
    """Send each user a summary of their quarantined and rejected mail, with one-click links."""
    config = load_config(config_path)
    if url is not None and not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--url")
    settings = config.settings
    if settings.database is None:
        fail("the config has no DATABASE")
    click.get_current_context().call_on_close(settings.database.dispose)
    digest = find_reporter(config)
    base = base_url(config, digest.webq, url)
    if base is None:
        fail("no base URL for the links: give --url https://host/webq, reporter(webq=...) or a webq() service")
    if settings.smtp_server is None and not dry_run:
        fail("no SMTP_SERVER to send the reports through")
    try:
        secret_file = getattr(_webq(config), "secret_file", None)
        key = links.secret(settings.state_dir, secret_file, settings.database)
    except (OSError, ValueError, MailsiftError) as error:
        fail(f"cannot read or create the web secret: {error}")
    now = time.time()
    start = now - since
    lease = None
    if not dry_run:
        try:
            lease = once.take(settings, f"report --since {int(since)}", since, force, now)
        except MailsiftError as error:
            fail(error.message, 1)
        if lease is None:
            return
    try:
        entries = settings.database.call(collect, start, now)
    except MailsiftError as error:
        if lease is not None:
            once.give_back(settings, lease)
        fail(error.message, 1)
    service = _webq(config)  # webq(admin_release=...): no release link for what users may not release
    admin_release = service.config.admin_release if service is not None else ADMIN_RELEASE
    whitelist_links = service is None or "white" in service.config.lists_in_use
    maker = LinkMaker(links.LinkSigner(key), str(base), digest.link_lifetime, now, admin_release, whitelist_links)
    reports = build_reports(entries, digest)
    hostname = fully_qualified(settings.hostname)  # never postmaster@localhost
    messages = [
        (
            r.to,
            render(
                r,
                digest,
                since=start,
                links=maker,
                hostname=hostname,
                quarantine_dir=settings.quarantine_dir,
                database=settings.database,
            ),
        )
        for r in reports
    ]
    if dry_run:
        for address, data in messages:
            click.echo(f"==== report to <{address}>")
            click.echo(printable_lines(readable(data).rstrip("\n")))
        click.echo(f"report: {len(messages)} report(s) not sent (--dry-run)", err=True)
        return
    outcome = asyncio.run(_send(messages, settings.smtp_server, settings.state_dir))
    if lease is not None and outcome.failed and not outcome.sent:
        once.give_back(settings, lease)  # nothing went out: another node or a retry may send them
    for address, problem in outcome.failed:
        click.echo(f"mailsift: report to <{address}> not sent: {problem}", err=True)
    click.echo(f"report: {len(outcome.sent)} report(s) sent, {len(outcome.failed)} failed", err=True)
    sys.exit(1 if outcome.failed else 0)


async def _send(messages: list[tuple[str, bytes]], target: Any, state_dir: str) -> SendReport:
    delivery = resolve(target, state_dir)
    try:
        return await send(messages, delivery)
    finally:
        await delivery.close()
