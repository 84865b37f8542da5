"""Work units: which input video belongs to which chunk, fixed once and reused by every re-run.

The first run sorts the input videos by source and cuts them into chunks of ``videos_per_chunk``,
recorded in ``OUT/plan/plan-0000.parquet``. A re-run reads every plan file, so a crashed run
resumes with the same chunks and the same shard names. Videos of a grown input set that are in
no plan yet get a new plan file with new chunk indexes. A chunk is done when its done file
exists (see ``pipeline.outdir``); only chunks without one are processed.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.inputs import InputVideo, normalise_uri, video_id
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


def plan_chunks(out: OutputDir, videos: list[InputVideo], videos_per_chunk: int) -> list[Chunk]:
    """Every chunk of every plan, after planning the videos that no plan holds yet."""
    if videos_per_chunk < 1:
        raise ValueError(f"work.videos_per_chunk must be >= 1, got {videos_per_chunk}")
    plans = read_plans(out)
    planned = {vid for table in plans for vid in table.column("video_id").to_pylist()}
    next_chunk = 1 + max((max(t.column("chunk").to_pylist(), default=-1) for t in plans), default=-1)
    new = sorted((v for v in videos if video_id(v.source) not in planned),
                 key=lambda v: normalise_uri(v.source))
    if new:
        rows = [{"video_id": video_id(v.source), "source": v.source, "dataset": v.dataset,
                 "language": v.language, "speaker": v.speaker,
                 "chunk": next_chunk + i // videos_per_chunk} for i, v in enumerate(new)]
        table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)
        out.write_parquet(plan_name(len(plans)), table)
        plans.append(table)
    chunks: dict[int, list[InputVideo]] = {}
    for table in plans:
        for row in table.to_pylist():
            chunks.setdefault(row["chunk"], []).append(
                InputVideo(row["source"], row["dataset"], row["language"], row["speaker"]))
    return [Chunk(index, tuple(vs)) for index, vs in sorted(chunks.items())]
