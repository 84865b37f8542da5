"""Statistics that scale: a run grown by new videos merges the moments each chunk stored and ends
with the statistics of a fresh run over all of them, without reading a shard back; the README's
training command then trains on the output as written (the feature width from the statistics)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.build_shards import main
from pipeline.media_kit import make_clip
from pipeline.outdir import OutputDir
from pipeline.stats import compute_stats
from training.checkpoint import load_checkpoint
from training.run import run_from_args
from tests.pipeline_kit import TEST_OVERRIDES, ray_session, shard_members, write_list  # noqa: F401

pytestmark = pytest.mark.slow


def stats_of(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())


def assert_same_stats(a: dict, b: dict) -> None:
    assert (a["n_clips"], a["n_frames"]) == (b["n_clips"], b["n_frames"])
    for section, names in (("vector", ("mean", "std", "min", "max")), ("audio_feat", ("mean", "std")),
                           ("kp", ("mean",))):
        for name in names:
            np.testing.assert_allclose(a[section][name], b[section][name], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{section}.{name}")


def test_a_grown_run_gives_the_statistics_of_a_fresh_run(tmp_path: Path, media: Path, ray_session):  # noqa: F811
    rows = []
    for i in range(2):
        clip = make_clip(tmp_path / "inputs" / f"video_{i}.mp4", fps=25, size=(320, 240), duration=0.8,
                         seed=40 + i)
        rows.append({"path": str(clip.path), "dataset": "synthetic", "language": "en", "speaker": f"p{i}"})
    common = ["--random-weights", *TEST_OVERRIDES, "split.val_fraction=0"]

    grown = tmp_path / "grown"  # one video per chunk: the second run adds a chunk
    one, every = write_list(tmp_path / "one.csv", rows[:1]), write_list(tmp_path / "all.csv", rows)
    assert main(["--input", str(one), "--output", str(grown), *common, "work.videos_per_chunk=1"]) == 0
    before = stats_of(grown)
    assert main(["--input", str(every), "--output", str(grown), *common, "work.videos_per_chunk=1"]) == 0
    fresh = tmp_path / "fresh"
    assert main(["--input", str(every), "--output", str(fresh), *common, "work.videos_per_chunk=2"]) == 0

    assert before["n_clips"] == 1 and stats_of(grown)["n_clips"] == 2
    assert_same_stats(stats_of(grown), stats_of(fresh))  # 2 chunks of one video against one of two
    # the merged moments are the statistics of the samples read back from the shards
    read_back = compute_stats(OutputDir(fresh), [p.name for p in (fresh / "shards").glob("*.tar")])
    assert_same_stats(stats_of(fresh), read_back)
    assert sorted(p.name for p in (grown / "moments").iterdir()) == [f"chunk-{i:06d}.parquet" for i in range(2)]
    # the same arrays were written either way (the metadata names each run's chunk)
    arrays = [sorted((m["motion.npz"], m["audio_feat.npy"]) for m in shard_members(out).values())
              for out in (grown, fresh)]
    assert arrays[0] == arrays[1]

    # the README's training command, without overrides of the model's input width
    run = tmp_path / "run"
    summary = run_from_args(["--shards", str(fresh), "--out", str(run), "model.width=32", "model.layers=1",
                             "model.heads=2", "model.w_pre=5", "model.w_cur=10", "data.batch_size=4",
                             "data.num_workers=0", "train.max_steps=2", "train.progress=false",
                             "train.threads=1"])
    assert summary["step"] == 2
    width = stats_of(fresh)["audio_feat"]["dim"]
    assert load_checkpoint(run / "checkpoint.pt")["model_config"]["audio_dim"] == width != 768
