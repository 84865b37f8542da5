"""The output folder of a run, local or remote, where every file appears complete or not at all.

Layout::

    OUT/plan/plan-0000.parquet             video -> chunk (pipeline.plan)
    OUT/shards/shard-000123-train[-01].tar kept training clips of chunk 123 (-val: validation)
    OUT/manifests/parts/chunk-000123.{videos,clips}.parquet
    OUT/done/chunk-000123.json             chunk 123 is complete (written last)
    OUT/manifests/videos.parquet, clips.parquet, OUT/stats.json, OUT/run.json
    OUT/fingerprint.json                   the settings and weights that decide the output (pipeline.fingerprint)
    OUT/config.yaml, OUT/config.runs/run-<UTC time>.yaml   the first run's config, each later run's
    OUT/spill/chunk-000123/                finished clips and journal of an unfinished chunk (pipeline.spill;
                                           for a remote output in a local folder, ``journal_root``)

A local folder is written in place through temporary names and renames. For a remote folder
(``s3://``, ``gs://``, anything ``pyarrow.fs`` opens) files are written to a local staging folder
first and uploaded whole; object stores make an upload visible only once it is complete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.inputs import filesystem_for, has_scheme

SHARDS = "shards"
PARTS = "manifests/parts"
DONE = "done"
TMP_SUFFIX = ".tmp"
JOURNAL_ENV = "TH_JOURNAL_DIR"


def done_name(chunk: int) -> str:
    return f"{DONE}/chunk-{chunk:06d}.json"


def part_name(chunk: int, table: str) -> str:
    return f"{PARTS}/chunk-{chunk:06d}.{table}.parquet"


class OutputDir:
    """``root``: a local path or a URI; ``filesystem`` forces the remote behaviour on any
    ``pyarrow.fs`` filesystem, with ``root`` a path inside it."""

    def __init__(self, root: str | os.PathLike, filesystem: pafs.FileSystem | None = None):
        self.root = os.fspath(root)
        self.remote = filesystem is not None or (has_scheme(self.root)
                                                 and not self.root.lower().startswith("file://"))
        if self.remote:
            self.fs, self.base = (filesystem, self.root) if filesystem else filesystem_for(self.root)
            self.staging = Path(tempfile.mkdtemp(prefix="th_out_staging_"))
        else:
            self.fs, self.base = pafs.LocalFileSystem(), filesystem_for(self.root)[1]
            self.staging = Path(self.base)
        self.staging.mkdir(parents=True, exist_ok=True)

    @property
    def journal_root(self) -> Path:
        """Where unfinished chunks keep their records and journal (``pipeline.spill``): the output
        folder itself when it is local; for a remote output, a local folder named after the
        output's URI that outlives the run (on the machine the driver runs on), under
        ``TH_JOURNAL_DIR`` (default ``~/.cache/talkinghead/journals``). Never uploaded."""
        if not self.remote:
            return self.staging
        base = Path(os.environ.get(JOURNAL_ENV) or Path.home() / ".cache" / "talkinghead" / "journals")
        name = hashlib.sha256(f"{self.fs.type_name}:{self.base}".encode()).hexdigest()[:16]
        return base / name

    def __repr__(self) -> str:
        return f"OutputDir({self.root!r})"

    def _remote_path(self, rel: str) -> str:
        return f"{self.base.rstrip('/')}/{rel}"

    def local_path(self, rel: str) -> Path:
        """Where to write ``rel`` before ``publish`` (the final place for a local folder)."""
        path = self.staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, rel: str) -> None:
        """Make a file written at ``local_path(rel)`` visible in the output (upload when remote)."""
        if not self.remote:
            return
        path = self.staging / rel
        self.fs.create_dir(os.path.dirname(self._remote_path(rel)), recursive=True)
        with open(path, "rb") as src, self.fs.open_output_stream(self._remote_path(rel)) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        path.unlink()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically (temporary name then rename, or one upload)."""
        path = self.local_path(rel)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.publish(rel)

    def read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            return (self.staging / rel).read_bytes()
        with self.fs.open_input_stream(self._remote_path(rel)) as f:
            return f.read()

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def read_parquet(self, rel: str, dictionary: tuple[str, ...] = ()) -> pa.Table:
        """The whole Parquet file, read by ``ParquetFile`` rather than ``pq.read_table``: the
        latter's dataset scanner, given an in-memory source, can leave work on Arrow's threads
        after it returns, and when the process exits meanwhile it aborts (apache/arrow#33975),
        which failed job drivers that had written everything (SIGABRT in about a third of
        short-lived processes here; none with ``ParquetFile``). It also decodes on the calling
        thread, so no work is left on Arrow's pool at all: with the pool, one process in 12 of a
        loaded test run still aborted at exit (manifests are small; one thread reads them fast).
        ``dictionary``: string columns to read dictionary-encoded."""
        parquet = pq.ParquetFile(pa.BufferReader(self.read_bytes(rel)), read_dictionary=list(dictionary) or None)
        return parquet.read(use_threads=False)

    def exists(self, rel: str) -> bool:
        if not self.remote:
            return (self.staging / rel).is_file()
        return self.fs.get_file_info(self._remote_path(rel)).type == pafs.FileType.File

    def list(self, rel_dir: str) -> list[str]:
        """Files directly under ``rel_dir`` as sorted relative names (temporary files left out)."""
        if not self.remote:
            folder = self.staging / rel_dir
            names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        else:
            selector = pafs.FileSelector(self._remote_path(rel_dir), allow_not_found=True)
            names = [os.path.basename(f.path) for f in self.fs.get_file_info(selector)
                     if f.type == pafs.FileType.File]
        return sorted(f"{rel_dir}/{n}" for n in names if not n.endswith(TMP_SUFFIX))

    def remove(self, rel: str) -> None:
        if not self.remote:
            (self.staging / rel).unlink(missing_ok=True)
        elif self.exists(rel):
            self.fs.delete_file(self._remote_path(rel))

    def remove_temporaries(self, rel_dir: str) -> None:
        """Delete what a crashed run left under temporary names (never visible as results)."""
        folder = self.staging / rel_dir
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.endswith(TMP_SUFFIX):
                    path.unlink(missing_ok=True)

    def open_local(self, rel: str) -> Path:
        """A local path to read ``rel`` from (downloaded to the staging folder when remote)."""
        if not self.remote:
            return self.staging / rel
        path = self.local_path(rel)
        with self.fs.open_input_stream(self._remote_path(rel)) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        return path

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.staging, ignore_errors=True)
