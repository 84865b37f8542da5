"""The job's identity split end to end: the same input folder at two absolute paths gives the same
shards byte for byte (video ids and face groups do not depend on where the input lives), run.json
records how the split came out, and the group-share guard stops a run before anything is written.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.build_shards import main
from pipeline.inputs import content_id
from shards.identity import identity_group
from shards.split import assign_split, split_value
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
    # d20 is alone, its nearest videos both d14's (0.65-0.69 away): in neither split exactly when
    # the two groups lie on different sides.
    apart = assign_split(groups["d14_a.mp4"], 0.5) != assign_split(groups["d20.mp4"], 0.5)
    assert split["left_out_videos"] == int(apart)
    assert all((c["reason"] == "ambiguous_identity") == apart for c in clips_a if c["source"].endswith("d20.mp4"))


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
    keeps its face group; the labels reach the manifests, the split groups and run.json. The
    validation share is set between the two groups' hash values: d20, alone and nearest to d14's
    videos, could be either side's, and is left out of both, its clips rejected before any model."""
    d14, d20 = "speaker:d14", identity_group(content_id(str(folder / "d20.mp4")))
    between = (split_value(d14) + split_value(d20)) / 2
    assert assign_split(d14, between) != assign_split(d20, between)
    out = tmp_path / "out"
    assert main(["--input", str(folder), "--output", str(out), "--random-weights", *TEST_OVERRIDES,
                 "identity.frames=2", r"split.speaker_pattern=^(?P<speaker>d\d+)_",
                 f"split.val_fraction={between!r}"]) == 0
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
    d20_clips = [c for c in clips if c["source"].endswith("d20.mp4")]
    assert d20_clips and all(not c["kept"] and (c["stage"], c["reason"]) == ("identity", "ambiguous_identity")
                             and "speaker:d14" in c["error"] and c["shard"] is None for c in d20_clips)
    rejections = run_json(out)["counts"]["clip_rejections"]
    assert split["left_out_videos"] == 1 and rejections["identity/ambiguous_identity"] == len(d20_clips)
