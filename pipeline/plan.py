"""Work units: which input video belongs to which chunk, fixed once and reused by every re-run.

The first run sorts the input videos by source and cuts them into chunks of ``videos_per_chunk``,
recorded in ``OUT/plan/plan-0000.parquet``. A re-run reads every plan file, so a crashed run
resumes with the same chunks and the same shard names. Videos of a grown input set that are in
no plan yet get a new plan file with new chunk indexes. A chunk is done when its done file
exists (see ``pipeline.outdir``); only chunks without one are processed.

A plan records each video's id (``pipeline.inputs.identify``) beside its source. A listed video
whose source a plan holds keeps the recorded id, so outputs keep their ids whatever scheme made
them; a video found under a new source with a planned id (the input moved) is not planned again,
and its chunk, if not done, reads it from where it is now.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

from pipeline.inputs import InputVideo, identify, normalise_uri
from pipeline.outdir import OutputDir

PLAN_DIR = "plan"
PLAN_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("dataset", pa.string()),
    ("language", pa.string()),
    ("speaker", pa.string()),
    ("chunk", pa.int32()),
])


@dataclass(frozen=True)
class Chunk:
    index: int
    videos: tuple[InputVideo, ...]


def plan_name(number: int) -> str:
    return f"{PLAN_DIR}/plan-{number:04d}.parquet"


def read_plans(out: OutputDir) -> list[pa.Table]:
    return [out.read_parquet(name)
            for name in out.list(PLAN_DIR) if name.endswith(".parquet")]


@dataclass(frozen=True)
class Plan:
    """Every chunk, and the plan file that adds this run's new videos (None when there are none),
    not yet written: a run that stops before its first chunk leaves the output as it was."""

    chunks: list[Chunk]
    new: pa.Table | None
    number: int  # the new plan file's number

    def write(self, out: OutputDir) -> None:
        if self.new is not None and not out.exists(plan_name(self.number)):
            out.write_parquet(plan_name(self.number), self.new)


def plan_chunks(out: OutputDir, videos: list[InputVideo], videos_per_chunk: int) -> list[Chunk]:
    """Every chunk of every plan, after planning (and writing) the videos no plan holds yet."""
    plan = make_plan(out, videos, videos_per_chunk)
    plan.write(out)
    return plan.chunks


def make_plan(out: OutputDir, videos: list[InputVideo], videos_per_chunk: int) -> Plan:
    """Every chunk of every plan, with the videos no plan holds yet in new chunks (see ``Plan``)."""
    if videos_per_chunk < 1:
        raise ValueError(f"work.videos_per_chunk must be >= 1, got {videos_per_chunk}")
    plans = read_plans(out)
    number = len(plans)
    recorded = {normalise_uri(source): vid for table in plans
                for source, vid in zip(table.column("source").to_pylist(), table.column("video_id").to_pylist())}
    videos = identify(videos, recorded)
    planned = {vid for table in plans for vid in table.column("video_id").to_pylist()}
    next_chunk = 1 + max((max(t.column("chunk").to_pylist(), default=-1) for t in plans), default=-1)
    new = sorted((v for v in videos if v.id not in planned), key=lambda v: normalise_uri(v.source))
    table = None
    if new:
        rows = [{"video_id": v.id, "source": v.source, "dataset": v.dataset,
                 "language": v.language, "speaker": v.speaker,
                 "chunk": next_chunk + i // videos_per_chunk} for i, v in enumerate(new)]
        table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)
        plans.append(table)
    now = {v.id: v.source for v in videos}  # where each listed video is today
    chunks: dict[int, list[InputVideo]] = {}
    for plan in plans:
        for row in plan.to_pylist():
            video = InputVideo(row["source"], row["dataset"], row["language"], row["speaker"], row["video_id"])
            chunks.setdefault(row["chunk"], []).append(replace(video, source=now.get(video.id, video.source)))
    return Plan([Chunk(index, tuple(vs)) for index, vs in sorted(chunks.items())], table, number)
