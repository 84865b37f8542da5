"""Finished clips wait on disk, not in memory, until their chunk is written.

A chunk's shards are written in a fixed order once every clip of the chunk is final, so the kept
clips finished earlier must wait somewhere: in Ray's object store that is about 0.6 GB per hour of
kept video (motion, audio features and audio), which a chunk of long videos turns into gigabytes.
Instead, each kept clip's record is fetched as soon as its model call returns, written to
``spill/chunk-NNNNNN/<clip_id>.pkl`` in the output's staging folder (the output folder itself
when it is local, a local temporary folder when it is remote; never uploaded), and its object
released; the chunk writer reads the files back one at a time. Memory then holds one clip's
record at a time, whatever the chunk's hours. A chunk's files go once its done file is written;
a run starts by removing what a crashed one left (those chunks are redone from scratch).
"""
from __future__ import annotations

import pickle
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from pipeline.clip import Clip
from pipeline.outdir import OutputDir

SPILL_DIR = "spill"


def spill_name(chunk: int, clip_id: str) -> str:
    return f"{SPILL_DIR}/chunk-{chunk:06d}/{clip_id}.pkl"


class ClipSpill:
    """Writes finished clips on one background thread (``put``) and reads them back (``get``).

    ``fetch(ref)`` turns what the scheduler holds for a kept clip into the clip (``ray.get``)."""

    def __init__(self, out: OutputDir, fetch: Callable[[Any], Clip]):
        self.out = out
        self.fetch = fetch
        self.clear()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-spill")

    def put(self, summary: Clip, ref: Any) -> Future:
        """Start writing the kept clip ``ref`` points to; the future resolves to its file's name.
        Once written, nothing refers to the object any more and Ray frees it."""
        return self.pool.submit(self._write, summary.chunk, summary.clip_id, ref)

    def _write(self, chunk: int, clip_id: str, ref: Any) -> str:
        clip = self.fetch(ref)
        rel = spill_name(chunk, clip_id)
        path = self.out.local_path(rel)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(clip, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        return rel

    def get(self, pending: Future) -> Clip:
        """The clip a ``put`` wrote (waits for the write; raises what it raised)."""
        with open(self.out.staging / pending.result(), "rb") as f:
            return pickle.load(f)

    def drop_chunk(self, chunk: int) -> None:
        shutil.rmtree(self.out.staging / f"{SPILL_DIR}/chunk-{chunk:06d}", ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.out.staging / SPILL_DIR, ignore_errors=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.clear()
