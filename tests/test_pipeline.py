"""The shard-building job end to end on real clips, synthesised clips and every broken input.

One run (local Ray, random weights, small settings) builds the output all tests here read; a
second run of the same command must then write nothing at all.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.build_shards import main
from shards.split import assign_split
from shards.format import FPS, MOTION_SHAPES, SAMPLES_PER_FRAME
from shards.reader import iter_samples
from tests.pipeline_kit import (TEST_OVERRIDES, broken, manifests, ray_session, real_and_synthetic,  # noqa: F401
                                run_json, shard_members, snapshot, write_list)

pytestmark = pytest.mark.slow

# Probe reasons the broken inputs must be rejected with (pipeline.probe's codes).
BROKEN_REASONS = {"zero_bytes": "empty", "truncated": "truncated", "wav_as_mp4": "no_video",
                  "audio_only_mp4": "no_video", "audio_only_m4a": "no_video", "garbage": "not_media"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, media: Path, ray_session):  # noqa: F811
    root = tmp_path_factory.mktemp("pipeline")
    rows = real_and_synthetic(root / "inputs", media) + broken(root / "inputs" / "broken")
    spec = write_list(root / "inputs.csv", rows)
    out = root / "out"
    argv = ["--input", str(spec), "--output", str(out), "--random-weights", *TEST_OVERRIDES]
    assert main(argv) == 0
    return out, rows, argv


def test_every_input_has_one_video_row(built):
    out, rows, _ = built
    videos, _ = manifests(out)
    assert sorted(v["source"] for v in videos) == sorted(r["path"] for r in rows)
    by_speaker = {v["speaker"]: v for v in videos}
    for kind, reason in BROKEN_REASONS.items():
        row = by_speaker[kind]
        assert row["status"] == "failed" and row["stage"] == "probe", row
        assert row["error"].startswith(reason), row
    for name in ("car", "video_only"):  # valid videos without an audio track
        assert by_speaker[name]["status"] == "failed"
        assert (by_speaker[name]["stage"], by_speaker[name]["error"].split(":")[0]) == ("cheap", "no_audio")
    for name in ("d20", "s13", "synth_2997fps", "mp4_as_txt"):  # an mp4 named .txt is still an mp4
        assert by_speaker[name]["status"] == "ok" and by_speaker[name]["n_clips"] >= 1
        assert by_speaker[name]["has_audio"]


def test_kept_clips_and_shard_samples_correspond_one_to_one(built):
    out, _, _ = built
    _, clips = manifests(out)
    kept = [c for c in clips if c["kept"]]
    samples = shard_members(out)
    assert len(kept) >= 3
    assert sorted(f"{c['shard']}/{c['key']}" for c in kept) == sorted(samples)
    for clip in kept:
        assert clip["key"] == clip["clip_id"]
        assert json.loads(clip["sha256"]) == samples[f"{clip['shard']}/{clip['key']}"]
    assert len({c["clip_id"] for c in clips}) == len(clips)


def test_motion_and_audio_features_span_the_clip(built):
    out, _, _ = built
    _, clips = manifests(out)
    rows = {c["clip_id"]: c for c in clips}
    n = 0
    for shard in sorted((out / "shards").glob("*.tar")):
        for sample in iter_samples(shard):
            row, meta = rows[sample["__key__"]], sample["meta"]
            frames = len(sample["motion"]["exp"])
            assert abs(frames - (row["end_s"] - row["start_s"]) * FPS) <= 1
            assert frames == row["n_frames"] == meta["n_frames"] == len(sample["audio_feat"])
            for name, shape in MOTION_SHAPES.items():
                assert sample["motion"][name].shape == (frames, *shape)
            assert len(sample["audio"]) == frames * SAMPLES_PER_FRAME and sample["sample_rate"] == 16000
            assert np.abs(sample["audio"]).max() > 0
            assert meta["split"] == row["split"] and meta["video_id"] == row["video_id"] and "source" not in meta
            assert meta["start_s"] == row["start_s"] and meta["fps"] == FPS
            n += 1
    assert n == sum(c["kept"] for c in clips)


def test_every_rejection_has_stage_and_reason(built):
    out, _, _ = built
    videos, clips = manifests(out)
    for video in videos:
        assert (video["status"] == "failed") == (video["stage"] is not None) == (video["error"] is not None)
    rejected = [c for c in clips if not c["kept"]]
    assert rejected, "the cut real clip leaves a too-short remnant"
    for clip in rejected:
        assert clip["stage"] and clip["reason"], clip
        assert clip["shard"] is None and clip["key"] is None
    assert {(c["stage"], c["reason"]) for c in rejected} >= {("cheap", "too_short")}
    short = next(c for c in rejected if c["reason"] == "too_short")
    assert short["score_duration_s"] == pytest.approx(short["end_s"] - short["start_s"])
    for clip in clips:
        if clip["kept"]:
            for column in ("score_quality", "score_sync_conf", "score_sync_offset", "score_face_size",
                           "score_pose_range_deg", "score_audio_rms_db"):
                assert clip[column] is not None and np.isfinite(clip[column]), (column, clip)


def test_split_by_speaker_and_random_weights_everywhere(built):
    out, _, _ = built
    _, clips = manifests(out)
    run = run_json(out)
    assert run["random_weights"] is True
    assert set(run["weight_hashes"].values()) >= {"random"}
    assert run["counts"]["kept"] == sum(c["kept"] for c in clips)
    assert run["timings"]["stage_seconds"]["motion"] > 0
    for clip in clips:
        assert clip["random_weights"] is True
        # The split follows the clip's group: its speaker, else its face identity group.
        assert clip["split"] == assign_split(clip["split_group"], 0.05)
        if clip["speaker"]:
            assert clip["split_group"] == f"speaker:{clip['speaker']}"
        recorded = json.loads(clip["thresholds"])
        assert recorded["sync"]["min_conf"] == 4.0
        # the job records the quality metric's direction (PIQE: lower is better) and what it bounds
        assert recorded["quality"]["lower_better"] is True
        assert recorded["meaning"]["quality.threshold"] == {"score": "score_quality", "bound": "max"}
        assert "score_quality" not in recorded["in_force"]  # mode: score only records
    for shard in sorted((out / "shards").glob("*.tar")):
        for sample in iter_samples(shard):
            assert sample["meta"]["random_weights"] is True
    assert (out / "config.yaml").read_text().count("random: true") == 1


def test_stats_cover_the_training_split_only(built):
    out, _, _ = built
    _, clips = manifests(out)
    stats = json.loads((out / "stats.json").read_text())
    train = [c for c in clips if c["kept"] and c["split"] == "train"]
    assert stats["split"] == "train" and stats["n_clips"] == len(train)
    assert stats["n_frames"] == sum(c["n_frames"] for c in train)
    assert stats["vector"]["dim"] == 70 and len(stats["vector"]["std"]) == 70
    assert all(lo <= hi for lo, hi in zip(stats["vector"]["min"], stats["vector"]["max"]))
    assert stats["audio_feat"]["dim"] == len(stats["audio_feat"]["mean"]) > 0


def test_second_run_writes_nothing(built):
    out, _, argv = built
    before = snapshot(out)
    assert main(argv) == 0
    assert snapshot(out) == before


def test_missing_weights_fail_fast_naming_the_files(tmp_path: Path, caplog):
    code = main(["--input", str(tmp_path), "--output", str(tmp_path / "out"),
                 "--weights-dir", str(tmp_path / "no_weights"), "filters.quality.metric=piqe"])
    assert code == 2
    text = caplog.text
    for name in ("liveportrait_motion_extractor", "syncnet_v2", "chinese_hubert_base"):
        assert name in text
    assert "python -m models.weights fetch" in text
    assert not (tmp_path / "out").exists()


def test_output_audits_clean_trains_and_samples(built, media, tmp_path):
    """The whole path on the job's real output: audit, a few training steps, speech -> template."""
    import pickle

    from manifests.audit import main as audit
    from training.run import run_from_args
    from training.sample import main as sample

    out, _, _ = built
    stats = json.loads((out / "stats.json").read_text())
    encoder = stats["audio_feat"]["encoder"]
    assert {k: encoder[k] for k in ("name", "weights")} == {"name": "chinese_hubert_base", "weights": "random:small"}
    # The input settings the features were made with travel to sampling through the model id.
    assert encoder["model_id"].startswith("random:") and "do_normalize=true" in encoder["model_id"]
    assert len(stats["kp"]["mean"]) == 63
    assert audit([str(out), "--deep"]) == 0

    run_dir = tmp_path / "run"
    summary = run_from_args(["--shards", str(out), "--out", str(run_dir), "model.audio_dim=64",
                             "model.width=32", "model.layers=1", "model.heads=2", "model.w_pre=5",
                             "model.w_cur=10", "train.max_steps=4", "train.val_every=1000",
                             "train.ckpt_every=4", "train.threads=1", "train.progress=false",
                             "data.batch_size=4", "data.num_workers=0"])
    assert summary["step"] == 4
    motion = tmp_path / "motion.pkl"
    # No --audio-encoder: the checkpoint's statistics say which encoder made the features.
    assert sample(["--checkpoint", str(run_dir / "checkpoint.pt"), "--audio",
                   str(media / "joyvasa_006.wav"), "--out", str(motion), "--steps", "2",
                   "--sampler", "ddim"]) == 0
    template = pickle.loads(motion.read_bytes())
    seconds = sf.info(str(media / "joyvasa_006.wav")).duration
    assert template["n_frames"] == len(template["motion"]) == int(np.ceil(seconds * FPS))
