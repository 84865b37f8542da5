"""Shot splitting with PySceneDetect on real and synthesised cuts, and clip planning."""
from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.decode import DecodeError
from pipeline.probe import probe
from pipeline.shots import ClipPlan, make_clips, split_shots

CUTS_S = (3.0, 5.4)   # where the synthesised video changes source
DURATION_S = 7.4


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory) -> Path:
    """Three unrelated 25 fps sources back to back: hard cuts at 3.0 s and 5.4 s."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg binary is needed to build test media")
    path = tmp_path_factory.mktemp("shots") / "cuts.mp4"
    subprocess.run([
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=3",
        "-f", "lavfi", "-i", "mandelbrot=size=160x120:rate=25,trim=duration=2.4",
        "-f", "lavfi", "-i", "smptebars=size=160x120:rate=25:duration=2",
        "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1[v]", "-map", "[v]",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path),
    ], check=True)
    return path


def assert_contiguous(shots, duration):
    assert shots[0][0] == 0.0 and shots[-1][1] == pytest.approx(duration)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shots))


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_split_finds_hard_cuts(cut_video: Path, detector: str) -> None:
    shots = split_shots(cut_video, detector=detector)
    assert_contiguous(shots, DURATION_S)
    found = [start for start, _ in shots[1:]]
    assert found == pytest.approx(list(CUTS_S), abs=0.04 + 1e-9)  # within one frame


def test_split_ends_at_probe_duration_and_reads_uris(cut_video: Path) -> None:
    shots = split_shots(cut_video.as_uri())  # through pyarrow.fs
    assert shots == split_shots(cut_video)
    assert shots[-1][1] == probe(cut_video).duration_s


def test_threshold_is_configurable(cut_video: Path) -> None:
    assert split_shots(cut_video, threshold=255.0) == [(0.0, pytest.approx(DURATION_S))]


def test_real_talking_head_is_one_shot(media: Path) -> None:
    assert split_shots(media / "lp_d20.mp4") == [(0.0, 7.0)]


def test_split_rejects_bad_input(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DecodeError) as caught:
        split_shots(garbage)
    assert caught.value.reason == "not_media"
    with pytest.raises(ValueError):
        split_shots(garbage, detector="histogram")


# ---------------------------------------------------------------------------------------------
# make_clips (pure)


def test_margins_only_at_cuts_and_short_shots_rejected() -> None:
    shots = [(0.0, 10.0), (10.0, 15.0), (15.0, 40.0)]
    plan = make_clips(shots, duration_s=40.0)
    assert isinstance(plan, ClipPlan)
    clips, rejected = plan
    assert clips == [(0.0, 9.8), (15.2, 40.0)]          # no margin at the video's start and end
    assert rejected == [(10.2, 14.8, "too_short")]


def test_long_shots_split_into_near_equal_pieces() -> None:
    clips, rejected = make_clips([(0.0, 130.0)], duration_s=130.0, max_len_s=60.0)
    assert clips == [(0.0, 43.333), (43.333, 86.667), (86.667, 130.0)]
    assert rejected == []
    lengths = [e - s for s, e in clips]
    assert max(lengths) <= 60.0 and max(lengths) - min(lengths) < 0.01


def test_pieces_that_cannot_reach_min_length() -> None:
    # 11 s with max 10 s and min 8 s: two pieces would be 5.5 s, so one 10 s clip and 1 s rejected.
    clips, rejected = make_clips([(0.0, 11.0)], duration_s=11.0, min_len_s=8.0, max_len_s=10.0)
    assert clips == [(0.0, 10.0)] and rejected == [(10.0, 11.0, "too_short")]


def test_clips_are_deterministic_and_within_bounds() -> None:
    shots = [(0.0, 12.345678), (12.345678, 95.1), (95.1, 95.3), (95.3, 200.0)]
    first, second = make_clips(shots, 200.0), make_clips(shots, 200.0)
    assert first == second
    for start, end in first.clips:
        assert 8.0 <= end - start <= 60.0 and 0.0 <= start < end <= 200.0
    assert all(reason == "too_short" for *_, reason in first.rejected)


def test_make_clips_validates_settings() -> None:
    with pytest.raises(ValueError):
        make_clips([(0.0, 10.0)], 10.0, min_len_s=20.0, max_len_s=10.0)
    with pytest.raises(ValueError):
        make_clips([(0.0, 10.0)], 10.0, cut_margin_s=-1.0)
