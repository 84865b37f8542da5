"""Finish one chunk: its shards, its manifest parts and, last, its done file.

Clips are written in a fixed order (source, then span), so a chunk redone after a crash gives the
same shards byte for byte. Training and validation clips go to separate shards whose names say the
split (``shard-NNNNNN-train.tar``, ``shard-NNNNNN-val.tar``), so a reader of one split never reads
the other's bytes. Each kept clip's moments (``shards.stats``) are computed from the
arrays as written and stored in ``moments/chunk-NNNNNN.parquet``; the merged moments of the chunk's
training clips go into the done file, so the run's statistics never read a shard back. The done
file is written only once everything else is in place: a chunk without it is written again
by the next run, and anything it left is replaced.

A kept clip whose record cannot be fetched because it was lost with its node is no verdict on the
clip: the chunk is not written (``ResultsLost`` names the clips, which the scheduler prepares
again). A storage error while writing stops the chunk the same way, for the scheduler to record.
Only a clip whose arrays cannot be written (``write/invalid_sample``) is rejected here.
"""
from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.clip import Clip
from pipeline.faults import raise_if_transient, transient_kind
from pipeline.incomplete import ResultsLost
from pipeline.manifest_writer import RunMeta, clip_row, video_row, write_parts
from pipeline.outdir import SHARDS, OutputDir, done_name
from pipeline.stages.base import error_text
from shards.format import FPS, SHARD_NAME_RE, int16_samples
from shards.split import SPLITS, TRAIN, assign_split, split_group
from shards.stats import DatasetMoments, moments_name, moments_table
from shards.writer import ShardWriter


def clear_chunk_shards(out: OutputDir, chunk: int) -> None:
    """Remove shards a crashed attempt at this chunk may have left (the chunk is not done)."""
    out.remove_temporaries(SHARDS)
    for name in out.list(SHARDS):
        match = SHARD_NAME_RE.match(name.rsplit("/", 1)[-1])
        if match and int(match["chunk"]) == chunk:
            out.remove(name)


def sample_meta(clip: Clip, split: str, meta: RunMeta) -> dict[str, Any]:
    """A sample's JSON. Not its source: a shard does not depend on where the input folder was
    (the manifests record the source of every clip id)."""
    return {
        "clip_id": clip.clip_id, "video_id": clip.video_id,
        "start_s": clip.start_s, "end_s": clip.end_s, "fps": FPS,
        "dataset": clip.dataset, "language": clip.language, "speaker": clip.speaker,
        "split": split, "chunk": clip.chunk, "scores": dict(sorted(clip.scores.items())),
        "audio_shift_frames": int(clip.scores.get("audio_shift_frames", 0)),
        "model_ids": meta.model_ids, "weight_hashes": meta.weight_hashes,
        "random_weights": meta.random_weights,
        "source_fps": clip.info.fps if clip.info else None,
    }


def write_chunk(out: OutputDir, chunk: int, videos: list[Clip], clips: list[Clip],
                fetch: Callable[[Clip], Clip], meta: RunMeta, cfg,
                identities: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write the chunk's outputs; ``fetch(summary)`` returns a kept clip's full record (arrays).
    ``identities``: video id -> identity group (``pipeline.identity``), which splits the videos
    without a speaker; without one, such a video is its own group."""
    clear_chunk_shards(out, chunk)
    val_fraction = float(cfg["split"]["val_fraction"])
    clips = sorted(clips, key=lambda c: (c.source, c.start_s, c.end_s))
    rows = []
    lost: list[str] = []  # kept clips whose records went with their node
    moments: list[tuple[dict[str, str], DatasetMoments]] = []
    target_bytes = int(float(cfg["work"]["shard_target_mb"]) * 2**20)
    writers = {split: ShardWriter(out.local_path(SHARDS), chunk, target_bytes, split) for split in SPLITS}
    with contextlib.ExitStack() as stack:
        for writer in writers.values():
            stack.enter_context(writer)
        for clip in clips:
            group = split_group(clip.speaker, clip.video_id, (identities or {}).get(clip.video_id))
            split = assign_split(group, val_fraction)
            if not clip.kept:
                rows.append(clip_row(clip, split, meta, split_group=group))
                continue
            try:
                full = fetch(clip)
            except Exception as exc:  # noqa: BLE001 - lost with its node, or a broken record
                if transient_kind(exc) is None:
                    clip.reject("write", "invalid_sample", error_text(exc))
                    rows.append(clip_row(clip, split, meta, split_group=group))
                    continue
                lost.append(clip.clip_id)
            if lost:
                continue  # only looking for more lost clips now: this chunk is not written
            try:
                clip_moments = DatasetMoments.of_clip(full.motion, full.audio_feat)
                shard, hashes = writers[split].write(clip.clip_id, full.motion, full.audio_feat,
                                                     int16_samples(full.audio), sample_meta(full, split, meta))
            except Exception as exc:  # noqa: BLE001 - a clip that cannot be written is rejected
                raise_if_transient(exc)  # a storage error is not the clip's
                clip.reject("write", "invalid_sample", error_text(exc))
                rows.append(clip_row(clip, split, meta, split_group=group))
                continue
            rows.append(clip_row(clip, split, meta, shard, hashes, split_group=group))
            moments.append(({"shard": shard, "key": clip.clip_id, "split": split,
                             "dataset": clip.dataset}, clip_moments))
    if lost:
        clear_chunk_shards(out, chunk)
        raise ResultsLost(chunk, lost)
    written = [name for writer in writers.values() for name in writer.written]
    for name in written:
        out.publish(f"{SHARDS}/{name}")

    by_video: dict[str, list[Clip]] = {}
    for clip in clips:
        by_video.setdefault(clip.video_id, []).append(clip)
    videos = sorted(videos, key=lambda v: v.source)
    write_parts(out, chunk, [video_row(v, by_video.get(v.video_id, [])) for v in videos], rows)

    out.write_parquet(moments_name(chunk), moments_table(moments))
    train_moments = DatasetMoments()
    for labels, clip_moments in moments:
        if labels["split"] == TRAIN:
            train_moments.merge(clip_moments)

    done = {**chunk_stats(chunk, videos, clips, written), "model_ids": meta.model_ids,
            "weight_hashes": meta.weight_hashes, "random_weights": meta.random_weights,
            "train_moments": train_moments.to_dict()}
    out.write_bytes(done_name(chunk), json.dumps(done, indent=1, sort_keys=True).encode())
    return done


def chunk_stats(chunk: int, videos: list[Clip], clips: list[Clip], shards: list[str]) -> dict[str, Any]:
    """Counts and per-stage times of a chunk (the content of its done file)."""
    seconds: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    for record in [*videos, *clips]:
        seconds.update(record.timings)
        frames.update(record.frames_in)
    rejections = Counter(f"{c.rejection.stage}/{c.rejection.reason}" for c in clips if c.rejection)
    failures = Counter(f"{v.rejection.stage}/{v.rejection.reason}" for v in videos if v.rejection)
    kept = [c for c in clips if c.kept]
    return {
        "chunk": chunk, "shards": shards,
        "videos": len(videos), "videos_failed": sum(1 for v in videos if v.rejection),
        "clips": len(clips), "kept": len(kept), "rejected": len(clips) - len(kept),
        "video_seconds": sum(v.info.duration_s for v in videos if v.info),
        "kept_seconds": sum(c.duration_s for c in kept),
        "kept_frames": sum(c.n_frames for c in kept),
        "clip_rejections": dict(sorted(rejections.items())),
        "video_failures": dict(sorted(failures.items())),
        "stage_seconds": {k: round(v, 3) for k, v in sorted(seconds.items())},
        "stage_frames": dict(sorted(frames.items())),
    }
