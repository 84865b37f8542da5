"""Training follows the manifest it is given, clip by clip: a re-thresholded manifest trains exactly
its kept clips, with statistics of that selection merged from the per-clip moments stored with the
data; the model's audio width follows the statistics; validation samples the whole split."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from configs import load_config
from manifests.audit import main as audit_main
from shards.reader import iter_samples
from shards.vector import motion_to_vector
from training.checkpoint import load_checkpoint
from training.data import (FeatureWidthError, WindowStream, find_inputs, make_loader, resolve_audio_dim,
                           validation_batches)
from training.model import ModelConfig
from training.normalize import Normalizer, StatsError
from training.run import run_from_args
from tests.output_fixture import FixtureOutput, build_output

# Small settings, without model.audio_dim: the width comes from the statistics.
SMALL = ["model.width=32", "model.layers=1", "model.heads=2", "model.w_pre=5", "model.w_cur=20",
         "train.threads=1", "train.progress=false", "data.batch_size=4", "data.num_workers=0",
         "train.val_batches=2"]
MODEL = ModelConfig(audio_dim=16, width=32, layers=1, heads=2, w_pre=5, w_cur=20)


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> FixtureOutput:
    return build_output(tmp_path_factory.mktemp("selection") / "out")


@pytest.fixture(scope="module")
def selection(output, tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """A manifest re-thresholded on quality (half the training clips go), written by the audit CLI;
    returns (manifest, kept training keys, dropped training keys)."""
    folder = tmp_path_factory.mktemp("rethreshold")
    train = [c for c in output.kept if c.split == "train"]
    cut = float(np.median([c.scores["score_quality"] for c in train]))
    rules = folder / "thresholds.yaml"
    rules.write_text(yaml.safe_dump({"thresholds": {"quality": {"min": cut}}}))
    manifest = folder / "new_clips.parquet"
    assert audit_main([str(output.root), "--rethreshold", str(rules), "--write-manifest", str(manifest)]) == 0
    kept = {c.clip_id for c in train if c.scores["score_quality"] >= cut}
    dropped = {c.clip_id for c in train} - kept
    assert kept and dropped
    return manifest, kept, dropped


def reference_stats(root: Path, keys: set[str]) -> dict[str, np.ndarray]:
    """The selection's statistics computed here from the samples themselves: plain numpy over the
    frames, and ranges without each clip's most extreme frame (the documented rule; clips here have
    fewer than 200 frames, so one frame at each end)."""
    vectors = []
    for shard in sorted((root / "shards").glob("*.tar")):
        vectors += [motion_to_vector(s["motion"]).astype(np.float64) for s in iter_samples(shard)
                    if s["__key__"] in keys]
    assert len(vectors) == len(keys)
    frames = np.concatenate(vectors)
    return {"mean": frames.mean(0), "std": frames.std(0), "n_frames": len(frames),
            "min": np.min([np.sort(v, 0)[1] for v in vectors], 0),
            "max": np.max([np.sort(v, 0)[-2] for v in vectors], 0)}


def test_selection_statistics_merge_from_the_stored_moments(output, selection):
    manifest, kept, dropped = selection
    inputs = find_inputs(output.root, manifest=manifest)
    assert inputs.keys["train"] == kept and inputs.stats_path is None
    stats = inputs.load_stats()
    expected = reference_stats(output.root, kept)
    assert stats["n_clips"] == len(kept) and stats["n_frames"] == expected["n_frames"]
    for name in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(stats["vector"][name], expected[name], rtol=1e-9, atol=1e-12)
    assert stats["audio_feat"]["dim"] == 16
    # the output's own manifest keeps its own stats.json, which describes all its training clips
    own = find_inputs(output.root)
    assert own.load_stats()["n_clips"] == len(kept | dropped)


def test_training_draws_only_the_kept_clips(output, selection, tmp_path):
    manifest, kept, dropped = selection
    summary = run_from_args(["--shards", str(output.root), "--out", str(tmp_path / "run"),
                             f"data.manifest={manifest}", "train.max_steps=3", "train.val_every=3",
                             "train.ckpt_every=3", *SMALL])
    assert summary["step"] == 3
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["stats"]["n_clips"] == len(kept)  # the selection's statistics, not the output's
    assert state["model_config"]["audio_dim"] == 16  # from the statistics
    # the training stream as the run builds it, through two loader workers: every key it yields
    inputs = find_inputs(output.root, manifest=manifest)
    cfg = OmegaConf.merge(load_config("train").data, {"batch_size": 8})
    stream = WindowStream(inputs.shards["train"], Normalizer(inputs.load_stats()), MODEL, cfg, "train", 0, 8,
                          keys=inputs.keys["train"], split_by_rank=True)
    seen: set[str] = set()
    for index, batch in enumerate(make_loader(stream, num_workers=2)):
        seen.update(batch["keys"])
        if index == 60:
            break
    assert seen == kept and not seen & dropped


def test_an_output_without_moments_says_how_to_get_statistics(output, selection, tmp_path):
    manifest, _, _ = selection
    old = Path(shutil.copytree(output.root, tmp_path / "old"))
    shutil.rmtree(old / "moments")
    with pytest.raises(StatsError, match="data.stats=PATH"):
        find_inputs(old, manifest=manifest).load_stats()


def test_audio_width_follows_the_statistics_and_a_conflict_names_both():
    assert resolve_audio_dim(None, 64) == 64
    assert resolve_audio_dim(64, 64) == 64 and resolve_audio_dim(32, None) == 32
    with pytest.raises(FeatureWidthError, match="64-wide.*model.audio_dim is 768"):
        resolve_audio_dim(768, 64)
    with pytest.raises(FeatureWidthError, match="set model.audio_dim"):
        resolve_audio_dim(None, None)
    assert load_config("train").model.audio_dim is None


def test_validation_batches_sample_the_whole_split_with_a_fixed_seed(output):
    inputs = find_inputs(output.root)
    normalizer = Normalizer(inputs.load_stats())
    cfg = load_config("train").data
    val_keys = {c.clip_id for c in output.kept if c.split == "val"}

    def draw(seed: int) -> list[dict]:
        return validation_batches(inputs.shards["val"], normalizer, MODEL, cfg, seed, n_batches=2,
                                  batch_size=2, keys=inputs.keys["val"])

    first, again, other = draw(0), draw(0), draw(1)
    assert len(first) == 2 and all(len(b["keys"]) == 2 for b in first)
    for a, b in zip(first, again):
        assert a["keys"] == b["keys"] and torch.equal(a["motion"], b["motion"])
    assert [b["keys"] for b in first] != [b["keys"] for b in other]
    # the whole split, not its first clip (whose 4 tiles alone would fill the first two batches)
    drawn = {k for b in first for k in b["keys"]}
    assert drawn <= val_keys and len(drawn) >= 2


@pytest.fixture(scope="module")
def split_output(tmp_path_factory) -> FixtureOutput:
    """The same output written as the job writes it now: one shard per chunk and split."""
    return build_output(tmp_path_factory.mktemp("split_shards") / "out", split_shards=True)


@pytest.mark.parametrize("layout", ["mixed shards (before split shards)", "split shards"])
def test_an_output_trains_and_validates_from_a_cached_validation_set(output, split_output, layout, tmp_path):
    fixture = output if layout.startswith("mixed") else split_output
    val_keys = {c.clip_id for c in fixture.kept if c.split == "val"}
    run_dir = tmp_path / "run"
    common = ["--shards", str(fixture.root), "--out", str(run_dir), "train.val_every=2", "train.ckpt_every=2",
              *SMALL]
    summary = run_from_args(common + ["train.max_steps=2"])
    assert [v[0] for v in summary["val_history"]] == [0, 2]
    cache = run_dir / "validation.pt"
    cached = torch.load(cache, weights_only=False)
    assert cached["keys"] and set(cached["keys"]) <= val_keys
    windows = [k for b in cached["batches"] for k in b["keys"]]
    assert len(windows) == 2 * 4 and set(windows) == set(cached["keys"])  # val_batches x batch_size
    written = cache.stat().st_mtime_ns
    # a resume reuses the cached windows, and so does a later validation of the checkpoint
    resumed = run_from_args(common + ["train.max_steps=4", "--resume"])
    assert cache.stat().st_mtime_ns == written and [v[0] for v in resumed["val_history"]] == [4]
    later = run_from_args(["--out", str(run_dir), "--validate"])
    assert cache.stat().st_mtime_ns == written
    assert (later["step"], later["windows"]) == (4, 8)
    assert [later["val_loss"], later["val_loss_ema"]] == pytest.approx(list(resumed["val_history"][-1][1:]),
                                                                       abs=1e-5)


def test_validation_clips_are_chosen_by_key_over_the_whole_split():
    """At a user's scale (20,000 validation clips in 400 shards): a fixed choice, the same on every
    call, spread over all shards, longer clips (more windows) more likely, another seed another set."""
    from training.validation_set import choose_clips

    rng = np.random.default_rng(0)
    n = 20_000
    val = pd.DataFrame({"key": [f"clip-{i:06d}" for i in range(n)],
                        "shard": [f"shard-{i // 50:06d}-val.tar" for i in range(n)],
                        "n_frames": np.where(np.arange(n) % 2 == 0, 100, 400) + rng.integers(0, 20, n)})
    first = choose_clips(val, 100, seed=0).head(1000)
    shuffled = val.sample(frac=1.0, random_state=1)  # the manifest's row order plays no part
    assert list(first["key"]) == list(choose_clips(shuffled, 100, seed=0).head(1000)["key"])
    shard_index = first["shard"].str.slice(6, 12).astype(int)
    assert shard_index.min() < 20 and shard_index.max() >= 380  # from the first shards to the last
    assert 0.4 < (shard_index < 200).mean() < 0.6
    long_share = (first["n_frames"] >= 400).mean()
    assert 0.68 < long_share < 0.76  # about 4.95 windows against 1.95: 72% of the first picks
    other = choose_clips(val, 100, seed=1).head(1000)
    assert len(set(first["key"]) & set(other["key"])) < 200


def test_the_validation_set_reads_only_its_clips_from_validation_shards(split_output, monkeypatch):
    from shards.reader import iter_raw
    from training import validation_set as vs

    inputs = find_inputs(split_output.root)
    normalizer = Normalizer(inputs.load_stats())
    calls: list[tuple[str, set[str]]] = []
    read = vs.read_samples

    def recording(url: str, keys: set[str]) -> dict:
        calls.append((url, set(keys)))
        found = read(url, keys)
        whole = {raw["__key__"]: raw for raw in iter_raw(url)}  # the same bytes as a full read
        for key, members in found.items():
            assert all(members[m] == whole[key][m] for m in members if not m.startswith("__"))
            assert "audio.flac" not in members
        return found

    monkeypatch.setattr(vs, "read_samples", recording)
    vset = vs.build_validation_set(inputs, normalizer, MODEL, load_config("train").data, n_batches=1,
                                   batch_size=3, seed=0)
    assert sum(len(b["keys"]) for b in vset.batches) == 3
    assert all(url.endswith("-val.tar") for url, _ in calls)
    requested = set().union(*(keys for _, keys in calls))
    val_clips = inputs.clips[inputs.clips["split"] == "val"]
    chosen = list(vs.choose_clips(val_clips, MODEL.w_cur, 0)["key"])
    assert vset.keys == chosen[:len(vset.keys)] and requested == set(vset.keys)
