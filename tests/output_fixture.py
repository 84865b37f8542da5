"""A small but realistic pipeline output folder, built offline in a few seconds.

Why: the audit, the summary and the re-thresholding must be tested against the exact layout the
shard-building job writes (``shards/``, ``manifests/videos.parquet`` + ``clips.parquet``,
``stats.json``, ``run.json``) without running any model. The folder holds a few datasets,
languages and speakers, a failed video, kept clips written with the real :class:`ShardWriter`
(one shard rolls over into a second part), rejected clips at every stage with the scores that
stage had computed, and source videos (talking-face clips from ``pipeline.media_kit``) so the report
can grab frames; one source is removed afterwards to stand for footage moved since the run.

``build_output(out)`` returns a :class:`FixtureOutput` that records what was written, so tests can
compute expectations independently of the code under test.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schema import CLIPS, SCHEMA_VERSION, SCORE_COLUMNS, VIDEOS
from shards.pose import degrees_to_logits
from shards.format import FPS, SAMPLES_PER_FRAME
from shards.stats import DatasetMoments, moments_name, moments_table
from shards.vector import motion_to_vector
from shards.writer import ShardWriter
from pipeline.media_kit import make_clip

AUDIO_FEAT_DIM = 16
VIDEO_SECONDS = 15.0
SHARD_TARGET_BYTES = 400_000  # small, so one chunk rolls over into a second shard part

# The ``filters`` section of the run config, as the pipeline records it in the thresholds column.
FILTERS = {
    "duration": {"mode": "drop", "min_s": 2.0, "max_s": 60.0},
    "audio": {"mode": "drop", "min_rms_db": -50.0},
    "faces": {"mode": "drop", "max_faces": 1, "min_face_px": 64},
    "quality": {"mode": "drop", "metric": "qalign", "n_frames": 8, "aggregate": "mean", "threshold": 3.0},
    "sync": {"mode": "drop", "min_conf": 4.0, "max_abs_offset": 3, "shift_audio": True, "vshift": 15,
             "batch_size": 64},
    "head_motion": {"mode": "drop", "max_pose_range_deg": 45.0, "max_pose_speed_deg_s": 150.0,
                    "max_t_range": 0.5, "max_t_speed": 3.0},
}
MODEL_IDS = {"motion_extractor": "liveportrait/motion_extractor", "syncnet": "syncnet_v2",
             "quality": "piqe", "audio_encoder": "random-wav2vec2-small"}
WEIGHT_HASHES = {name: "random" for name in MODEL_IDS}

# (dataset, language, speaker or None, split, outcomes of its candidate clips in time order)
VIDEO_PLAN = [
    ("hdtf", "en", "hdtf_spk01", "train", ["kept", "cheap/too_short", "kept", "quality/low_quality"]),
    ("hdtf", "en", "hdtf_spk02", "val", ["kept", "faces/no_face", "kept"]),
    ("celebvhq", "en", "cv_spk07", "train", ["sync/low_sync_conf", "kept", "decode/error", "kept"]),
    ("celebvhq", "en", None, "train", ["kept", "head_motion/pose_range", "kept"]),
    ("private_zh", "zh", "zh_spk03", "train", ["kept", "quality/low_quality", "kept"]),
    ("private_zh", "zh", "zh_spk04", "val", ["faces/no_face", "kept", "head_motion/pose_range"]),
]
FAILED_VIDEO = ("private_zh", "zh", "zh_spk05")
UNREACHABLE_VIDEO = 5  # its source file is deleted after the run
STAGE_ORDER = ("decode", "cheap", "faces", "quality", "sync", "head_motion")
STAGE_SCORES = {
    "decode": (),
    "cheap": ("score_duration_s", "score_audio_rms_db"),
    "faces": ("score_face_count", "score_face_size"),
    "quality": ("score_quality",),
    "sync": ("score_sync_conf", "score_sync_dist", "score_sync_offset", "score_audio_shift_frames"),
    "head_motion": ("score_pose_range_deg", "score_pose_speed_deg_s", "score_t_range", "score_t_speed"),
}


@dataclass
class FixtureClip:
    clip_id: str
    video_index: int
    dataset: str
    split: str
    outcome: str  # "kept" or "stage/reason"
    n_frames: int
    scores: dict[str, float]
    shard: str | None = None


@dataclass
class FixtureOutput:
    root: Path
    sources: list[Path]
    clips: list[FixtureClip] = field(default_factory=list)

    @property
    def kept(self) -> list[FixtureClip]:
        return [c for c in self.clips if c.outcome == "kept"]

    def shard_of(self, clip_id: str) -> str:
        return next(c.shard for c in self.clips if c.clip_id == clip_id)


def clip_id_for(source: str, start_s: float, end_s: float) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}#{start_s:.3f}-{end_s:.3f}"))


def _spans(outcomes: list[str], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Consecutive clip spans inside the video; too-short clips last 1.2 s, others 2.6 to 3.4 s."""
    spans, start = [], 0.0
    for outcome in outcomes:
        length = 1.2 if outcome == "cheap/too_short" else float(rng.uniform(2.6, 3.4))
        length = round(length * FPS) / FPS
        spans.append((round(start, 3), round(start + length, 3)))
        start += length + 0.3
    assert start <= VIDEO_SECONDS
    return spans


def _scores(outcome: str, duration: float, rng: np.random.Generator) -> dict[str, float]:
    """The scores a clip carries: every stage up to the rejecting one (later stages never ran)."""
    passing = {
        "score_duration_s": duration,
        "score_audio_rms_db": float(rng.uniform(-30, -18)),
        "score_face_count": 1.0,
        "score_face_size": float(rng.uniform(120, 220)),
        "score_quality": float(rng.uniform(3.1, 4.6)),
        "score_sync_conf": float(rng.uniform(5.0, 8.5)),
        "score_sync_dist": float(rng.uniform(6.0, 8.0)),
        "score_sync_offset": float(rng.integers(-1, 2)),
        "score_audio_shift_frames": 0.0,
        "score_pose_range_deg": float(rng.uniform(8, 40)),
        "score_pose_speed_deg_s": float(rng.uniform(10, 50)),
        "score_t_range": float(rng.uniform(0.01, 0.05)),
        "score_t_speed": float(rng.uniform(0.05, 0.2)),
    }
    failing = {
        "decode/error": {},
        "cheap/too_short": {},
        "faces/no_face": {"score_face_count": 0.0, "score_face_size": float("nan")},
        "quality/low_quality": {"score_quality": float(rng.uniform(2.0, 2.8))},
        "sync/low_sync_conf": {"score_sync_conf": float(rng.uniform(1.5, 3.5)),
                               "score_sync_dist": float(rng.uniform(9.0, 11.0))},
        "head_motion/pose_range": {"score_pose_range_deg": float(rng.uniform(55, 80)),
                                      "score_pose_speed_deg_s": float(rng.uniform(90, 140))},
    }
    if outcome == "kept":
        return passing
    stage = outcome.split("/")[0]
    ran = STAGE_ORDER[: STAGE_ORDER.index(stage) + 1]
    scores = {name: passing[name] for s in ran for name in STAGE_SCORES[s]}
    scores.update(failing[outcome])
    return {k: v for k, v in scores.items() if not np.isnan(v)}


def _motion(n_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Smooth head motion and expression, in the motion extractor's raw output format."""
    time = np.arange(n_frames) / FPS
    angles = {name: amp * np.sin(2 * np.pi * freq * time + phase)
              for name, amp, freq, phase in
              (("pitch", rng.uniform(2, 8), 0.3, rng.uniform(0, 6)),
               ("yaw", rng.uniform(4, 15), 0.2, rng.uniform(0, 6)),
               ("roll", rng.uniform(1, 4), 0.4, rng.uniform(0, 6)))}
    walk = np.cumsum(rng.normal(0, 0.002, size=(n_frames, 21, 3)), axis=0)
    return {
        "kp": np.repeat(rng.normal(0, 0.3, size=(1, 21, 3)), n_frames, axis=0).astype(np.float32),
        "exp": (rng.normal(0, 0.02, size=(1, 21, 3)) + walk).astype(np.float32),
        **{name: degrees_to_logits(deg) for name, deg in angles.items()},
        "t": (rng.normal(0, 0.01, size=(1, 3)) + 0.005 * np.sin(time)[:, None]).astype(np.float32),
        "scale": (1.4 + 0.01 * np.sin(time)[:, None]).astype(np.float32),
    }


def _audio(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    n = n_frames * SAMPLES_PER_FRAME
    tone = np.sin(2 * np.pi * rng.uniform(120, 220) * np.arange(n) / 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / 16000)
    return (3000 * tone * envelope + rng.normal(0, 30, n)).astype(np.int16)


def _write_sources(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(VIDEO_PLAN)):
        path = folder / f"video_{index:02d}.mp4"
        make_clip(path, fps=25, size=(96, 96), duration=VIDEO_SECONDS, seed=index)
        paths.append(path)
    return paths


def build_output(out: str | Path, sources_dir: str | Path | None = None, seed: int = 0,
                 split_shards: bool = False) -> FixtureOutput:
    """Write a complete pipeline output folder at ``out`` (source videos beside it by default).
    ``split_shards``: one shard per chunk and split, named for it, as the job writes today; without
    it a chunk's shard holds both splits, as outputs written before that change do."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    sources = _write_sources(Path(sources_dir) if sources_dir else out.parent / f"{out.name}_sources")
    fixture = FixtureOutput(root=out, sources=sources)
    video_rows, clip_rows = [], []
    train_moments = DatasetMoments()  # the job's rule (shards.stats), clip by clip
    chunk_moments: dict[int, list] = {}
    writers: dict[tuple[int, str | None], ShardWriter] = {}
    thresholds_json = json.dumps(FILTERS, sort_keys=True)

    for index, (dataset, language, speaker, split, outcomes) in enumerate(VIDEO_PLAN):
        source = str(sources[index])
        video_id = str(uuid.uuid5(uuid.NAMESPACE_URL, source))
        chunk = index // 2
        n_kept = 0
        for outcome, (start_s, end_s) in zip(outcomes, _spans(outcomes, np.random.default_rng(index))):
            n_frames = round((end_s - start_s) * FPS)
            clip_id = clip_id_for(source, start_s, end_s)
            scores = _scores(outcome, end_s - start_s, rng)
            row = {
                "clip_id": clip_id, "video_id": video_id, "source": source, "dataset": dataset,
                "language": language, "speaker": speaker, "start_s": start_s, "end_s": end_s,
                "n_frames": n_frames, "kept": outcome == "kept",
                "stage": None if outcome == "kept" else outcome.split("/")[0],
                "reason": None if outcome == "kept" else outcome.split("/")[1],
                "error": "ValueError: corrupt frame at 5.2 s" if outcome == "decode/error" else None,
                "split": split, **{name: scores.get(name) for name in SCORE_COLUMNS},
                "thresholds": thresholds_json, "model_ids": json.dumps(MODEL_IDS),
                "weight_hashes": json.dumps(WEIGHT_HASHES), "random_weights": True,
                "shard": None, "key": None, "sha256": None, "chunk": chunk,
            }
            clip = FixtureClip(clip_id, index, dataset, split, outcome, n_frames, scores)
            if outcome == "kept":
                motion = _motion(n_frames, rng)
                vector = motion_to_vector(motion)
                angles = vector[:, 67:70]
                scores["score_pose_range_deg"] = float((angles.max(0) - angles.min(0)).max())
                row["score_pose_range_deg"] = scores["score_pose_range_deg"]
                feat = rng.normal(0.1 * index, 1.0, size=(n_frames, AUDIO_FEAT_DIM)).astype(np.float16)
                meta = {"clip_id": clip_id, "source": source, "start_s": start_s, "end_s": end_s,
                        "fps": FPS, "dataset": dataset, "language": language, "speaker": speaker,
                        "split": split, "scores": scores, "model_ids": MODEL_IDS}
                shard_split = split if split_shards else None
                if (chunk, shard_split) not in writers:
                    writers[chunk, shard_split] = ShardWriter(out / "shards", chunk, SHARD_TARGET_BYTES,
                                                              shard_split)
                shard, digests = writers[chunk, shard_split].write(clip_id, motion, feat, _audio(n_frames, rng), meta)
                row.update(shard=shard, key=clip_id, sha256=json.dumps(digests, sort_keys=True))
                clip.shard = shard
                n_kept += 1
                moments = DatasetMoments.of_clip(motion, feat)
                chunk_moments.setdefault(chunk, []).append(
                    ({"shard": shard, "key": clip_id, "split": split, "dataset": dataset}, moments))
                if split == "train":
                    train_moments.merge(moments)
            clip_rows.append(row)
            fixture.clips.append(clip)
        video_rows.append({
            "video_id": video_id, "source": source, "dataset": dataset, "language": language,
            "speaker": speaker, "status": "ok", "stage": None, "error": None,
            "duration_s": VIDEO_SECONDS, "fps": 25.0, "width": 96, "height": 96, "rotation": 0,
            "has_audio": True, "n_clips": len(outcomes), "n_kept": n_kept, "chunk": chunk,
        })
    for writer in writers.values():
        writer.close()

    failed_source = str(out.parent / "missing" / "broken.mp4")
    dataset, language, speaker = FAILED_VIDEO
    video_rows.append({
        "video_id": str(uuid.uuid5(uuid.NAMESPACE_URL, failed_source)), "source": failed_source,
        "dataset": dataset, "language": language, "speaker": speaker, "status": "failed",
        "stage": "probe", "error": "no video stream", "duration_s": None, "fps": None,
        "width": None, "height": None, "rotation": None, "has_audio": None, "n_clips": 0,
        "n_kept": 0, "chunk": len(VIDEO_PLAN) // 2,
    })

    write_manifest(out / "manifests" / "videos.parquet", video_rows, VIDEOS)
    write_manifest(out / "manifests" / "clips.parquet", clip_rows, CLIPS)
    (out / "stats.json").write_text(json.dumps(train_moments.document()))
    for chunk, rows in chunk_moments.items():  # as the job stores them beside each chunk
        (out / moments_name(chunk)).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(moments_table(rows), out / moments_name(chunk))
    run = {"config": {"clips": {"min_len_s": 2.0}, "filters": FILTERS},
           "model_ids": MODEL_IDS, "weight_hashes": WEIGHT_HASHES, "random_weights": True,
           "timings": {"total_s": 1.0}, "counts": {"videos": len(video_rows), "clips": len(clip_rows),
                                                    "kept": len(fixture.kept)}}
    (out / "run.json").write_text(json.dumps(run, indent=1))
    sources[UNREACHABLE_VIDEO].unlink()
    return fixture


def write_manifest(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    table = table.replace_schema_metadata({b"schema_version": str(SCHEMA_VERSION).encode()})
    pq.write_table(table, path)
