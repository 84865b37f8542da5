"""The input videos of a run, and the ids that name them.

An input spec is one of:

* a folder (local, ``file://``, ``s3://``, ``gs://``): every video file below it, recursively
  (extensions in ``VIDEO_EXTENSIONS``, any case), sorted by path;
* a ``.txt`` list: one path or URI per line, blank lines and ``#`` comments ignored;
* a ``.csv`` or ``.parquet`` table with a ``path`` column (or ``source`` / ``url``) and optional
  ``dataset``, ``language`` and ``speaker`` columns that are carried into the manifests.

Relative paths inside a list resolve against the folder holding the list, so a list travels
with its videos. Every filesystem goes through ``pyarrow.fs``, so anything it can open works.

A video's id does not depend on where the input lives: ``content_id`` is a uuid5 of the file's
size and a sha256 of its first 256 KiB, so moving ``/data`` to ``/mnt/data`` or to
``s3://`` names the same videos. The plan
(``pipeline.plan``) records each video's id with its source; a re-run takes the recorded id of a
source it has seen, so only new files are read to be identified, and outputs written when ids
were ``video_id`` (a uuid5 of the normalised source URI, still used for records that were never
planned) keep their ids. ``clip_id`` is a uuid5 of the video id and the span in whole milliseconds.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import posixpath
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shards import storage
from shards.storage import (  # noqa: F401 - re-exported for the job's modules
    GCS_ENDPOINT_VAR, S3_ENDPOINT_VARS, S3_REGION_VARS, StorageError, endpoint_settings, has_scheme,
    s3_endpoint)
from shards.storage import uri_prefix as _uri_prefix

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
LIST_EXTENSIONS = (".txt", ".csv", ".parquet")
SOURCE_COLUMNS = ("path", "source", "url")  # first one present names the video
OPTIONAL_COLUMNS = ("dataset", "language", "speaker")


class InputError(ValueError):
    """The input spec cannot be turned into a list of videos (the message says why)."""


@dataclass(frozen=True)
class InputVideo:
    """One video to process: where it is, plus the labels carried into the manifests."""

    source: str
    dataset: str | None = None
    language: str | None = None
    speaker: str | None = None
    id: str | None = None  # set by the plan (``identify``)

    @property
    def video_id(self) -> str:
        """The id the plan gave this video; a video never planned has its source's ``video_id``."""
        return self.id or video_id(self.source)


# ---------------------------------------------------------------------------------------------
# URIs and filesystems: ``shards.storage``, shared with the audit and the trainer


def filesystem_for(source: str) -> tuple[pafs.FileSystem, str]:
    """``shards.storage.filesystem_for``, failing with an ``InputError`` for the job's inputs."""
    try:
        return storage.filesystem_for(source)
    except StorageError as exc:
        raise InputError(str(exc)) from exc


def normalise_uri(source: str) -> str:
    """A canonical URI for ``source``: local paths become absolute ``file://`` URIs.

    Remote URIs keep their text, with the scheme lower-cased and duplicate slashes in the
    path collapsed, so ``s3://b/x//y.mp4`` and ``S3://b/x/y.mp4`` name the same video.
    """
    if has_scheme(source):
        scheme, rest = source.split("://", 1)
        scheme = scheme.lower()
        if scheme == "file":  # file:///p or file://host/p, maybe percent-encoded
            path = unquote(rest if rest.startswith("/") else "/" + rest.partition("/")[2])
            return Path(os.path.normpath(path)).as_uri()
        head, sep, tail = rest.partition("/")
        return f"{scheme}://{head}{sep}{posixpath.normpath(tail) if tail else ''}"
    return Path(os.path.abspath(source)).as_uri()


def video_id(source: str) -> str:
    """uuid5 (URL namespace) of the normalised source URI: where the video is, not what it is."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, normalise_uri(source)))


FINGERPRINT_BYTES = 256 * 1024  # read from the start of a file to identify it
IDENTIFY_THREADS = 16  # files read at once (object stores answer slowly, in parallel)


def content_id(source: str) -> str:
    """uuid5 of ``"content:<size>:<sha256 of the first 256 KiB>"``: the same bytes give the same id
    wherever they are. One sequential read per file (random access on GCS through pyarrow hung in
    our tests). Two different files that shared size and first 256 KiB would be listed as copies:
    still two videos (``identify``). Raises ``InputError`` when the file cannot be read."""
    fs, path = filesystem_for(source)
    try:
        size = fs.get_file_info(path).size
        with fs.open_input_stream(path) as f:
            digest = hashlib.sha256(f.read(min(size, FINGERPRINT_BYTES)))
    except (OSError, pa.ArrowException, TypeError) as exc:
        raise InputError(f"cannot read input video {source}: {exc}") from exc
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"content:{size}:{digest.hexdigest()}"))


def identify(videos: list[InputVideo], recorded: dict[str, str] | None = None) -> list[InputVideo]:
    """``videos`` with their ids: the id ``recorded`` for their normalised source (a plan's), else
    their ``content_id``. Files of identical content stay separate videos, as listed: the first
    (by normalised source) takes the content id, the others ``uuid5("<content id>:copy:<n>")``,
    so a moved folder gives its copies the same ids again."""
    recorded = recorded or {}
    unknown = sorted({normalise_uri(v.source): v.source for v in videos
                      if normalise_uri(v.source) not in recorded}.items())
    with ThreadPoolExecutor(IDENTIFY_THREADS) as pool:
        found = list(pool.map(content_id, [source for _, source in unknown]))
    listed = {normalise_uri(v.source) for v in videos}
    taken = {vid for uri, vid in recorded.items() if uri in listed}  # a moved file takes its id back
    ids = dict(recorded)
    next_copy: dict[str, int] = {}  # content id -> the copy number to try next (every lower one is taken)
    for (uri, _), vid in zip(unknown, found):
        n = next_copy.get(vid, 0)
        candidate = _copy_id(vid, n)
        while candidate in taken:
            n += 1
            candidate = _copy_id(vid, n)
        next_copy[vid] = n + 1
        taken.add(candidate)
        ids[uri] = candidate
    return [replace(video, id=ids[normalise_uri(video.source)]) for video in videos]


def _copy_id(content: str, n: int) -> str:
    """The id of the n-th copy of a content (the 0th is the content id itself)."""
    return content if n == 0 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"{content}:copy:{n}"))


def span_ms(seconds: float) -> int:
    """Seconds to whole milliseconds, halves rounded up, as used in clip ids.

    Rounds the decimal text of the float (``repr``), so 16.2505 s is 16251 ms although the
    nearest binary float lies just below it.
    """
    return int((Decimal(repr(float(seconds))) * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def clip_id(video: str, start_s: float, end_s: float) -> str:
    """uuid5 of ``"{video}:{start_ms}:{end_ms}"``, ``video`` being the video's id: spans equal to
    the millisecond share an id."""
    key = f"{video}:{span_ms(start_s)}:{span_ms(end_s)}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


# ---------------------------------------------------------------------------------------------
# Listing


def list_inputs(spec: str | os.PathLike) -> list[InputVideo]:
    """The videos named by ``spec`` (a folder or a .txt/.csv/.parquet list); see the module doc.

    Duplicated sources are kept once (the first occurrence, with its labels). Raises
    ``InputError`` for a missing spec, an empty folder or list, a table without a source
    column, or a list that cannot be read.
    """
    spec = os.fspath(spec)
    fs, path = filesystem_for(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input spec not found: {spec}")
    if info.type == pafs.FileType.Directory:
        videos = _list_folder(fs, path, _uri_prefix(spec))
        if not videos:
            raise InputError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {spec}")
    else:
        suffix = posixpath.splitext(path)[1].lower()
        if suffix not in LIST_EXTENSIONS:
            raise InputError(f"input spec must be a folder or a {'/'.join(LIST_EXTENSIONS)} list, got {spec}")
        videos = _read_list(fs, path, suffix, spec)
        if not videos:
            raise InputError(f"the input list {spec} names no videos")
    return _deduplicate(videos)


def _list_folder(fs: pafs.FileSystem, path: str, prefix: str) -> list[InputVideo]:
    selector = pafs.FileSelector(path, recursive=True)
    names = sorted(
        f.path for f in fs.get_file_info(selector)
        if f.type == pafs.FileType.File and f.path.lower().endswith(VIDEO_EXTENSIONS)
    )
    return [InputVideo(source=prefix + name) for name in names]


def _read_list(fs: pafs.FileSystem, path: str, suffix: str, spec: str) -> list[InputVideo]:
    try:
        if suffix == ".parquet":
            table = pq.read_table(path, filesystem=fs)
            columns, rows = table.column_names, table.to_pylist()
        else:
            with fs.open_input_stream(path) as f:
                text = f.read().decode("utf-8-sig")
            if suffix == ".txt":
                columns, rows = ["path"], [{"path": line} for line in text.splitlines()]
            else:  # csv: every cell stays text, so a speaker "007" is not turned into 7
                reader = csv.DictReader(io.StringIO(text))
                rows = list(reader)
                columns = [c.strip() for c in reader.fieldnames or []]
                rows = [{(k or "").strip(): v for k, v in row.items()} for row in rows]
    except (OSError, UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        raise InputError(f"cannot read input list {spec}: {exc}") from exc

    source_col = next((c for c in SOURCE_COLUMNS if c in columns), None)
    if source_col is None:
        raise InputError(
            f"input list {spec} has no {' / '.join(SOURCE_COLUMNS)} column "
            f"(columns: {', '.join(columns) or 'none'})")
    base_dir = posixpath.dirname(path)
    prefix = _uri_prefix(spec)
    videos = []
    for row in rows:
        entry = _text(row.get(source_col)) or ""
        if not entry or entry.startswith("#"):
            continue
        labels = {c: _text(row.get(c)) for c in OPTIONAL_COLUMNS}
        videos.append(InputVideo(source=_resolve(entry, base_dir, prefix), **labels))
    return videos


def _text(value: object) -> str | None:
    """A cell as stripped text; empty cells and nulls become None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _resolve(entry: str, base_dir: str, prefix: str) -> str:
    """A list entry as a source: URIs and absolute paths as given, others under the list's folder."""
    if has_scheme(entry):
        return entry
    if prefix:  # the list is remote: relative entries live beside it on the same filesystem
        return prefix + posixpath.normpath(posixpath.join(base_dir, entry))
    return os.path.normpath(os.path.join(base_dir, entry))


def _deduplicate(videos: list[InputVideo]) -> list[InputVideo]:
    seen: set[str] = set()
    unique = []
    for video in videos:
        key = normalise_uri(video.source)
        if key in seen:
            log.warning("input %s is listed more than once; keeping the first entry", video.source)
            continue
        seen.add(key)
        unique.append(video)
    return unique
