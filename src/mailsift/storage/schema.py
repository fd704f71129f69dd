"""Every table and index of mailsift's database, on one :data:`metadata`.

This module is the only place that declares a table or an index; the modules
that read and write them import them from here, and the Alembic migrations
beside it (:mod:`mailsift.storage.migrations`, ``versions/``) build exactly
this schema (``tests/unit/storage/test_migrations.py`` compares them, and
``tests/unit/storage/test_schema.py`` finds no table or index declared
anywhere else).  Importing this module alone gives the whole schema, whatever
else was imported before.

=========================  =====================================  ==========================================
table (migration)          indexes and constraints                used by
=========================  =====================================  ==========================================
``greylist`` (0001)        primary key (network, sender,          :mod:`mailsift.storage.db` (greylist state
                           recipient)                             for the ``greylist`` scanner)
``auto_whitelist`` (0001)  primary key network                    :mod:`mailsift.storage.db`
``quarantine`` (0002)      ``ix_quarantine_created``,             :mod:`mailsift.storage.quarantine.index`,
                           ``ix_quarantine_category`` (0002);     :mod:`mailsift.web.quarantine_queries`
                           ``retry_key`` column and
                           ``ix_quarantine_retry_key``
                           (0009_quarantine_retry)
``quarantine_release``     primary key quarantine_id              :mod:`mailsift.storage.quarantine.admin`
(0009_quarantine_retry)                                           (a release claimed before it is sent)
``quarantine_recipient``   ``ix_quarantine_recipient_recipient``  :mod:`mailsift.storage.quarantine.index`,
(0002)                                                            :mod:`mailsift.web.quarantine_queries`
``quarantine_chunk``       primary key (quarantine_id, seq)       :mod:`mailsift.storage.quarantine.dbstore`
(0011_dbquarantine)                                               (``QUARANTINE_STORE = "database"``)
``maillog`` (0003, 0008,   ``ix_maillog_time``,                   :mod:`mailsift.reporting.logline` (writes),
0014_node)                 ``ix_maillog_recipient``,              :mod:`mailsift.reporting.tracking` and
                           ``ix_maillog_sender`` (0003);          :mod:`mailsift.reporting.digest` (read);
                           ``ix_maillog_message_id``,             the 0008 indexes serve tracking's
                           ``ix_maillog_queue_id`` (0008)         searches by Message-ID and queue id
``user_policy`` (0004)     primary key key                        :mod:`mailsift.storage.policies`
``listed`` (0004)          ``uq_listed_entry``,                   :mod:`mailsift.storage.policies`
                           ``ix_listed_owner``
``web_user`` (0005)        unique ``login``                       :mod:`mailsift.web.users`
``web_user_address``       ``ix_web_user_address_address``        :mod:`mailsift.web.users`
(0005)
``web_login_throttle``     primary key key,                       :mod:`mailsift.web.users`
(0005, 0016)               ``ix_web_login_throttle_window_start``
``web_session``            ``ix_web_session_user_id``             :mod:`mailsift.web.users` (server-side
(0010_websessions)                                                web sessions)
``link_action`` (0006,     primary key (quarantine_id,            :mod:`mailsift.reporting.links`
0016)                      recipient, action),
                           ``ix_link_action_action_claimed``
``stats_counter`` (0007,   primary key (period_start, domain,     :mod:`mailsift.reporting.counters`
0014_node)                 verdict, scanner, node)
``poison_attempt`` (0009)   ``ix_poison_attempt_last_seen``        :mod:`mailsift.core.poison` (poison mail:
                                                                  attempts per message key)
``mailsift_leases``        primary key (name, period)             :mod:`mailsift.storage.leases` (once per
(0012_leases)                                                     cluster: digest, expiry, pruning)
``mailsift_secrets``       primary key name                       :mod:`mailsift.storage.secrets` (the web
(0013_secrets)                                                    secret every node reads)
``tempfail_hold``          primary key key,                       :mod:`mailsift.scanners.tempfail` (the
(0015_tempfail)            ``ix_tempfail_hold_last_seen``         ``tempfail(hold=...)`` deferrals per message)
=========================  =====================================  ==========================================

Alembic adds its own ``alembic_version`` table.  Times are Unix seconds
(``Float``) throughout.  A new table or index is declared here *and* given a
migration; the statements that atomically insert, update or claim rows are
:mod:`mailsift.storage.sql`'s.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()
"""The one schema: every table below (and nothing else) is registered on it."""

# --------------------------------------------------------------------------- greylisting (0001)

greylist_table = Table(
    "greylist",
    metadata,
    Column("network", Text, primary_key=True),
    Column("sender", Text, primary_key=True),
    Column("recipient", Text, primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("deferred", Integer, nullable=False),
    Column("passed", Integer, nullable=False),
)
"""One row per (client network, sender, recipient) triplet; times are Unix seconds."""

auto_whitelist_table = Table(
    "auto_whitelist",
    metadata,
    Column("network", Text, primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("passed", Integer, nullable=False),
)
"""Per client network: how many requests passed greylisting (SAGATOR's auto_whitelist)."""

# --------------------------------------------------------------------------- quarantine index (0002)

quarantine_table = Table(
    "quarantine",
    metadata,
    Column("id", Text, primary_key=True),
    Column("created", Float, nullable=False),
    Column("category", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("scanner", Text, nullable=False),
    Column("level", Float, nullable=False),
    Column("name", Text, nullable=False),
    Column("client", Text, nullable=False),
    Column("queue_id", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("released_at", Float, nullable=True),
    Column("released_by", Text, nullable=True),
    Column("released_to", Text, nullable=True),
    # Migration 0009_quarantine_retry: the MTA's retry of a message finds its copy (store.retry_key).
    Column("retry_key", Text, nullable=False, server_default=""),
    Index("ix_quarantine_created", "created"),
    Index("ix_quarantine_category", "category"),
    Index("ix_quarantine_retry_key", "retry_key"),
)
"""One row per quarantined message; times are Unix seconds; ``path`` is relative to the store;
``retry_key`` the sha256 of what stays the same across the MTA's retries (``''`` for older rows)."""

quarantine_release_table = Table(
    "quarantine_release",
    metadata,
    Column("quarantine_id", Text, primary_key=True),
    Column("claimed_by", Text, nullable=False),
    Column("claimed_at", Float, nullable=False),
)
"""A release in progress (0009_quarantine_retry): claimed before the message is sent, removed once
it was recorded or failed; a claim older than the release timeout is a crashed sender's."""

quarantine_recipient_table = Table(
    "quarantine_recipient",
    metadata,
    Column("quarantine_id", Text, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("recipient", Text, nullable=False),
    Index("ix_quarantine_recipient_recipient", "recipient"),
)
"""The envelope recipients of each row, in order (for ``--recipient`` filters)."""

quarantine_chunk_table = Table(
    "quarantine_chunk",
    metadata,
    Column("quarantine_id", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
"""The message of a quarantine entry kept in the database (0011_dbquarantine): the original message
in pieces of at most :data:`mailsift.storage.quarantine.dbstore.CHUNK_SIZE` bytes, ``seq`` 0, 1, 2..."""

# --------------------------------------------------------------------------- per-message log (0003, 0008)

maillog_table = Table(
    "maillog",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("queue_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("reply", Text, nullable=False),
    Column("level", Float, nullable=False),
    Column("name", Text, nullable=False),
    Column("scanner", Text, nullable=False),
    Column("relay_client", Boolean, nullable=False),
    Column("client_address", Text, nullable=False),
    Column("client_name", Text, nullable=False),
    Column("helo", Text, nullable=False),
    Column("elapsed", Float, nullable=False),
    Column("size", Integer, nullable=False),
    Column("sender", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("attachments", Text, nullable=False),
    Column("spam_score", Float, nullable=True),
    Column("spam_required", Float, nullable=True),
    Column("quarantine", Text, nullable=False),
    Column("note", Text, nullable=False),
    # Migration 0014_node: the node that wrote the row ('' for rows older than it).
    Column("node", Text, nullable=False, server_default=""),
    Index("ix_maillog_time", "time"),
    Index("ix_maillog_recipient", "recipient"),
    Index("ix_maillog_sender", "sender"),
    # Migration 0008: message tracking searches by Message-ID and queue id without scanning the log.
    Index("ix_maillog_message_id", "message_id"),
    Index("ix_maillog_queue_id", "queue_id"),
)
"""SAGATOR's ``log_sql``: one row per recipient of each message; ``time`` in Unix seconds,
``attachments`` a JSON list of ``{"name", "size"}``, ``quarantine`` the quarantine ids, comma-separated,
``node`` the node that took the message (``NODE``; ``''`` for rows logged before 0014_node).
Rows older than ``MAILLOG_RETENTION`` (90 days) are deleted by ``quarantine expire`` and ``stats prune``
(``cli/housekeeping.py``)."""

# --------------------------------------------------------------------------- per-user policies and lists (0004)

user_policy_table = Table(
    "user_policy",
    metadata,
    Column("key", Text, primary_key=True),
    Column("settings", Text, nullable=False),
    Column("updated", Float, nullable=False),
)
"""One simcontrol line per key: ``''`` (default), a domain or an address (lower case)."""

listed_table = Table(
    "listed",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", Text, nullable=False),
    Column("list", Text, nullable=False),
    Column("field", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("expires", Float, nullable=True),
    Column("created", Float, nullable=False),
    Column("comment", Text, nullable=False),
    UniqueConstraint("owner", "list", "field", "value", name="uq_listed_entry"),
    Index("ix_listed_owner", "owner"),
)
"""White/black list entries; ``owner`` ``''`` is global; ``expires`` (Unix seconds) NULL is never."""

# --------------------------------------------------------------------------- web users (0005)

web_user_table = Table(
    "web_user",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("login", Text, nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("is_admin", Integer, nullable=False),
    Column("language", Text, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("session_version", Integer, nullable=False),
    Column("created", Float, nullable=False),
)
"""One row per web login; ``login`` is stored lower-case."""

web_user_address_table = Table(
    "web_user_address",
    metadata,
    Column("user_id", Integer, primary_key=True),
    Column("address", Text, primary_key=True),
    Index("ix_web_user_address_address", "address"),
)
"""The addresses (lower-case) each user owns."""

web_login_throttle_table = Table(
    "web_login_throttle",
    metadata,
    Column("key", Text, primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_start", Float, nullable=False),
    Index("ix_web_login_throttle_window_start", "window_start"),  # 0016_prune_indexes
)
"""Checked logins per ``pair:<name>|<client>`` and ``ip:<client>``; ``window_start`` is the time of the
last checked attempt (a key starts over after a quiet window). Claimed atomically before the password check;
keys quiet for a day (or the window, if longer) are deleted by ``cli/housekeeping.py``."""

# --------------------------------------------------------------------------- web sessions (0010_websessions)

web_session_table = Table(
    "web_session",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Integer, nullable=False),
    Column("created", Float, nullable=False),
    Column("seen", Float, nullable=False),
    Index("ix_web_session_user_id", "user_id"),
)
"""One row per logged-in web session; ``id`` is the SHA-256 of the cookie's session id (never the id itself).
Logout deletes the row; a password change or the user's removal deletes all of the user's rows."""

# --------------------------------------------------------------------------- links in notifications (0006)

link_action_table = Table(
    "link_action",
    metadata,
    Column("quarantine_id", Text, primary_key=True),
    Column("recipient", Text, primary_key=True),
    Column("action", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("claimed", Float, nullable=False),
    Column("done_at", Float, nullable=True),
    Index("ix_link_action_action_claimed", "action", "claimed"),  # 0016_prune_indexes
)
"""One row per action taken through a link: ``sending`` while the release runs, then ``done``.
``cli/housekeeping.py`` deletes release rows once no link can be followed (claimed more than
``links.MAX_LIFETIME`` ago); whitelist rows stay (a link adds a sender once, ever)."""

# --------------------------------------------------------------------------- statistics (0007)

stats_table = Table(
    "stats_counter",
    metadata,
    Column("period_start", Integer, primary_key=True),
    Column("domain", Text, primary_key=True),
    Column("verdict", Text, primary_key=True),
    Column("scanner", Text, primary_key=True),
    # Migration 0014_node: each node adds to its own rows ('' for counts older than it).
    Column("node", Text, primary_key=True, server_default=""),
    Column("messages", Integer, nullable=False),
    Column("recipients", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("scan_seconds", Float, nullable=False),
)
"""One row per (interval start in Unix seconds, domain, verdict, scanner, node); the values are sums.
``node`` is the node that counted (``NODE``); ``''`` holds what was counted before 0014_node."""

# --------------------------------------------------------------------------- poison mail (0009_poison)

poison_attempt_table = Table(
    "poison_attempt",
    metadata,
    Column("key", Text, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Index("ix_poison_attempt_last_seen", "last_seen"),
)
"""Content-tied tempfails per message key (:func:`mailsift.core.poison.message_key`): how many
attempts failed, first and last (Unix seconds), the last reason; rows idle past ``expire`` are purged."""

# --------------------------------------------------------------------------- once per cluster (0012_leases)

lease_table = Table(
    "mailsift_leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("period", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("taken_at", Float, nullable=False),
)
"""One row per job done once per period by one node of a cluster (:mod:`mailsift.storage.leases`): the
daily digest, quarantine expiry, statistics pruning.  ``name`` names the job, ``period`` its window
(``2024-05-01T00:00:00Z/86400``), ``holder`` the node that took it, ``taken_at`` when (Unix seconds)."""

# --------------------------------------------------------------------------- shared secrets (0013_secrets)

secret_table = Table(
    "mailsift_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("created", Float, nullable=False),
)
"""Secrets every node of a cluster reads (:mod:`mailsift.storage.secrets`): ``webq``, the web session and
link signing secret; made once by the first node (insert if absent), never changed after."""

# --------------------------------------------------------------------------- tempfail holds (0015_tempfail)

tempfail_hold_table = Table(
    "tempfail_hold",
    metadata,
    Column("key", Text, primary_key=True),
    Column("rule", Text, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Index("ix_tempfail_hold_last_seen", "last_seen"),
)
"""Messages deferred by ``tempfail(hold=...)`` (:mod:`mailsift.scanners.tempfail`): the key is a checksum
of the rule's name, the envelope and the body; first and last attempt (Unix seconds) and how many were
deferred.  Rows idle past ``expire`` are purged, and at most ``max_entries`` are kept."""

__all__ = [
    "auto_whitelist_table",
    "greylist_table",
    "lease_table",
    "link_action_table",
    "listed_table",
    "maillog_table",
    "metadata",
    "poison_attempt_table",
    "quarantine_chunk_table",
    "quarantine_recipient_table",
    "quarantine_release_table",
    "quarantine_table",
    "secret_table",
    "stats_table",
    "tempfail_hold_table",
    "user_policy_table",
    "web_login_throttle_table",
    "web_session_table",
    "web_user_address_table",
    "web_user_table",
]
