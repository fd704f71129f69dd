"""Archives built in memory for tests: zip, tar.gz and 7z (through libarchive) of ``{name: data}``."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import libarchive


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def seven_zip_of(tmp_path: Path, members: dict[str, bytes]) -> bytes:
    path = tmp_path / "archive.7z"
    with libarchive.file_writer(str(path), "7zip") as archive:
        for name, data in members.items():
            archive.add_file_from_memory(name, len(data), data)
    return path.read_bytes()
