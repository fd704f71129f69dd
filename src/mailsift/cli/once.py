"""Once per cluster for the scheduled commands (``report``, ``quarantine expire``, ``stats prune``).

Every node may run the same cron line: the command takes the job's lease for the
period in the shared ``DATABASE`` (:mod:`mailsift.storage.leases`) and does the work
only if it got it; otherwise it says ``already done by <node> at <time>`` (on stderr and
in the log) and exits 0.  ``--force`` runs anyway (and takes the lease).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import click

from mailsift.cli.common import Duration
from mailsift.services.server import node_name
from mailsift.settings import Settings
from mailsift.storage import leases

log = logging.getLogger("mailsift.lease")

FORCE_HELP = "Run even if another node (or this one) already did this job in this period."


def force_option(function: click.decorators.FC) -> click.decorators.FC:
    """The ``--force`` option of a once-per-cluster command."""
    return click.option("--force", is_flag=True, help=FORCE_HELP)(function)


def every_option(default: str, job: str) -> Callable[[click.decorators.FC], click.decorators.FC]:
    """The ``--every`` option of a once-per-cluster command: the period, ``default`` unless given;
    ``job`` is the verb its help names (``expire``, ``prune``)."""
    return click.option(
        "--every",
        type=Duration(),
        default=default,
        show_default=True,
        help=f"Once per cluster: {job} at most once per this period on all nodes sharing DATABASE.",
    )


def take(settings: Settings, name: str, length: float, force: bool, now: float | None = None) -> leases.Lease | None:
    """The lease of job ``name`` for the period of ``length`` seconds holding ``now``, or None (already done:
    said on stderr and in the log).  DatabaseError if the database fails."""
    database = settings.require_database()
    moment = time.time() if now is None else now
    period = leases.period_of(moment, length)
    lease = database.call(leases.take, name, period, node_name(settings.node), moment, force)
    if lease.ours:
        log.info("%s: lease for %s taken by %s%s", name, period, lease.holder, " (--force)" if force else "")
        return lease
    done = f"already done by {lease.holder} at {leases.when(lease.taken_at)}"
    line = f"{name}: {done} (period {lease.period}); --force runs it again"
    log.info("%s", line)
    click.echo(f"mailsift: {line}", err=True)
    return None


def give_back(settings: Settings, lease: leases.Lease) -> None:
    """Drop ``lease``: its work failed before anything was done (another node or a retry may do it)."""
    try:
        settings.require_database().call(leases.give_back, lease)
    except Exception as error:  # noqa: BLE001 - the failure being reported matters more
        log.warning("%s: could not give back the lease for %s: %s", lease.name, lease.period, error)
