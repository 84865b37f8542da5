"""Manifest rows and Parquet files: one row per input video and one per candidate clip.

Each chunk writes its own parts (``manifests/parts/chunk-*.{videos,clips}.parquet``); at the end
of a run the parts of every done chunk are gathered into ``manifests/videos.parquet`` and
``clips.parquet``, sorted by source and span so the same outputs give the same files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schema import CLIPS, SCHEMA_VERSION, SCORE_COLUMNS, VIDEOS
from pipeline.clip import Clip
from pipeline.outdir import OutputDir, part_name

VIDEOS_FILE = "manifests/videos.parquet"
CLIPS_FILE = "manifests/clips.parquet"
# JSON that repeats one value per run on every clip row (the thresholds alone about 1.5 kB a
# row): gathered dictionary-encoded, so the driver holds each distinct value once instead of
# once per clip, and turned back into plain strings one row group at a time as the file is written.
REPEATED_COLUMNS = ("thresholds", "model_ids", "weight_hashes")
ROW_GROUP_ROWS = 16_384


@dataclass(frozen=True)
class RunMeta:
    """What every clip row records about the run: thresholds and models in force."""

    thresholds: dict[str, Any]
    model_ids: dict[str, str]
    weight_hashes: dict[str, str]
    random_weights: bool


def video_row(video: Clip, clips: list[Clip]) -> dict[str, Any]:
    info = video.info
    failed = video.rejection is not None
    error = None
    if failed:
        error = video.rejection.reason + (f": {video.rejection.error}" if video.rejection.error else "")
    return {
        "video_id": video.video_id, "source": video.source, "dataset": video.dataset,
        "language": video.language, "speaker": video.speaker,
        "status": "failed" if failed else "ok",
        "stage": video.rejection.stage if failed else None, "error": error,
        "duration_s": info.duration_s if info else None, "fps": info.fps if info else None,
        "width": info.width if info else None, "height": info.height if info else None,
        "rotation": info.rotation if info else None, "has_audio": info.has_audio if info else None,
        "n_clips": len(clips), "n_kept": sum(c.kept for c in clips), "chunk": video.chunk,
    }


def clip_row(clip: Clip, split: str, meta: RunMeta, shard: str | None = None,
             member_hashes: dict[str, str] | None = None, split_group: str | None = None) -> dict[str, Any]:
    rejection = clip.rejection
    row = {
        "clip_id": clip.clip_id, "video_id": clip.video_id, "source": clip.source,
        "dataset": clip.dataset, "language": clip.language, "speaker": clip.speaker,
        "start_s": clip.start_s, "end_s": clip.end_s, "n_frames": clip.n_frames,
        "kept": rejection is None,
        "stage": rejection.stage if rejection else None,
        "reason": rejection.reason if rejection else None,
        "error": rejection.error if rejection else None,
        "split": split,
        "split_group": split_group,
        "crop_backend": clip.crop_backend,
        "identity_backend": clip.identity_backend,
        "face_embedding": None if clip.face_embedding is None else np.asarray(clip.face_embedding, np.float32),
        "thresholds": json.dumps(meta.thresholds, sort_keys=True),
        "model_ids": json.dumps(meta.model_ids, sort_keys=True),
        "weight_hashes": json.dumps(meta.weight_hashes, sort_keys=True),
        "random_weights": meta.random_weights,
        "shard": shard, "key": clip.clip_id if shard else None,
        "sha256": json.dumps(member_hashes, sort_keys=True) if member_hashes else None,
        "chunk": clip.chunk,
    }
    for column in SCORE_COLUMNS:
        value = clip.scores.get(column[len("score_"):])
        row[column] = None if value is None else float(value)
    return row


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.replace_schema_metadata({b"schema_version": str(SCHEMA_VERSION).encode()})


def write_parts(out: OutputDir, chunk: int, video_rows: list[dict], clip_rows: list[dict]) -> None:
    out.write_parquet(part_name(chunk, "videos"), to_table(video_rows, VIDEOS))
    out.write_parquet(part_name(chunk, "clips"), to_table(clip_rows, CLIPS))


def with_columns(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the schema's columns it lacks added as nulls: parts written by an older
    schema version (a resumed run) still gather."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table


def gathering_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with its ``REPEATED_COLUMNS`` dictionary-encoded."""
    for name in REPEATED_COLUMNS:
        if name in schema.names:
            schema = schema.set(schema.get_field_index(name), pa.field(name, pa.dictionary(pa.int32(), pa.string())))
    return schema


def write_manifest(out: OutputDir, rel: str, table: pa.Table, schema: pa.Schema) -> None:
    """``table`` written as ``schema`` (plain strings), ``ROW_GROUP_ROWS`` rows at a time."""
    schema = schema.with_metadata({b"schema_version": str(SCHEMA_VERSION).encode()})
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema) as writer:
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            writer.write_table(table.slice(start, ROW_GROUP_ROWS).cast(schema), row_group_size=ROW_GROUP_ROWS)
    out.write_bytes(rel, sink.getvalue().to_pybytes())


def consolidate(out: OutputDir, chunks: list[int]) -> tuple[pa.Table, pa.Table]:
    """Gather the parts of ``chunks`` into the two manifests, sorted, and write them. The returned
    tables hold ``REPEATED_COLUMNS`` dictionary-encoded; the files hold plain strings."""
    tables = {}
    for name, schema, keys in (("videos", VIDEOS, ["source"]),
                               ("clips", CLIPS, ["source", "start_s", "end_s"])):
        gathering = gathering_schema(schema)
        repeated = tuple(c for c in REPEATED_COLUMNS if c in schema.names)
        parts = [with_columns(out.read_parquet(part_name(c, name), repeated), gathering)
                 .select(schema.names).cast(gathering) for c in chunks]
        table = pa.concat_tables(parts).unify_dictionaries() if parts else gathering.empty_table()
        table = table.sort_by([(k, "ascending") for k in keys])
        write_manifest(out, VIDEOS_FILE if name == "videos" else CLIPS_FILE, table, schema)
        tables[name] = table.replace_schema_metadata({b"schema_version": str(SCHEMA_VERSION).encode()})
    return tables["videos"], tables["clips"]
