"""Benchmark of the manifest audit: metadata checks, summary and re-thresholding over a synthetic
1,000,000-row clip manifest (target: under a minute), and the shard checks (listing, and deep
with 1 and 2 worker processes) over a small real shard set.

Usage: ``python bench/audit.py [--rows 1000000] [--out bench/results/audit.json]``.
The manifest is generated with vectorised numpy/pyarrow (no per-row Python) in a temporary
folder that is removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from manifests.checks import audit, check_metadata, check_shards, load_output
from manifests.rethreshold import Rules, rethreshold, write_selection
from manifests.schema import CLIPS, SCHEMA_VERSION, SCORE_COLUMNS, VIDEOS
from manifests.summary import summarise
from shards.pose import degrees_to_logits
from shards.format import FPS, MEMBERS, SAMPLES_PER_FRAME
from shards.vector import VECTOR_DIM, motion_to_vector
from shards.writer import ShardWriter

DATASETS = np.array(["hdtf", "celebvhq", "vox_subset", "private_zh", "private_en"])
LANGUAGES = np.array(["en", "en", "en", "zh", "en"])
CLIPS_PER_VIDEO = 20
VIDEOS_PER_CHUNK = 16
# Rejecting stages in pipeline order, the reason each gives and the share of clips they reject.
REJECTIONS = [("cheap", "too_short", 0.10), ("faces", "no_face", 0.08), ("quality", "low_quality", 0.08),
              ("sync", "low_sync_conf", 0.10), ("head_motion", "pose_range", 0.04)]
STAGE_SCORES = [2, 4, 5, 9, 13]  # score columns computed once each stage has run
FILTERS = {"duration": {"mode": "drop", "min_s": 8.0, "max_s": 60.0},
           "audio": {"mode": "drop", "min_rms_db": -50.0},
           "faces": {"mode": "drop", "max_faces": 1, "min_face_px": 64},
           "quality": {"mode": "drop", "metric": "qalign", "threshold": 3.0},
           "sync": {"mode": "drop", "min_conf": 4.0, "max_abs_offset": 3},
           "head_motion": {"mode": "drop", "max_pose_range_deg": 60.0, "max_pose_speed_deg_s": 150.0,
                           "max_t_range": 0.5, "max_t_speed": 3.0}}
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_strings(rng: np.random.Generator, n: int, n_bytes: int) -> np.ndarray:
    """(n, 2 * n_bytes) uint8 ASCII hex digits of random bytes."""
    raw = rng.integers(0, 256, size=(n, n_bytes), dtype=np.uint8)
    out = np.empty((n, 2 * n_bytes), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = HEX[raw >> 4], HEX[raw & 15]
    return out


def to_strings(chars: np.ndarray) -> pa.Array:
    """(n, width) uint8 ASCII -> a pyarrow string array, without a Python object per row."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def uuid_like(rng: np.random.Generator, n: int) -> pa.Array:
    digits = hex_strings(rng, n, 16)
    dash = np.full((n, 1), ord("-"), np.uint8)
    return to_strings(np.concatenate([digits[:, :8], dash, digits[:, 8:12], dash, digits[:, 12:16], dash,
                                      digits[:, 16:20], dash, digits[:, 20:]], axis=1))


def sha256_json(rng: np.random.Generator, n: int) -> pa.Array:
    parts = []
    for i, member in enumerate(sorted(MEMBERS)):
        prefix = ("{" if i == 0 else ", ") + f'"{member}": "'
        parts += [np.broadcast_to(np.frombuffer(prefix.encode(), np.uint8), (n, len(prefix))),
                  hex_strings(rng, n, 32), np.full((n, 1), ord('"'), np.uint8)]
    parts.append(np.full((n, 1), ord("}"), np.uint8))
    return to_strings(np.concatenate(parts, axis=1))


def synthetic_manifest(n_rows: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """A clip manifest of ``n_rows`` candidates and its video manifest, shaped like a real run."""
    rng = np.random.default_rng(seed)
    n_videos = max(1, n_rows // CLIPS_PER_VIDEO)
    video_of = np.sort(rng.integers(0, n_videos, n_rows))
    video_ids = uuid_like(rng, n_videos)
    video_dataset = rng.integers(0, len(DATASETS), n_videos)
    n_speakers = max(1, n_videos // 3)
    video_speaker = rng.integers(0, n_speakers, n_videos)
    speaker_known = rng.random(n_videos) > 0.1
    speaker_val = rng.random(n_speakers) < 0.05
    video_val = np.where(speaker_known, speaker_val[video_speaker], rng.random(n_videos) < 0.05)
    speaker_names = pa.array(np.char.add("spk", video_speaker.astype(str)).astype(object), pa.string())
    speaker_names = pc.if_else(pa.array(speaker_known), speaker_names, pa.nulls(n_videos, pa.string()))
    sources = pa.array(np.char.add(np.char.add("s3://bucket/raw/", np.arange(n_videos).astype(str)), ".mp4")
                       .astype(object), pa.string())

    # Which stage (if any) rejects each clip.
    roll = rng.random(n_rows)
    outcome = np.full(n_rows, -1)
    edge = 0.0
    for i, (_, _, share) in enumerate(REJECTIONS):
        outcome[(roll >= edge) & (roll < edge + share)] = i
        edge += share
    kept = outcome < 0
    length = np.where(outcome == 0, rng.uniform(2, 8, n_rows), rng.uniform(8, 40, n_rows))
    start = rng.uniform(0, 600, n_rows).round(2)
    end = start + (length * FPS).round() / FPS
    depth = np.where(kept, len(SCORE_COLUMNS), np.array(STAGE_SCORES)[np.maximum(outcome, 0)])

    scores = {
        "score_duration_s": end - start, "score_audio_rms_db": rng.uniform(-35, -15, n_rows),
        "score_face_count": np.where(outcome == 1, 0.0, 1.0), "score_face_size": rng.uniform(80, 400, n_rows),
        "score_quality": np.where(outcome == 2, rng.uniform(1.5, 3.0, n_rows), rng.uniform(3.0, 4.8, n_rows)),
        "score_sync_conf": np.where(outcome == 3, rng.uniform(0.5, 4.0, n_rows), rng.uniform(4.0, 9.0, n_rows)),
        "score_sync_dist": rng.uniform(5, 11, n_rows), "score_sync_offset": rng.integers(-3, 4, n_rows) * 1.0,
        "score_audio_shift_frames": np.zeros(n_rows),
        "score_pose_range_deg": np.where(outcome == 4, rng.uniform(60, 90, n_rows), rng.uniform(5, 60, n_rows)),
        "score_pose_speed_deg_s": rng.uniform(5, 150, n_rows), "score_t_range": rng.uniform(0, 0.5, n_rows),
        "score_t_speed": rng.uniform(0, 3, n_rows),
    }
    columns_known = np.arange(len(SCORE_COLUMNS))[None, :] < depth[:, None]
    score_arrays = {name: pa.array(values, pa.float64(), mask=~columns_known[:, i])
                    for i, (name, values) in enumerate(scores.items())}

    chunk = (video_of // VIDEOS_PER_CHUNK).astype(np.int32)
    shard_names = np.char.add(np.char.add("shard-", np.char.zfill(chunk.astype(str), 6)), ".tar")
    clip_ids = uuid_like(rng, n_rows)
    stage_names = np.array([r[0] for r in REJECTIONS] + [None], dtype=object)[outcome]
    reasons = np.array([r[1] for r in REJECTIONS] + [None], dtype=object)[outcome]
    not_kept = pa.array(~kept)
    table = pa.table({
        "clip_id": clip_ids, "video_id": video_ids.take(pa.array(video_of)),
        "source": sources.take(pa.array(video_of)),
        "dataset": pa.array(DATASETS[video_dataset[video_of]].astype(object), pa.string()),
        "language": pa.array(LANGUAGES[video_dataset[video_of]].astype(object), pa.string()),
        "speaker": speaker_names.take(pa.array(video_of)),
        "start_s": start, "end_s": end, "n_frames": ((end - start) * FPS).round().astype(np.int32),
        "kept": kept, "stage": pa.array(stage_names, pa.string()), "reason": pa.array(reasons, pa.string()),
        "error": pa.nulls(n_rows, pa.string()),
        "split": pa.array(np.where(video_val[video_of], "val", "train").astype(object), pa.string()),
        **score_arrays,
        "thresholds": pa.array([json.dumps(FILTERS, sort_keys=True)] * 1, pa.string()).take(
            pa.array(np.zeros(n_rows, np.int64))),
        "model_ids": pa.array(['{"motion_extractor": "liveportrait"}'], pa.string()).take(
            pa.array(np.zeros(n_rows, np.int64))),
        "weight_hashes": pa.array(['{"motion_extractor": "' + "0" * 64 + '"}'], pa.string()).take(
            pa.array(np.zeros(n_rows, np.int64))),
        "random_weights": np.zeros(n_rows, bool),
        "shard": pc.if_else(not_kept, pa.nulls(n_rows, pa.string()),
                                    pa.array(shard_names.astype(object), pa.string())),
        "key": pc.if_else(not_kept, pa.nulls(n_rows, pa.string()), clip_ids),
        "sha256": pc.if_else(not_kept, pa.nulls(n_rows, pa.string()), sha256_json(rng, n_rows)),
        "chunk": chunk,
    }).select(CLIPS.names).cast(CLIPS)

    n_clips = np.bincount(video_of, minlength=n_videos)
    n_kept = np.bincount(video_of, weights=kept, minlength=n_videos).astype(np.int32)
    videos = pa.table({
        "video_id": video_ids, "source": sources,
        "dataset": pa.array(DATASETS[video_dataset].astype(object), pa.string()),
        "language": pa.array(LANGUAGES[video_dataset].astype(object), pa.string()),
        "speaker": speaker_names, "status": pa.array(["ok"] * 1, pa.string()).take(pa.array(np.zeros(n_videos, np.int64))),
        "stage": pa.nulls(n_videos, pa.string()), "error": pa.nulls(n_videos, pa.string()),
        "duration_s": np.full(n_videos, 700.0), "fps": np.full(n_videos, 25.0),
        "width": np.full(n_videos, 1280, np.int32), "height": np.full(n_videos, 720, np.int32),
        "rotation": np.zeros(n_videos, np.int32), "has_audio": np.ones(n_videos, bool),
        "n_clips": n_clips.astype(np.int32), "n_kept": n_kept,
        "chunk": (np.arange(n_videos) // VIDEOS_PER_CHUNK).astype(np.int32),
    }).cast(VIDEOS)
    return table, videos


def write_output(root: Path, clips: pa.Table, videos: pa.Table, stats: dict) -> None:
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    meta = {b"schema_version": str(SCHEMA_VERSION).encode()}
    pq.write_table(clips.replace_schema_metadata(meta), root / "manifests" / "clips.parquet")
    pq.write_table(videos.replace_schema_metadata(meta), root / "manifests" / "videos.parquet")
    (root / "stats.json").write_text(json.dumps(stats))
    (root / "run.json").write_text(json.dumps({"random_weights": False}))


def count_stats(clips: pa.Table, dim_audio: int = 64) -> dict:
    """A stats file whose counts agree with the manifest (values are placeholders)."""
    kept = clips.column("kept").to_numpy(zero_copy_only=False)
    train = kept & (clips.column("split").to_numpy(zero_copy_only=False) == "train")
    frames = int(clips.column("n_frames").to_numpy()[train].sum())
    vec = {name: [0.5] * VECTOR_DIM for name in ("mean", "std", "min", "max")}
    return {"format_version": 1, "split": "train", "n_clips": int(train.sum()), "n_frames": frames,
            "vector": {"dim": VECTOR_DIM, **vec},
            "audio_feat": {"dim": dim_audio, "mean": [0.0] * dim_audio, "std": [1.0] * dim_audio}}


def timed(label: str, timings: dict, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    timings[label] = round(time.perf_counter() - start, 3)
    print(f"  {label}: {timings[label]:.2f} s", flush=True)
    return value


def bench_manifest(n_rows: int, folder: Path) -> dict:
    print(f"manifest of {n_rows} clip rows", flush=True)
    timings: dict = {}
    clips, videos = timed("generate_s", timings, synthetic_manifest, n_rows)
    write_output(folder, clips, videos, count_stats(clips))
    size_mb = (folder / "manifests" / "clips.parquet").stat().st_size / 1e6
    kept = int(clips.column("kept").to_numpy(zero_copy_only=False).sum())
    del clips, videos
    output = timed("load_s", timings, load_output, folder)
    problems = timed("metadata_checks_s", timings, check_metadata, output)
    summary = timed("summary_s", timings, summarise, output)
    rules = Rules({"score_quality": {"min": 3.5}, "score_pose_range_deg": {"max": 75.0}}, ("faces",))
    selection = timed("rethreshold_s", timings, rethreshold, output.clips, rules)
    timed("write_manifest_s", timings, write_selection, output.clips_path, selection, folder / "new.parquet")
    from manifests.report import write_report  # matplotlib and PyAV load only here
    timed("html_report_s", timings, write_report, folder / "report.html", output, summary)
    audit_s = timings["load_s"] + timings["metadata_checks_s"]
    return {"rows": n_rows, "kept": kept, "videos": len(output.videos), "parquet_mb": round(size_mb, 1),
            "problems_found": len(problems), **timings,
            "audit_metadata_total_s": round(audit_s, 3),
            "audit_summary_rethreshold_total_s": round(audit_s + timings["summary_s"] + timings["rethreshold_s"], 3),
            "rethreshold_after": selection.totals["clips_after"],
            "target_s": 60, "meets_target": audit_s + timings["summary_s"] + timings["rethreshold_s"] < 60}


def bench_shards(folder: Path, n_shards: int = 8, per_shard: int = 16, n_frames: int = 250) -> dict:
    """Real shards written with ShardWriter, and a manifest and stats that agree with them."""
    print(f"shard set: {n_shards} shards x {per_shard} samples x {n_frames} frames", flush=True)
    rng = np.random.default_rng(1)
    clips, videos = synthetic_manifest(n_shards * per_shard * 2, seed=1)
    clips = clips.slice(0, n_shards * per_shard)
    kept_rows = {"kept": [], "stage": [], "reason": [], "shard": [], "key": [], "sha256": [], "n_frames": [],
                 "start_s": [], "end_s": [], "split": []}
    vectors, feats = [], []
    for index in range(n_shards):
        with ShardWriter(folder / "shards", index) as writer:
            for j in range(per_shard):
                key = clips.column("clip_id")[index * per_shard + j].as_py()
                angles = {k: degrees_to_logits(rng.uniform(-20, 20) + np.zeros(n_frames)) for k in ("pitch", "yaw", "roll")}
                motion = {"kp": rng.normal(0, 0.3, (n_frames, 21, 3)), "exp": rng.normal(0, 0.02, (n_frames, 21, 3)),
                          "t": rng.normal(0, 0.01, (n_frames, 3)), "scale": 1.4 + np.zeros((n_frames, 1)), **angles}
                feat = rng.normal(0, 1, (n_frames, 64)).astype(np.float16)
                tone = np.sin(np.arange(n_frames * SAMPLES_PER_FRAME) * 0.05) * 3000
                split = clips.column("split")[index * per_shard + j].as_py()
                shard, digests = writer.write(key, motion, feat, tone.astype(np.int16), {"split": split})
                for name, value in (("kept", True), ("stage", None), ("reason", None), ("shard", shard),
                                    ("key", key), ("sha256", json.dumps(digests)), ("n_frames", n_frames),
                                    ("start_s", 0.0), ("end_s", n_frames / FPS), ("split", split)):
                    kept_rows[name].append(value)
                if split == "train":
                    vectors.append(motion_to_vector({k: np.asarray(v, np.float32) for k, v in motion.items()}))
                    feats.append(feat.astype(np.float64))
    for name, values in kept_rows.items():
        clips = clips.set_column(clips.schema.get_field_index(name), name, pa.array(values, CLIPS.field(name).type))
    video_ids = set(clips.column("video_id").to_pylist())
    videos = videos.filter(pc.is_in(videos.column("video_id"), pa.array(list(video_ids))))
    counts = {}
    for vid in clips.column("video_id").to_pylist():
        counts[vid] = counts.get(vid, 0) + 1
    n = pa.array([counts[v] for v in videos.column("video_id").to_pylist()], pa.int32())
    videos = videos.set_column(videos.schema.get_field_index("n_clips"), "n_clips", n)
    videos = videos.set_column(videos.schema.get_field_index("n_kept"), "n_kept", n)
    vec, aud = np.concatenate(vectors).astype(np.float64), np.concatenate(feats)
    stats = {"format_version": 1, "split": "train", "n_clips": len(vectors), "n_frames": len(vec),
             "vector": {"dim": VECTOR_DIM, "mean": vec.mean(0).tolist(), "std": vec.std(0).tolist(),
                        "min": vec.min(0).tolist(), "max": vec.max(0).tolist()},
             "audio_feat": {"dim": 64, "mean": aud.mean(0).tolist(), "std": aud.std(0).tolist()}}
    write_output(folder, clips, videos, stats)
    size_mb = sum(p.stat().st_size for p in (folder / "shards").glob("*.tar")) / 1e6
    output = load_output(folder)
    timings: dict = {}
    listing, _ = timed("listing_s", timings, check_shards, output, False, 1)
    results = {}
    for workers in (1, 2):
        result = timed(f"deep_workers{workers}_s", timings, audit, output, True, workers)
        results[workers] = result
    samples = n_shards * per_shard
    return {"shards": n_shards, "samples": samples, "frames_per_sample": n_frames, "shards_mb": round(size_mb, 1),
            **timings, "problems_found": len(results[2].problems) + len(listing),
            "deep_samples_per_s_workers1": round(samples / timings["deep_workers1_s"], 1),
            "deep_samples_per_s_workers2": round(samples / timings["deep_workers2_s"], 1),
            "deep_mb_per_s_workers2": round(size_mb / timings["deep_workers2_s"], 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "audit.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="bench_audit_"))
    try:
        manifest = bench_manifest(args.rows, work / "big")
        shards = bench_shards(work / "shards")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    # other work on a shared machine slows every number, the 2-worker one most
                    "load_average_at_start": load_at_start, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "manifest": manifest, "shards": shards,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
