"""One code path for local paths and filesystem URIs (``s3://``, ``gs://``, ``file://``...) via pyarrow.fs.

Manifests, NIfTI files and reports are read through :func:`read_bytes`, so an export on object storage
ingests exactly like one on local disk. Paths inside a manifest may be relative to the manifest's folder
(:func:`join`); a relative path stays relative to the manifest whatever its scheme.
"""

from __future__ import annotations

import gzip
import posixpath
import re

import pyarrow.fs as pafs

# "s3://", "gs://", "file://", "hdfs://": a scheme of two or more letters (one letter is a Windows drive).
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
_GZIP_MAGIC = b"\x1f\x8b"


def is_uri(path: str) -> bool:
    return bool(_SCHEME.match(path))


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``path`` and the path inside it (a local path needs no scheme)."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), posixpath.abspath(path)


def join(base_dir: str, path: str) -> str:
    """``path`` if absolute or a URI, else ``path`` relative to ``base_dir`` (itself a path or a URI)."""
    if is_uri(path) or posixpath.isabs(path):
        return path
    return posixpath.join(base_dir, path)


def parent(path: str) -> str:
    """The folder of ``path``, keeping a URI's scheme and authority."""
    return posixpath.dirname(path.rstrip("/"))


def read_bytes(path: str, *, gunzip: bool = True) -> bytes:
    """The whole file; gzip content (by its magic number, not its name) is decompressed when ``gunzip``.

    Raises OSError (FileNotFoundError for a missing file) or EOFError / gzip.BadGzipFile for a truncated
    or corrupt gzip stream.
    """
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner, compression=None) as stream:
        data = stream.readall()
    if gunzip and data[:2] == _GZIP_MAGIC:
        return gzip.decompress(data)
    return data
