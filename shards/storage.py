"""Where outputs live: local folders or object-store URIs, opened the same way by every reader.

The job writes its output to a local folder or a URI (``s3://``, ``gs://``, anything
``pyarrow.fs`` opens); the audit and the trainer read it from the same place. Endpoints of
S3-compatible stores and GCS emulators come from the environment, as for the AWS and Google
clients: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (region from ``AWS_DEFAULT_REGION`` /
``AWS_REGION``) and ``STORAGE_EMULATOR_HOST``. This module sits at the bottom of the package graph
so that ``pipeline``, ``manifests`` and ``training`` share one implementation.
"""
from __future__ import annotations

import os
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class StorageError(ValueError):
    """A location that cannot be opened (bad URI, unknown scheme, unreachable filesystem)."""


def has_scheme(source: str) -> bool:
    """True for ``scheme://...`` URIs (s3, gs, file, ...); plain paths have none."""
    return "://" in source


# Where S3 requests go when set, first one wins (the AWS SDKs' names), and the region to sign with.
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
S3_REGION_VARS = ("AWS_DEFAULT_REGION", "AWS_REGION")
# Where gs:// requests go when set (Google's client libraries' name): a GCS emulator or gateway.
GCS_ENDPOINT_VAR = "STORAGE_EMULATOR_HOST"


def filesystem_for(source: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding ``source`` and the path inside it.

    Plain paths (relative ones against the working directory) use the local filesystem.
    """
    if has_scheme(source):
        try:
            scheme = source.split("://", 1)[0].lower()
            if scheme == "s3" and s3_endpoint():
                return _s3_endpoint_filesystem(source)
            if scheme in ("gs", "gcs") and os.environ.get(GCS_ENDPOINT_VAR):
                return _gcs_endpoint_filesystem(source)
            return pafs.FileSystem.from_uri(source)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise StorageError(f"cannot open filesystem for {source!r}: {exc}") from exc
    return pafs.LocalFileSystem(), os.path.abspath(source)


def s3_endpoint() -> str | None:
    """The S3 endpoint URL set in the environment (``AWS_ENDPOINT_URL_S3`` before
    ``AWS_ENDPOINT_URL``), or None for AWS itself."""
    return next((os.environ[v] for v in S3_ENDPOINT_VARS if os.environ.get(v)), None)


def endpoint_settings() -> dict[str, str]:
    """The endpoint and region variables that are set, for Ray workers that do not inherit this
    process's environment (nodes of a cluster joined with ``--address``)."""
    return {v: os.environ[v] for v in (*S3_ENDPOINT_VARS, *S3_REGION_VARS, GCS_ENDPOINT_VAR) if os.environ.get(v)}


def _s3_endpoint_filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    """An S3 filesystem for an S3-compatible store (MinIO, Ceph, moto, ...) at ``s3_endpoint()``.

    Why: pyarrow's ``S3FileSystem()`` ignores the endpoint variables (apache/arrow#49643) and
    whether ``FileSystem.from_uri`` honours them depends on the pyarrow build, so requests
    could go to AWS. Credentials still come from pyarrow's default chain (``AWS_ACCESS_KEY_ID``, ...).
    The path is ``bucket/key``, as ``from_uri`` returns it.
    """
    host, scheme = _host_and_scheme(s3_endpoint(), default_scheme="https")
    region = next((os.environ[v] for v in S3_REGION_VARS if os.environ.get(v)), "us-east-1")
    return pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region=region), bucket_path(source)


def _gcs_endpoint_filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    """A GCS filesystem for the endpoint in ``STORAGE_EMULATOR_HOST`` (an emulator, or a gateway
    that needs no Google credentials), which ``FileSystem.from_uri`` ignores: requests would go
    to Google and fail for want of an OAuth token."""
    host, scheme = _host_and_scheme(os.environ[GCS_ENDPOINT_VAR], default_scheme="http")
    return pafs.GcsFileSystem(endpoint_override=host, scheme=scheme, anonymous=True), bucket_path(source)


def _host_and_scheme(url: str, default_scheme: str) -> tuple[str, str]:
    """``host:port`` and ``http``/``https`` of an endpoint URL (``default_scheme`` when it has none)."""
    parts = urlsplit(url if "://" in url else f"{default_scheme}://{url}")
    return parts.netloc, parts.scheme.lower()


def bucket_path(source: str) -> str:
    """``bucket/key`` of an object store URI, as ``FileSystem.from_uri`` returns it."""
    return unquote(source.split("://", 1)[1].split("?", 1)[0]).rstrip("/")


def uri_prefix(source: str) -> str:
    """What to put before a filesystem path to name it again: ``s3://`` for S3, nothing locally."""
    if not has_scheme(source):
        return ""
    scheme = source.split("://", 1)[0].lower()
    return "" if scheme == "file" else scheme + "://"


def join(root: str, rel: str) -> str:
    """``rel`` below ``root``, a path or a URI (``s3://b/out`` + ``stats.json``)."""
    return f"{str(root).rstrip('/')}/{rel}" if has_scheme(str(root)) else os.path.join(root, rel)


def open_input(location: str) -> BinaryIO:
    """A seekable binary file for reading ``location`` (a path or a URI); ranged reads when remote."""
    fs, path = filesystem_for(str(location))
    try:
        return fs.open_input_file(path)
    except (FileNotFoundError, pa.ArrowException) as exc:
        raise FileNotFoundError(f"cannot open {location}: {exc}") from exc


def open_stream(location: str, buffer_size: int = 1 << 22) -> BinaryIO:
    """A sequential, buffered binary stream of ``location`` (one GET for an object, not one
    ranged request per read as a seekable file makes)."""
    fs, path = filesystem_for(str(location))
    try:
        return fs.open_input_stream(path, compression=None, buffer_size=buffer_size)
    except (FileNotFoundError, pa.ArrowException) as exc:
        raise FileNotFoundError(f"cannot open {location}: {exc}") from exc


def read_bytes(location: str) -> bytes:
    """The whole file, in one sequential read (a GCS emulator stalls on an open-ended range)."""
    with open_stream(location) as handle:
        return handle.read()


def is_file(location: str) -> bool:
    fs, path = filesystem_for(str(location))
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(location: str) -> bool:
    fs, path = filesystem_for(str(location))
    return fs.get_file_info(path).type == pafs.FileType.Directory


def file_size(location: str) -> int | None:
    """The size in bytes, or None when there is no such file."""
    fs, path = filesystem_for(str(location))
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def list_names(folder: str, suffix: str = "") -> list[str]:
    """Sorted names of the files directly in ``folder`` ending in ``suffix`` (none when absent)."""
    fs, path = filesystem_for(str(folder))
    selector = pafs.FileSelector(path, allow_not_found=True)
    names = [os.path.basename(f.path) for f in fs.get_file_info(selector) if f.type == pafs.FileType.File]
    return sorted(n for n in names if n.endswith(suffix))


def read_parquet(location: str, columns: list[str] | None = None,
                 read_dictionary: list[str] | None = None) -> pa.Table:
    """A Parquet file (or some of its columns), local or remote, read whole and decoded on the
    calling thread (see ``pipeline.outdir.OutputDir.read_parquet`` for why not Arrow's pool)."""
    source = pa.BufferReader(read_bytes(location))
    return pq.ParquetFile(source, read_dictionary=read_dictionary).read(columns=columns, use_threads=False)


def read_parquet_schema(location: str) -> pa.Schema:
    return pq.ParquetFile(pa.BufferReader(read_bytes(location))).schema_arrow
