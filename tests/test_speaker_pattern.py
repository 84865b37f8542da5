"""Speaker labels read from the videos' paths (``split.speaker_pattern``), relative to the input."""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline.inputs import InputError, list_inputs
from pipeline.speaker_pattern import label_speakers

VOXCELEB = ["id00012/21Uxsk56VDQ/00001.mp4", "id00012/2DLq_Kkc1r8/00016.mp4", "id00015/0fijmz4vTVU/00004.mp4",
            "id10001/1zcIwhmdeo4/00001.mp4"]


def make_tree(root: Path, names: list[str]) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def speakers(spec: Path | str, pattern: str | None) -> dict[str, str | None]:
    videos, _ = label_speakers(list_inputs(spec), pattern, str(spec))
    return {Path(v.source).name if "://" not in v.source else v.source: v.speaker for v in videos}


def test_voxceleb_layout_gives_the_same_speakers_wherever_the_folder_lives(tmp_path: Path) -> None:
    first = make_tree(tmp_path / "data" / "vox", VOXCELEB)
    second = tmp_path / "mnt" / "deeper" / "id99999" / "vox"  # an id-like folder above must not count
    shutil.copytree(first, second)
    labels = []
    for root in (first, second, first.as_uri()):
        videos, counts = label_speakers(list_inputs(root), r"^(id\d+)/", str(root))
        labels.append([v.speaker for v in videos])
        assert asdict(counts) == {"pattern": r"^(id\d+)/", "matched": 4, "listed": 0, "unmatched": 0}
    assert labels[0] == labels[1] == labels[2] == ["id00012", "id00012", "id00015", "id10001"]


def test_named_group_and_whole_match(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "hdtf", ["WDA_BarackObama_000.mp4", "WDA_BarackObama_001.mp4",
                                         "RD_Radio1 old_000.mp4"])
    assert speakers(root, r"^[A-Z]+_(?P<speaker>[A-Za-z0-9 ]+?)_\d+") == {
        "WDA_BarackObama_000.mp4": "BarackObama", "WDA_BarackObama_001.mp4": "BarackObama",
        "RD_Radio1 old_000.mp4": "Radio1 old"}  # a space in a local path is matched as a space
    assert speakers(root, r"Obama")["WDA_BarackObama_000.mp4"] == "Obama"  # no group: the match


def test_a_listed_speaker_wins_and_lists_match_from_their_folder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "vox", VOXCELEB)
    (root / "list.csv").write_text("path,speaker\n"
                                   "id00012/21Uxsk56VDQ/00001.mp4,alice\n"
                                   "id00015/0fijmz4vTVU/00004.mp4,\n"
                                   f"{tmp_path / 'elsewhere' / 'id00777' / 'x.mp4'},\n")
    videos, counts = label_speakers(list_inputs(root / "list.csv"), r"(id\d+)/", str(root / "list.csv"))
    # a source outside the list's folder is matched by its whole path
    assert [v.speaker for v in videos] == ["alice", "id00015", "id00777"]
    assert (counts.matched, counts.listed, counts.unmatched) == (2, 1, 0)


def test_unmatched_videos_keep_face_identity_and_are_counted(tmp_path: Path, caplog) -> None:
    root = make_tree(tmp_path / "mixed", [*VOXCELEB, "extras/interview.mp4"])
    with caplog.at_level(logging.WARNING):
        videos, counts = label_speakers(list_inputs(root), r"^(id\d+)/", str(root))
    assert [v.speaker for v in videos][0] is None and (counts.matched, counts.unmatched) == (4, 1)  # extras/ sorts first
    assert "1 of 5 videos (e.g. extras/interview.mp4)" in caplog.text


@pytest.mark.parametrize("pattern, message", [
    (r"^(id\d+/", "not a regular expression"),
    (r"^speaker_(\w+)", "matched none of the 4 input videos' paths"),
])
def test_a_bad_pattern_is_refused_before_anything_runs(tmp_path: Path, pattern: str, message: str) -> None:
    root = make_tree(tmp_path / "vox", VOXCELEB)
    with pytest.raises(InputError, match=message):
        label_speakers(list_inputs(root), pattern, str(root))
    with pytest.raises(InputError, match="must be a string"):
        label_speakers(list_inputs(root), {"x": "y"}, str(root))  # type: ignore[arg-type]


def test_no_pattern_changes_nothing(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "vox", VOXCELEB)
    videos = list_inputs(root)
    assert label_speakers(videos, None, str(root)) == (videos, None)


def test_the_job_refuses_bad_input_in_one_line(tmp_path: Path, caplog) -> None:
    from pipeline.build_shards import main

    root = make_tree(tmp_path / "vox", VOXCELEB)
    out = tmp_path / "out"
    for argv, message in ((["--input", str(tmp_path / "missing")], "input spec not found"),
                          (["--input", str(root), "split.speaker_pattern=^(id"], "not a regular expression")):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([*argv, "--output", str(out), "--random-weights"]) == 2
        (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert message in line
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
