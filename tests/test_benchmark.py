"""The test set builder and ``python -m training.benchmark`` end to end, with random weights, on real media.

A clip manifest in the pipeline's schema points at two real videos (validation clips of 7 and 10 s,
two people) plus clips the paper's rule leaves out; the builder cuts the test set from it and the
benchmark renders a few frames per item (a frame costs seconds on these CPUs) and scores them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.schema import CLIPS
from shards.vector import motion_to_vector
from tests.motion_fixtures import fixture_clips, write_dataset
from tests.test_sample import (
    ENCODER_DIM,
    TINY,
    random_model,
    template_stats,
    write_checkpoint,
)
from training.benchmark import COLUMNS, main
from training.metrics.video_io import read_frames
from training.test_set import (
    TestSetError,
    build_from_pipeline,
    read_test_set,
    select_clips,
)

FRAMES = 6  # per item: SyncNet needs > 5 frames, smoothness 3


def clip_row(clip_id: str, source: Path, start: float, end: float, split: str, group: str,
             kept: bool = True) -> dict:
    return {"clip_id": clip_id, "video_id": f"v-{group}", "source": str(source), "start_s": start, "end_s": end,
            "n_frames": int((end - start) * 25), "kept": kept, "split": split, "split_group": group}


@pytest.fixture(scope="module")
def pipeline_out(media, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline")
    rows = [
        clip_row("clipA000000000", media / "lp_d20.mp4", 0.0, 7.0, "val", "face:a"),
        clip_row("clipB000000000", media / "lp_d14.mp4", 2.0, 12.0, "val", "face:b"),
        clip_row("short000000000", media / "lp_d20.mp4", 0.0, 3.0, "val", "face:a"),     # under 5 s
        clip_row("train000000000", media / "lp_d14.mp4", 12.0, 17.5, "train", "face:c"),  # training split
        clip_row("dropped0000000", media / "lp_d20.mp4", 0.0, 6.0, "val", "face:d", kept=False),
        clip_row("leak0000000000", media / "lp_s13.mp4", 0.0, 5.0, "val", "face:c"),     # person seen in training
    ]
    # Clip A's motion in a real shard, where the manifest says it is (clip B's shard is missing).
    (sample,) = fixture_clips(media, n_clips=1, split="val")
    (shard,) = write_dataset(out, [sample], stats={"unused": True})
    rows[0].update(shard=shard.name, key=sample["key"])
    rows[1].update(shard="shard-000099.tar", key="gone")
    (out / "manifests").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=CLIPS), out / "manifests" / "clips.parquet")
    return out


@pytest.fixture(scope="module")
def test_set(pipeline_out, tmp_path_factory) -> Path:
    return build_from_pipeline(pipeline_out, tmp_path_factory.mktemp("testset"))


def test_builder_follows_the_papers_rule(pipeline_out, test_set, media):
    items = read_test_set(test_set)
    assert [i.id for i in items] == ["clipA0000000", "clipB0000000"]
    assert [i.speaker for i in items] == ["face:a", "face:b"]
    # The ground truth is the clip at 25 fps with its audio; the portrait is its first frame.
    truth = read_frames(items[1].ground_truth)
    source = read_frames(Path(pq.read_table(pipeline_out / "manifests" / "clips.parquet")["source"][1].as_py()),
                         2.0, 12.0)
    assert truth.shape == source.shape == (250, 512, 512, 3)
    assert np.abs(truth[:5].astype(int) - source[:5]).mean() < 3.0  # H.264 at crf 18
    import cv2
    portrait = cv2.cvtColor(cv2.imread(str(items[1].reference)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(portrait, source[0])
    # Clip A's true motion comes from its shard; clip B's shard is missing, so it has none.
    (sample,) = fixture_clips(media, n_clips=1, split="val")
    assert np.array_equal(np.load(items[0].motion), motion_to_vector(sample["motion"]).astype(np.float32))
    assert items[1].motion is None
    import soundfile as sf
    audio, rate = sf.read(items[1].audio)
    assert rate == 16000 and abs(len(audio) - 10 * 16000) <= 1
    # Per-speaker and speaker limits.
    table = pq.read_table(pipeline_out / "manifests" / "clips.parquet")
    assert len(select_clips(table, max_speakers=1)) == 1
    assert [c["clip_id"] for c in select_clips(table, min_s=2.0)] == ["clipA000000000", "short000000000",
                                                                        "clipB000000000"]
    assert len(select_clips(table, min_s=2.0, per_speaker=1)) == 2


def test_reading_a_list_names_every_problem(tmp_path, media):
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,reference,audio,ground_truth\na,{media / 'lp_portrait_s12.jpg'},missing.wav,\n"
                   f"a,{media / 'lp_d20.mp4'},{media / 'joyvasa_001.wav'},nowhere.mp4\n")
    with pytest.raises(TestSetError) as info:
        read_test_set(bad)
    text = str(info.value)
    assert "missing.wav" in text and "nowhere.mp4" in text and "duplicate id 'a'" in text
    (tmp_path / "nocol.csv").write_text("id,reference\na,b\n")
    with pytest.raises(TestSetError, match="audio"):
        read_test_set(tmp_path / "nocol.csv")
    good = tmp_path / "good.csv"
    good.write_text(f"id,reference,audio\nv,{media / 'lp_d20.mp4'},{media / 'joyvasa_001.wav'}\n")
    (item,) = read_test_set(good)
    assert item.reference_is_video and item.ground_truth is None


@pytest.fixture(scope="module")
def checkpoint(media, tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", random_model(TINY, 0),
                            template_stats(media, ENCODER_DIM))


@pytest.mark.slow  # renders 2 x 6 frames: minutes on 2 shared CPU cores
def test_benchmark_runs_end_to_end_with_random_weights(test_set, checkpoint, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["--checkpoint", str(checkpoint), "--test-set", str(test_set), "--out", str(out),
                 "--random-weights", "--max-frames", str(FRAMES), "--sampler", "ddim", "--steps", "2",
                 "--min-track", "6", "--min-face-size", "50", "--device", "cpu"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["random_weights"] and "RANDOM WEIGHTS" in report["warning"]
    assert report["n_items"] == 2 and report["n_frames"] == 2 * FRAMES
    for item in report["items"]:
        assert Path(item["video"]).is_file()
        gen, truth = item["generated"], item["ground_truth_scores"]
        assert gen["n_frames"] == truth["n_frames"] == FRAMES
        # The ground truth's real face is tracked and scored; a random renderer's face may not be.
        assert truth["sync"]["track_frames"] == FRAMES and np.isfinite(truth["sync_c"]) and truth["sync_d"] > 0
        assert gen["sync_c"] is not None or gen["sync"]["reason"]
        assert 0 <= gen["iqa"] <= 100 and 0 <= gen["smooth"] <= 100 and truth["smooth"] > gen["smooth"] - 100
        assert "expression" in item["motion_dynamics"]
    first, second = report["items"]
    assert first["motion_vs_truth"]["n_frames"] == FRAMES and first["motion_vs_truth"]["l2"]["expression"] > 0
    assert "motion_vs_truth" not in second
    assert report["aggregate"]["motion_l2"] == first["motion_vs_truth"]["l2"]
    fid = report["aggregate"]["set"]["fid"]
    assert fid["frames_generated"] == fid["frames_real"] == 2 * FRAMES and fid["value"] > 0
    assert "RANDOM" in fid["variant"] and report["weights"]["inception_fid"] == "random"
    assert "STAND-IN" in report["variants"]["quality"] and "piqe" in report["variants"]["quality"]
    fvd = report["aggregate"]["set"]["fvd"]
    assert fvd["variant"] == f"FVD-{FRAMES}" and fvd["clips_generated"] == 2 and fvd["value"] > 0
    table = (out / "results.md").read_text()
    assert "RANDOM WEIGHTS" in table
    header = next(line for line in table.splitlines() if line.startswith("| row |"))
    assert all(name in header for _, name in COLUMNS)
    assert "Rendered motion against the ground truth's" in table
    assert "| JoyVASA paper, Table 1 (CelebV-HQ test) | 68.97 | 72.42 | 4.85 | 13.53 | 459.04 | 99.60 |" in table
    page = (out / "index.html").read_text()
    assert page.count("<video") == 4 and "videos/clipA0000000.mp4" in page
    assert "RANDOM WEIGHTS" in capsys.readouterr().out


def test_missing_metric_weights_are_one_error(test_set, checkpoint, tmp_path, capsys):
    code = main(["--checkpoint", str(checkpoint), "--test-set", str(test_set), "--out", str(tmp_path / "b"),
                 "--weights-dir", str(tmp_path / "empty")])
    assert code == 2
    err = capsys.readouterr().err
    for name in ("syncnet_v2", "i3d_torchscript", "amt_s", "inception_fid", "liveportrait_warping_module",
                 "qalign_one_align"):
        assert name in err
    assert not (tmp_path / "b").exists()
