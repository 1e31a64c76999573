"""The files of a DICOM study wherever it lies: a folder, a zip or tar of one, or one file; local or a URI.

A study path is classified once (:func:`container`) by what it is, not what it is called: a directory, or
a file whose first bytes say zip, tar (plain, or gzip / bzip2 / xz compressed) or else one DICOM file.
:func:`study_files` then yields each file's name (relative to the study) and a readable stream, in a fixed
order, so that the same study read from a folder or from an archive of it gives the same series. A folder
on object storage is listed through pyarrow.fs (``storage`` has no listing helper); a zip is opened through
a random-access file (range requests on object storage); a tar is streamed, one member at a time.

Budgets: at most MAX_STUDY_FILES files per study, and ``IngestLimits.max_file_mb`` per file, both checked
from the listing or the archive's member headers before a file's bytes are read. Every failure of the
listing or the archive becomes a RejectError whose detail names no path (paths carry patient names).
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow.fs as pafs

from brainvlp.data import storage
from brainvlp.data.errors import RejectError
from brainvlp.data.limits import MIB, IngestLimits

# A brain MR visit exports a few hundred to a few thousand single-frame files; fMRI or DTI with one file
# per slice and time point reach ~10,000. Twice that is an export of several visits, or not a study.
MAX_STUDY_FILES = 20_000
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: a compressed tar
# What the filesystem, zipfile and tarfile raise on a listing or an archive they cannot read.
ARCHIVE_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError, NotImplementedError)


def container(path: str) -> tuple[str, str]:
    """``(kind, path)``, kind "folder", "zip", "tar" or "file" (one DICOM file)."""
    try:
        fs, inner = storage.filesystem(path)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.Directory:
            return "folder", path
        if info.type != pafs.FileType.File:
            raise RejectError("unreadable_file", "the study's folder or archive does not exist")
        with fs.open_input_file(inner) as stream:
            head = stream.read(512)
    except (*ARCHIVE_ERRORS, ValueError) as exc:  # ValueError: pyarrow's ArrowInvalid for a bad URI
        raise RejectError(
            "unreadable_file", f"the study's path cannot be read ({type(exc).__name__})"
        ) from None
    if head.startswith(_ZIP_MAGIC):
        return "zip", path
    if head.startswith(_COMPRESSED_MAGIC) or head[257:262] == b"ustar":
        return "tar", path
    return "file", path


def _check_count(count: int) -> None:
    if count > MAX_STUDY_FILES:
        raise RejectError("dicom_too_many_files", f"over {MAX_STUDY_FILES} files in the study")


def _check_size(size: int, position: int, limits: IngestLimits) -> None:
    if size > limits.max_file_mb * MIB:
        raise RejectError(
            "file_too_large", f"file {position} of the study: over the {limits.max_file_mb:g} MiB budget"
        )


def study_files(
    kind: str, path: str, limits: IngestLimits, *, wanted: set[str] | None = None
) -> Iterator[tuple[str, BinaryIO]]:
    """``(name, stream)`` for each file of the study (only ``wanted`` names, if given); a stream is valid
    until the next item. Names are relative to the study, "/"-separated."""
    readers = {"folder": _folder_files, "file": _single_file, "zip": _zip_files, "tar": _tar_files}
    try:
        yield from readers[kind](path, limits, wanted)
    except ARCHIVE_ERRORS as exc:
        raise RejectError(
            "dicom_unreadable", f"the study's {kind} cannot be read ({type(exc).__name__})"
        ) from None


def _folder_files(path: str, limits: IngestLimits, wanted: set[str] | None) -> Iterator[tuple[str, BinaryIO]]:
    fs, inner = storage.filesystem(path)
    root = inner.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    files = sorted((i.path[len(root) :], i.size) for i in infos if i.type == pafs.FileType.File)
    _check_count(len(files))
    for position, (name, size) in enumerate(files, start=1):
        if wanted is not None and name not in wanted:
            continue
        _check_size(size, position, limits)
        with fs.open_input_file(root + name) as stream:
            yield name, stream


def _single_file(path: str, limits: IngestLimits, wanted: set[str] | None) -> Iterator[tuple[str, BinaryIO]]:
    fs, inner = storage.filesystem(path)
    name = posixpath.basename(inner)
    if wanted is not None and name not in wanted:
        return
    _check_size(fs.get_file_info(inner).size, 1, limits)
    with fs.open_input_file(inner) as stream:
        yield name, stream


def _zip_files(path: str, limits: IngestLimits, wanted: set[str] | None) -> Iterator[tuple[str, BinaryIO]]:
    fs, inner = storage.filesystem(path)
    with fs.open_input_file(inner) as raw, zipfile.ZipFile(raw) as archive:
        members = sorted((m for m in archive.infolist() if not m.is_dir()), key=lambda m: m.filename)
        _check_count(len(members))
        for position, member in enumerate(members, start=1):
            if wanted is not None and member.filename not in wanted:
                continue
            # file_size is the central directory's claim; zipfile stops reading at it, so it bounds memory.
            _check_size(member.file_size, position, limits)
            yield member.filename, io.BytesIO(archive.read(member))


def _tar_files(path: str, limits: IngestLimits, wanted: set[str] | None) -> Iterator[tuple[str, BinaryIO]]:
    fs, inner = storage.filesystem(path)
    with (
        fs.open_input_stream(inner, compression=None) as raw,
        tarfile.open(fileobj=raw, mode="r|*") as archive,
    ):
        position, left = 0, None if wanted is None else len(wanted)
        for member in archive:
            if left == 0:
                return  # a series' files are all read: the rest of the stream is not needed
            if not member.isfile():
                continue
            position += 1
            _check_count(position)
            if wanted is not None and member.name not in wanted:
                continue
            _check_size(member.size, position, limits)
            left = None if left is None else left - 1
            # Read whole: pydicom seeks back, which a stream cannot; members are single files (~0.5 MB).
            yield member.name, io.BytesIO(archive.extractfile(member).read())
