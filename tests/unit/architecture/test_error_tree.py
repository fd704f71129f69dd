"""One error tree: every exception class mailsift defines is under MailsiftError, as errors.py draws it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator

import pytest

import mailsift
from mailsift import errors, replies
from mailsift.errors import (
    ConfigError,
    ContentError,
    DatabaseError,
    DeliveryError,
    DeliveryRejected,
    MailsiftError,
    ProtocolError,
    RequestRefused,
    ScannerError,
    ScannerTimeout,
    ScannerUnavailable,
    StorageError,
)

SKIPPED = {"mailsift.storage.migrations.env"}  # Alembic's script: runs migrations when imported


def all_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(mailsift.__path__, "mailsift."):
        if info.name not in SKIPPED:
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def mailsift_exceptions() -> set[type[BaseException]]:
    """Every exception class defined in a mailsift module: module attributes, nested and local ones."""
    modules = all_modules()
    found: set[type[BaseException]] = set()
    for name in modules:
        for value in vars(importlib.import_module(name)).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__.startswith("mailsift"):
                found.add(value)
    found.update(c for c in subclasses(BaseException) if c.__module__.startswith("mailsift."))
    return found


def test_every_exception_class_is_under_mailsift_error() -> None:
    found = mailsift_exceptions()
    assert len(found) > 20, "the walk found the classes"  # the tree has more than twenty classes
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, MailsiftError))
    assert outside == []


def test_no_two_exception_classes_share_a_name() -> None:
    by_name: dict[str, list[str]] = {}
    for cls in mailsift_exceptions():
        by_name.setdefault(cls.__name__, []).append(cls.__module__)
    assert {name: modules for name, modules in by_name.items() if len(modules) > 1} == {}


def test_the_docstring_draws_every_public_class() -> None:
    """The tree in errors.py names each class (by its module path outside errors.py)."""
    drawing = errors.__doc__ or ""
    for cls in mailsift_exceptions():
        if cls.__module__ == "mailsift.errors":
            name = cls.__name__
        else:
            name = f"{cls.__module__.removeprefix('mailsift.')}.{cls.__name__}"
        assert re.search(rf"(?<![\w.]){re.escape(name)}\b", drawing), f"{name} is not drawn in errors.py"


@pytest.mark.parametrize(
    ("cls", "content_tied", "reply"),
    [
        (MailsiftError, False, replies.TEMPFAIL),
        (ConfigError, False, replies.TEMPFAIL),
        (ScannerError, False, replies.SCANNER_FAILED),
        (ScannerTimeout, False, replies.SCANNER_TIMEOUT),
        (ScannerUnavailable, False, replies.SCANNER_FAILED),
        (DatabaseError, False, replies.DATABASE_FAILED),
        (ContentError, True, replies.CONTENT_FAILED),
        (DeliveryError, False, replies.NEXT_HOP_UNAVAILABLE),
        (DeliveryRejected, False, replies.NEXT_HOP_REJECTED),
        (StorageError, False, replies.STORAGE_FAILED),
        (ProtocolError, False, replies.BAD_SYNTAX),
        (RequestRefused, False, replies.TEMPFAIL),
    ],
)
def test_each_class_knows_its_reply_and_whose_fault_it_is(
    cls: type[MailsiftError], content_tied: bool, reply: replies.Reply
) -> None:
    assert cls.content_tied is content_tied
    assert cls.reply == reply
    error = cls("x") if cls is not ConfigError else ConfigError("x", filename="f")
    assert error.content_tied is content_tied


def test_representative_classes_outside_errors_py() -> None:
    from mailsift.delivery.smtpclient import ConnectionLost
    from mailsift.scanners.archive import _Stop
    from mailsift.services.milter_protocol import MilterProtocolError
    from mailsift.services.sgfilter_client import DaemonTimeout, DaemonUnreachable, NoVerdict
    from mailsift.storage.quarantine.store import DamagedFile

    assert _Stop.content_tied
    assert issubclass(_Stop, ContentError)
    assert not ConnectionLost.content_tied
    assert ConnectionLost.reply == replies.NEXT_HOP_UNAVAILABLE
    assert issubclass(DamagedFile, StorageError)
    assert not DamagedFile.content_tied
    assert issubclass(MilterProtocolError, ProtocolError)
    assert issubclass(DaemonTimeout, NoVerdict)
    assert DaemonTimeout.reply == replies.SCANNER_TIMEOUT
    assert issubclass(DaemonUnreachable, ScannerUnavailable)


def test_only_the_next_hops_refusal_and_a_peers_protocol_error_answer_5xx() -> None:
    """No internal error answers a permanent failure: every class's own reply is transient but two branches'."""
    for cls in mailsift_exceptions():
        assert issubclass(cls, MailsiftError)
        if issubclass(cls, DeliveryRejected | ProtocolError):
            continue
        assert cls.reply.is_transient, f"{cls.__module__}.{cls.__name__} answers {cls.reply}"
