"""The job's identity split end to end: the same input folder at two absolute paths gives the same
shards byte for byte (video ids and face groups do not depend on where the input lives), run.json
records how the split came out, and the group-share guard stops a run before anything is written.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.build_shards import main
from tests.pipeline_kit import TEST_OVERRIDES, cut, manifests, ray_session, run_json  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory, media: Path) -> Path:
    """Three short real cuts, no speaker labels: two of one person, one of another."""
    folder = tmp_path_factory.mktemp("faces") / "videos"
    folder.mkdir()
    cut(media / "lp_d14.mp4", folder / "d14_a.mp4", 1.0)
    cut(media / "lp_d20.mp4", folder / "d20.mp4", 1.0)
    short = cut(media / "lp_d14.mp4", folder / "long.mp4", 16.0)
    cut(short, folder / "d14_b.mp4", 1.0)  # a re-encode of the same start: same face, other bytes
    short.unlink()
    return folder


def test_two_absolute_paths_give_byte_identical_shards(folder: Path, tmp_path: Path, ray_session):  # noqa: F811
    first, second = tmp_path / "a" / "videos", tmp_path / "elsewhere" / "deeper" / "videos"
    shutil.copytree(folder, first)
    shutil.copytree(folder, second)
    outputs = []
    for input_folder, name in ((first, "out_a"), (second, "out_b")):
        out = tmp_path / name
        assert main(["--input", str(input_folder), "--output", str(out), "--random-weights",
                     *TEST_OVERRIDES, "identity.frames=2", "split.val_fraction=0.5"]) == 0
        outputs.append(out)
    shards = [{p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))} for out in outputs]
    assert shards[0] and shards[0] == shards[1]
    (videos_a, clips_a), (videos_b, clips_b) = manifests(outputs[0]), manifests(outputs[1])
    assert [v["video_id"] for v in videos_a] == [v["video_id"] for v in videos_b]
    assert [(c["clip_id"], c["split"], c["split_group"]) for c in clips_a] == \
           [(c["clip_id"], c["split"], c["split_group"]) for c in clips_b]
    assert {v["source"] for v in videos_b} == {str(p) for p in second.iterdir()}

    groups = {Path(c["source"]).name: c["split_group"] for c in clips_a}
    assert groups["d14_a.mp4"] == groups["d14_b.mp4"] != groups["d20.mp4"]
    split = run_json(outputs[0])["split"]
    assert split["val_fraction"] == 0.5 and split["videos"] == 3 and split["groups"] == 2
    assert split["largest_group_share"] == pytest.approx(2 / 3)
    kept = [c for c in clips_a if c["kept"]]
    assert split["val_share_clips"] == pytest.approx(sum(c["split"] == "val" for c in kept) / len(kept))
    assert split["sizes"] == {"1": 1, "2-3": 1}


def test_guard_stops_before_anything_is_written(folder: Path, tmp_path: Path, caplog, ray_session):  # noqa: F811
    out = tmp_path / "out"
    argv = ["--input", str(folder), "--output", str(out), "--random-weights", *TEST_OVERRIDES,
            "identity.frames=2", "identity.guard_min_videos=3", "identity.max_group_share=0.5"]
    with caplog.at_level("ERROR"):
        assert main(argv) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "one face group holds 66.7% of 3 videos" in line and "identity.backend=none" in line
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    # The user who knows the footage is two people raises the limit.
    assert main([*argv, "identity.max_group_share=0.7"]) == 0
    assert run_json(out)["split"]["groups"] == 2


def test_speakers_read_from_paths_decide_the_split(folder: Path, tmp_path: Path, ray_session):  # noqa: F811
    """``split.speaker_pattern`` labels the two d14 cuts from their names; the d20 cut, unmatched,
    keeps its face group; the labels reach the manifests, the split groups and run.json."""
    out = tmp_path / "out"
    assert main(["--input", str(folder), "--output", str(out), "--random-weights", *TEST_OVERRIDES,
                 "identity.frames=2", r"split.speaker_pattern=^(?P<speaker>d\d+)_"]) == 0
    videos, clips = manifests(out)
    speaker = {Path(v["source"]).name: v["speaker"] for v in videos}
    assert speaker == {"d14_a.mp4": "d14", "d14_b.mp4": "d14", "d20.mp4": None}
    groups = {Path(c["source"]).name: c["split_group"] for c in clips}
    assert groups["d14_a.mp4"] == groups["d14_b.mp4"] == "speaker:d14"
    assert groups["d20.mp4"].startswith("face:")
    assert all(c["speaker"] == speaker[Path(c["source"]).name] for c in clips)
    split = run_json(out)["split"]
    assert split["groups"] == 2
    assert split["speaker_pattern"] == {"pattern": r"^(?P<speaker>d\d+)_", "matched": 2, "listed": 0, "unmatched": 1}
