"""Streaming windows from shards of real motion: normalisation, windows, determinism, bad shards."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from configs import load_config
from shards.vector import motion_to_vector
from training.data import (Clip, DataStreamError, FeatureWidthError, MissingShardsError, WindowSampler,
                           WindowStream, assemble_batch, dataset_multipliers, decode_clip, find_inputs,
                           first_clip, make_loader, stream_of)
from training.model import ModelConfig
from training.normalize import Normalizer, StatsError, load_stats
from tests.motion_fixtures import fixture_clips, write_dataset

MODEL = ModelConfig(audio_dim=16, width=64, layers=2, heads=4, w_pre=5, w_cur=20)


def data_cfg(**overrides):
    cfg = load_config("train").data
    return OmegaConf.merge(cfg, overrides)


@pytest.fixture(scope="module")
def dataset(media, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    clips = fixture_clips(media, n_clips=4) + fixture_clips(media, n_clips=2, split="val", start_index=4)
    write_dataset(root, clips, clips_per_shard=2)
    return root, clips


def stream(root, split="train", resample=True, consumed=0, seed=0, batch_size=4, urls=None, positions=None,
           **cfg):
    inputs = find_inputs(root)
    normalizer = Normalizer(load_stats(inputs.stats_path))
    return WindowStream(urls or inputs.shards[split], normalizer, MODEL, data_cfg(**cfg), split, seed,
                        batch_size, resample=resample, consumed_batches=consumed, positions=positions)


def test_normalizer_scales_expression_and_pose(dataset):
    root, clips = dataset
    stats = load_stats(root / "stats.json")
    norm = Normalizer(stats)
    vec = np.concatenate([motion_to_vector(c["motion"]) for c in clips if c["meta"]["split"] == "train"])
    z = norm.normalize(vec)
    np.testing.assert_allclose(z[:, :63].mean(0), 0, atol=1e-3)
    varying = vec[:, :63].std(0) > 1e-4
    np.testing.assert_allclose(z[:, :63].std(0)[varying], 1, rtol=1e-3)
    assert z[:, 63:].min() >= -1 - 1e-5 and z[:, 63:].max() <= 1 + 1e-5
    moving = vec[:, 63:].max(0) > vec[:, 63:].min(0)
    np.testing.assert_allclose(z[:, 63:].min(0)[moving], -1, atol=1e-5)
    np.testing.assert_allclose(z[:, 63:].max(0)[moving], 1, atol=1e-5)
    np.testing.assert_allclose(z[:, 63:][:, ~moving], 0)  # a constant pose dim sits at the centre
    np.testing.assert_allclose(norm.denormalize(z), vec, rtol=1e-5, atol=1e-5)
    t = torch.from_numpy(vec)
    assert torch.allclose(norm.denormalize(norm.normalize(t)), t, atol=1e-5)
    feat = np.concatenate([c["audio_feat"] for c in clips if c["meta"]["split"] == "train"])
    np.testing.assert_allclose(norm.normalize_audio(feat).mean(0), 0, atol=1e-2)


def test_pose_zscore_normalisation(dataset):
    root, clips = dataset
    stats = load_stats(root / "stats.json")
    norm = Normalizer(stats, pose="zscore")
    vec = np.concatenate([motion_to_vector(c["motion"]) for c in clips if c["meta"]["split"] == "train"])
    z = norm.normalize(vec)
    moving = vec[:, 63:].std(0) > 1e-4
    np.testing.assert_allclose(z[:, 63:].mean(0)[moving], 0, atol=1e-3)
    np.testing.assert_allclose(z[:, 63:].std(0)[moving], 1, rtol=1e-3)
    np.testing.assert_allclose(z[:, :63], Normalizer(stats).normalize(vec)[:, :63])  # expression as before
    np.testing.assert_allclose(norm.denormalize(z), vec, rtol=1e-5, atol=1e-5)
    with pytest.raises(StatsError, match="pose normalisation"):
        Normalizer(stats, pose="range")


def test_missing_or_malformed_stats_are_clear_errors(tmp_path):
    with pytest.raises(StatsError, match="not found"):
        load_stats(tmp_path / "stats.json")
    (tmp_path / "stats.json").write_text(json.dumps({"vector": {"mean": [0] * 5, "std": [1] * 5,
                                                                "min": [0] * 5, "max": [1] * 5}}))
    with pytest.raises(StatsError, match="70 entries"):
        load_stats(tmp_path / "stats.json")


def test_window_sampler_draws_valid_windows():
    clip = Clip("c", np.zeros((60, 70), np.float32), np.zeros((60, 16), np.float16), "d")
    sampler = WindowSampler(5, 20, truncate_prob=0.35, min_cur=4, first_window_prob=0.15)
    rng = np.random.default_rng(0)
    draws = [sampler.draw(clip, rng) for _ in range(4000)]
    firsts = np.mean([d.first for d in draws])
    assert 0.12 < firsts < 0.18
    assert all((d.start == 0) == d.first for d in draws)
    assert all(d.first or 5 <= d.start <= 40 for d in draws)
    assert all(1 <= d.n_cur <= 20 and d.start + d.n_cur <= 60 for d in draws)
    short = np.mean([d.n_cur < 20 for d in draws])
    assert 0.3 < short < 0.4  # truncation (every draw here has room for a full current part)
    assert min(d.n_cur for d in draws) == 4
    tiles = sampler.tile(clip)
    assert [(t.start, t.n_cur, t.first) for t in tiles] == [(0, 20, True), (20, 20, False), (40, 20, False)]
    tiny = Clip("t", np.zeros((4, 70), np.float32), np.zeros((4, 16), np.float16), "d")
    assert all(sampler.draw(tiny, rng).first for _ in range(20))


def test_batches_copy_the_right_frames_and_masks():
    motion = np.arange(50 * 70, dtype=np.float32).reshape(50, 70)
    audio = np.arange(50 * 16, dtype=np.float16).reshape(50, 16) % 100
    clip = Clip("c", motion, audio, "d")
    sampler = WindowSampler(5, 20)
    from training.data import WindowSpec
    batch = assemble_batch([WindowSpec(clip, 0, 20, True), WindowSpec(clip, 30, 12, False)], 5, 20)
    assert batch["motion"].shape == (2, 25, 70) and batch["audio"].dtype == torch.float16
    # first window: no context, frames 0..19 in the current part
    assert not batch["valid"][0, :5].any() and batch["valid"][0, 5:].all()
    assert torch.equal(batch["motion"][0, 5:], torch.from_numpy(motion[:20]))
    assert torch.count_nonzero(batch["motion"][0, :5]) == 0 and bool(batch["first"][0])
    # later window: context frames 25..29, current 30..41, then padding
    assert torch.equal(batch["motion"][1, :17], torch.from_numpy(motion[25:42]))
    assert torch.equal(batch["audio"][1, :17], torch.from_numpy(audio[25:42]))
    assert batch["valid"][1, :17].all() and not batch["valid"][1, 17:].any()
    assert torch.count_nonzero(batch["motion"][1, 17:]) == 0 and not bool(batch["first"][1])
    assert [(t.start, t.n_cur) for t in sampler.tile(clip)] == [(0, 20), (20, 20), (40, 10)]


def same_windows(x, y) -> bool:
    return all(torch.equal(x[k], y[k]) for k in ("motion", "audio", "valid", "first")) and x["keys"] == y["keys"]


def test_stream_is_deterministic_and_continues_from_a_position(dataset):
    root, _ = dataset
    def take(s, n):
        it = iter(s)
        return [next(it) for _ in range(n)]
    a = take(stream(root), 12)
    b = take(stream(root), 12)
    other = take(stream(root, seed=1), 8)
    assert all(same_windows(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x["motion"], y["motion"]) for x, y in zip(a, other))
    # the position after any batch restarts the stream there: mid-visit and at a visit's start alike
    visits = [tuple(x["position"]) for x in a]
    changes = [i for i in range(1, len(visits)) if visits[i][0] != visits[i - 1][0]]
    assert changes, visits  # the 12 batches span more than one shard visit
    for done in (1, 5, changes[0]):
        resumed = take(stream(root, positions=[a[done - 1]["position"]]), 12 - done)
        assert all(same_windows(x, y) for x, y in zip(a[done:], resumed))
        assert [tuple(x["position"]) for x in resumed] == visits[done:]
    batch = a[0]
    assert batch["motion"].shape == (4, 25, 70) and batch["audio"].shape == (4, 25, 16)
    assert int(batch["errors"]) == 0
    firsts = torch.cat([x["first"] for x in a])
    assert firsts.any() and not firsts.all()
    # windows carry real, normalised motion: exp dims near unit scale, pose within [-1, 1]
    valid = torch.cat([x["valid"] for x in a])
    motion = torch.cat([x["motion"] for x in a])[valid]
    assert 0.3 < motion[:, :63].std() < 3 and motion[:, 63:].abs().max() <= 1 + 1e-5


def test_a_position_deep_into_the_run_is_reached_without_replay(dataset):
    """The stream jumps to any visit at once: a position a billion visits in costs one visit."""
    root, _ = dataset
    far = (10**9, 0)
    first = next(iter(stream(root, positions=[far])))
    assert tuple(first["position"]) == (10**9, 4) or first["position"][0] > 10**9
    again = next(iter(stream(root, positions=[far])))
    assert same_windows(first, again)


def test_loader_workers_alternate_and_resume_at_the_same_batch(dataset):
    root, _ = dataset
    assert [stream_of(w, 2, 5) for w in (0, 1)] == [1, 0]
    def take(consumed, n, positions=None):
        out = []
        for batch in make_loader(stream(root, consumed=consumed, positions=positions), num_workers=2):
            out.append(batch)
            if len(out) == n:
                return out
    straight = take(0, 9)
    assert [int(b["stream"]) for b in straight] == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    for consumed in (3, 4):  # resuming after an odd and an even number of batches
        positions = [(0, 0), (0, 0)]
        for batch in straight[:consumed]:  # what the trainer records, batch by batch
            positions[int(batch["stream"])] = tuple(batch["position"])
        resumed = take(consumed, 5, positions)
        assert all(same_windows(x, y) for x, y in zip(straight[consumed:], resumed))


def test_validation_tiles_val_clips_only(dataset):
    root, clips = dataset
    val = list(stream(root, split="val", resample=False, batch_size=64))
    n_windows = sum(-(-c["motion"]["exp"].shape[0] // MODEL.w_cur) for c in clips
                    if c["meta"]["split"] == "val")
    assert sum(len(b["first"]) for b in val) == n_windows
    assert int(sum(b["first"].sum() for b in val)) == 2  # one first window per val clip


def corrupt_copies(root, tmp_path):
    """A truncated copy of a real shard and a file of garbage bytes, both named like shards."""
    good = sorted((root / "shards").glob("*.tar"))
    truncated = tmp_path / "shard-000090.tar"
    data = good[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2 + 100])
    garbage = tmp_path / "shard-000091.tar"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    return [str(p) for p in good], [str(truncated), str(garbage)]


def test_corrupt_shards_are_skipped_and_counted(dataset, tmp_path):
    root, clips = dataset
    good, bad = corrupt_copies(root, tmp_path)
    urls = [bad[0], good[0], bad[1], good[1]]
    batches = list(stream(root, resample=False, batch_size=1, urls=urls, first_window_prob=1.0))
    # one pass: every clip of the good shards is there, and both bad files were counted
    keys_seen = len(batches)
    n_windows = sum(-(-c["motion"]["exp"].shape[0] // MODEL.w_cur) for c in clips[:4])
    assert keys_seen == n_windows
    assert int(batches[-1]["errors"]) >= 2
    # the endless training stream keeps going, counting each visit to a bad file
    it = iter(stream(root, urls=urls))
    last = [next(it) for _ in range(30)][-1]
    assert int(last["errors"]) > 0


def test_a_stream_of_only_bad_shards_stops_with_an_error(dataset, tmp_path):
    root, _ = dataset
    good, bad = corrupt_copies(root, tmp_path)
    headless = tmp_path / "shard-000092.tar"  # cut inside its first sample: nothing readable
    headless.write_bytes(Path(good[0]).read_bytes()[:3000])
    with pytest.raises(DataStreamError, match="in a row"):
        next(iter(stream(root, urls=[bad[1], str(headless)], max_consecutive_errors=20)))
    with pytest.raises(DataStreamError, match="no readable 'train' clip"):
        first_clip(bad[1:], "train", Normalizer(load_stats(root / "stats.json")), 16)


def test_feature_width_mismatch_is_an_error_not_a_skip(dataset):
    root, _ = dataset
    norm = Normalizer(load_stats(root / "stats.json"))
    urls = find_inputs(root).shards["train"]
    with pytest.raises(FeatureWidthError, match="width 32"):
        first_clip(urls, "train", norm, 32)
    wide = WindowStream(urls, norm, ModelConfig(**{**MODEL.to_dict(), "audio_dim": 32}), data_cfg(),
                        "train", 0, 4)
    with pytest.raises(FeatureWidthError):
        next(iter(wide))
    assert decode_clip({"__key__": "k", "json": b'{"split": "val"}'}, "train", norm, 16) is None


def test_dataset_mixing_gives_equal_shares(dataset, tmp_path):
    root, _ = dataset
    manifest = tmp_path / "clips.parquet"
    pd.DataFrame({"dataset": ["big"] * 3 + ["small"], "n_frames": [300, 300, 300, 100],
                  "kept": [True] * 4, "split": ["train"] * 4,
                  "shard": ["shard-000000.tar", "shard-000000.tar", "shard-000001.tar",
                            "shard-000001.tar"]}).to_parquet(manifest)
    mult = dataset_multipliers(manifest, {})
    assert mult["big"] * 900 == pytest.approx(mult["small"] * 100)
    assert 900 * mult["big"] + 100 * mult["small"] == pytest.approx(1000)
    weighted = dataset_multipliers(manifest, {"small": 3.0})
    assert weighted["small"] * 100 == pytest.approx(3 * weighted["big"] * 900)
    with pytest.raises(ValueError, match="absent"):
        dataset_multipliers(manifest, {"other": 1.0})
    with pytest.raises(ValueError, match="manifest"):
        dataset_multipliers(None, {"small": 1.0})
    inputs = find_inputs(root, manifest=manifest)
    assert [p.rsplit("/", 1)[1] for p in inputs.shards["train"]] == ["shard-000000.tar", "shard-000001.tar"]
    assert inputs.shards["val"] == []
    # drawn windows: frames from each dataset come out equal
    s = stream(root)
    s.multipliers = mult
    clips = [Clip(f"b{i}", np.zeros((300, 70), np.float32), np.zeros((300, 16), np.float16), "big")
             for i in range(30)] + [Clip(f"s{i}", np.zeros((100, 70), np.float32),
                                         np.zeros((100, 16), np.float16), "small") for i in range(10)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(clips))
    frames = {"big": 0, "small": 0}
    for spec in s._pooled_windows(iter([clips[i] for i in order]), rng):
        frames[spec.clip.dataset] += 1
    assert frames["small"] == pytest.approx(frames["big"], rel=0.2)


def test_find_inputs_needs_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards"):
        find_inputs(tmp_path)


def test_shards_without_clips_of_the_split_stop_with_an_error(dataset):
    root, _ = dataset
    val_only = [str(p) for p in sorted((root / "shards").glob("*.tar"))][-1:]  # holds the 2 val clips
    with pytest.raises(DataStreamError, match="shard visits without a clip"):
        next(iter(stream(root, urls=val_only)))


def test_missing_shards_named_by_the_manifest_are_an_error_naming_them(dataset, tmp_path):
    root, _ = dataset
    manifest = tmp_path / "clips.parquet"
    pd.DataFrame({"dataset": ["d"] * 3, "n_frames": [100] * 3, "kept": [True] * 3,
                  "split": ["train", "train", "val"], "key": ["a", "b", "c"],
                  "shard": ["shard-000000.tar", "shard-000077-train.tar", "shard-000078-val.tar"]}
                 ).to_parquet(manifest)
    with pytest.raises(MissingShardsError, match="2 of the 3 shards .* shard-000077-train.tar, "
                                                 "shard-000078-val.tar .*allow_missing_shards"):
        find_inputs(root, manifest=manifest)
    inputs = find_inputs(root, manifest=manifest, allow_missing_shards=True)
    assert [p.rsplit("/", 1)[1] for p in inputs.shards["train"]] == ["shard-000000.tar"]
    assert inputs.shards["val"] == []


def test_without_a_manifest_a_shard_named_for_a_split_serves_that_split_only(tmp_path):
    for name in ("shard-000000-train.tar", "shard-000000-val.tar", "shard-000001-train-01.tar",
                 "shard-000002.tar"):
        (tmp_path / name).write_bytes(b"")
    shards = find_inputs(tmp_path).shards
    names = {split: [p.rsplit("/", 1)[1] for p in paths] for split, paths in shards.items()}
    assert names == {"train": ["shard-000000-train.tar", "shard-000001-train-01.tar", "shard-000002.tar"],
                     "val": ["shard-000000-val.tar", "shard-000002.tar"]}
