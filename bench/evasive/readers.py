"""The independent readers of the evasive set: what a real mail library makes of each message.

* ``python_email``: Python's own ``email`` package, ``policy=default`` (the modern API:
  ``get_content()`` and ``get_filename()``), not the ``compat32`` parse mailsift starts from;
* ``mime_tools``: Perl's MIME::Tools (Debian's ``libmime-tools-perl``) through
  ``readers.pl``, one process for all messages.

Each gives, per message, a ``Reading``: whether some decoded part is the payload (a zip
that opens and holds ``eicar.com`` with the EICAR string; or, for the hidden-filename
messages, any zip) and the attachment names it sees.  A message that no reader opens is
not an evasion: a client would not open it either.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import io
import json
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
EICAR_SUFFIX = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"


class Reading(NamedTuple):
    eicar: bool
    """A decoded part is a zip whose eicar.com holds the EICAR string."""
    zip: bool
    """A decoded part is a zip that opens (any content)."""
    names: frozenset[str]
    """Every attachment name the reader sees (decoded)."""
    error: str = ""

    def sees(self, name: str) -> bool:
        return any(seen.strip().casefold() == name.casefold() for seen in self.names)


def open_zip(data: bytes) -> dict[str, bytes] | None:
    """The members of ``data`` if it opens as a zip (leading or trailing bytes tolerated, as unzip does)."""
    if b"PK\x03\x04" not in data:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None


def judge(datas: list[bytes], names: set[str], error: str = "") -> Reading:
    eicar = zipped = False
    for data in datas:
        members = open_zip(data)
        if members is None:
            continue
        zipped = True
        eicar = eicar or any(EICAR_SUFFIX in body and body.startswith(b"X5O!") for body in members.values())
    return Reading(eicar, zipped, frozenset(n for n in names if n), error)


def python_email(data: bytes) -> Reading:
    """Python's email package, ``policy=default``: ``get_content()`` of every leaf; its names are
    ``get_filename()`` and the Content-Type ``name`` (``get_param``)."""
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
        datas: list[bytes] = []
        names: set[str] = set()
        for part in message.walk():
            if part.is_multipart():
                continue
            try:
                content = part.get_content()  # type: ignore[attr-defined]
            except (LookupError, ValueError, TypeError, AttributeError, KeyError, UnicodeError):
                content = part.get_payload(decode=True)
            if isinstance(content, str):
                content = content.encode("utf-8", "surrogateescape")
            elif isinstance(content, email.message.Message):
                content = content.as_bytes()
            if isinstance(content, bytes):
                datas.append(content)
            try:
                name = part.get_filename()
            except (LookupError, ValueError, TypeError, AttributeError, IndexError):
                name = None
            if name:
                names.add(str(name))
            other = part.get_param("name")  # the Content-Type name a client may show instead
            if other:
                names.add(str(email.utils.collapse_rfc2231_value(other)))
        return judge(datas, names)
    except Exception as error:  # a reader that crashes recovers nothing
        return Reading(False, False, frozenset(), f"{type(error).__name__}: {error}")


def mime_tools_available() -> bool:
    if not shutil.which("perl"):
        return False
    return subprocess.run(["perl", "-MMIME::Parser", "-e", "1"], capture_output=True, check=False).returncode == 0


def mime_tools(messages: dict[str, bytes]) -> dict[str, Reading]:
    """MIME::Tools' reading of each message (``readers.pl``), by message id."""
    out: dict[str, Reading] = {}
    with tempfile.TemporaryDirectory(prefix="evasive-readers-") as tmp:
        paths = []
        for ident, data in messages.items():
            path = Path(tmp) / f"{ident}.eml"
            path.write_bytes(data)
            paths.append(str(path))
        done = subprocess.run(["perl", str(HERE / "readers.pl"), *paths], capture_output=True, check=True, timeout=600)
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            record = json.loads(line)
            ident = Path(record["file"]).stem
            datas = [base64.b64decode(part["data"]) for part in record["parts"]]
            names = {name for part in record["parts"] for name in part["names"]}
            out[ident] = judge(datas, names, (record.get("error") or "").strip())
    return out
