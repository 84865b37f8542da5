"""Finished work waits on disk, not in memory, until its chunk is written; a rerun takes it back.

A chunk's shards are written in a fixed order once every clip of the chunk is final, so the kept
clips finished earlier must wait somewhere: in Ray's object store that is about 0.6 GB per hour of
kept video (motion, audio features and audio), which a chunk of long videos turns into gigabytes.
Instead, each kept clip's record is fetched as soon as its model call returns, written to
``spill/chunk-NNNNNN/<clip_id>.pkl`` (in the output folder when it is local; for a remote one in
a local folder named after it, ``OutputDir.journal_root``; never uploaded), and its object
released; the chunk writer reads the files back one at a time. Memory then holds one clip's
record at a time, whatever the chunk's hours.

The same folder is the chunk's journal: every video's plan (``plan/<video_id>.pkl``: the probed
video and its candidate clips) and every clip's final summary (``final/<clip_id>.pkl``, kept or
rejected; a kept clip's only after its record) is written there as it arrives. A chunk left
unfinished (a crash, a node gone with the driver, items that failed for infrastructure reasons)
keeps its folder, and the next run over the same output takes back what it holds: only the
videos and clips without a journal entry run again. That is safe because the output's
fingerprint (``pipeline.fingerprint``) refuses a rerun whose settings would give other results.
Files are written under a temporary name and renamed, so an entry is whole or absent. A chunk's
folder goes once its done file is written. A remote output's journal is on the machine the
driver ran on: a rerun from another machine redoes unfinished chunks whole.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline.clip import Clip
from pipeline.outdir import OutputDir

SPILL_DIR = "spill"

log = logging.getLogger(__name__)


def chunk_folder(chunk: int) -> str:
    return f"{SPILL_DIR}/chunk-{chunk:06d}"


def spill_name(chunk: int, clip_id: str) -> str:
    """A kept clip's full record."""
    return f"{chunk_folder(chunk)}/{clip_id}.pkl"


def final_name(chunk: int, clip_id: str) -> str:
    """A final clip's summary (no arrays): kept or rejected."""
    return f"{chunk_folder(chunk)}/final/{clip_id}.pkl"


def plan_name(chunk: int, video_id: str) -> str:
    """A planned video: (video record, its candidate clips)."""
    return f"{chunk_folder(chunk)}/plan/{video_id}.pkl"


@dataclass
class ChunkJournal:
    """What an earlier run finished of one chunk."""
    plans: dict[str, tuple[Clip, list[Clip]]] = field(default_factory=dict)  # video id -> plan
    finals: dict[str, Clip] = field(default_factory=dict)                    # clip id -> summary

    def __len__(self) -> int:
        return len(self.plans) + len(self.finals)


class ClipSpill:
    """Writes finished work on one background thread and reads it back.

    ``fetch(ref)`` turns what the scheduler holds for a kept clip into the clip (``ray.get``).
    ``keep_chunks``: the chunks this run will process; the folders of any others (chunks done
    since, or left by a crash between a done file and its cleanup) are removed."""

    def __init__(self, out: OutputDir, fetch: Callable[[Any], Clip], keep_chunks: Iterable[int] = ()):
        self.root = out.journal_root
        self.remote = out.remote
        self.fetch = fetch
        keep = {Path(chunk_folder(c)).name for c in keep_chunks}
        root = self.root / SPILL_DIR
        if root.is_dir():
            for folder in root.iterdir():
                if folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-spill")

    # -- writing -------------------------------------------------------------------------------

    def put(self, summary: Clip, ref: Any) -> Future:
        """Start writing the kept clip ``ref`` points to, then its summary; the future resolves
        to the record's file name. Once written, nothing refers to the object and Ray frees it."""
        return self.pool.submit(self._write_kept, summary, ref)

    def put_final(self, summary: Clip) -> Future:
        """Journal a rejected clip."""
        return self._journal(final_name(summary.chunk, summary.clip_id), summary)

    def put_plan(self, video: Clip, clips: list[Clip]) -> Future:
        """Journal a planned video with its candidate clips."""
        return self._journal(plan_name(video.chunk, video.video_id), (video, clips))

    def _journal(self, rel: str, value: Any) -> Future:
        """A journal entry that fails to write (a full disk) costs only its redoing by a rerun."""
        future = self.pool.submit(self._dump, rel, value)
        future.add_done_callback(lambda f: f.exception() and log.warning(
            "could not journal %s (a rerun will redo it): %s", rel, f.exception()))
        return future

    def _write_kept(self, summary: Clip, ref: Any) -> str:
        rel = spill_name(summary.chunk, summary.clip_id)
        self._dump(rel, self.fetch(ref))
        self._dump(final_name(summary.chunk, summary.clip_id), summary)  # only once the record is whole
        return rel

    def _dump(self, rel: str, value: Any) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        return rel

    def forget(self, chunk: int, clip_id: str) -> None:
        """A kept clip whose record was lost: it is no longer final."""
        for rel in (final_name(chunk, clip_id), spill_name(chunk, clip_id)):
            (self.root / rel).unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------------

    def get(self, pending: Future) -> Clip:
        """The clip a ``put`` wrote (waits for the write; raises what it raised)."""
        with open(self.root / pending.result(), "rb") as f:
            return pickle.load(f)

    def restored(self, chunk: int) -> ChunkJournal:
        """The journal an earlier run left for ``chunk`` (empty when there is none). A kept clip
        counts as final only with its record beside it."""
        journal = ChunkJournal()
        folder = self.root / chunk_folder(chunk)
        for path in sorted((folder / "plan").glob("*.pkl")):
            video, clips = _load(path)
            journal.plans[video.video_id] = (video, clips)
        for path in sorted((folder / "final").glob("*.pkl")):
            summary = _load(path)
            if summary.kept and not (folder / f"{summary.clip_id}.pkl").is_file():
                continue
            journal.finals[summary.clip_id] = summary
        return journal

    @staticmethod
    def held(chunk: int, clip_id: str) -> Future:
        """What ``put`` would have returned for a kept clip the journal holds."""
        future: Future = Future()
        future.set_result(spill_name(chunk, clip_id))
        return future

    # -- cleanup -------------------------------------------------------------------------------

    def drop_chunk(self, chunk: int) -> None:
        """The chunk is done: its journal and records go."""
        shutil.rmtree(self.root / chunk_folder(chunk), ignore_errors=True)

    def close(self) -> None:
        """Wait for the writes; unfinished chunks keep their folders for the next run."""
        self.pool.shutdown(wait=True)
        root = self.root / SPILL_DIR
        if root.is_dir() and not any(root.iterdir()):
            os.rmdir(root)
        if self.remote and self.root.is_dir() and not any(self.root.iterdir()):
            os.rmdir(self.root)


def _load(path: Path) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)
