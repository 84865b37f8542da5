"""Probing and constant-rate decoding on real clips, synthesised clips and broken files.

Synthesised videos show their frame index as a 4x4 grid of black/white blocks (16 bits), so a
test can read back which source frame the decoder picked for every output frame.
"""
from __future__ import annotations

import itertools
import os
import resource
import shutil
import subprocess
import threading
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from pipeline.decode import DecodeError, decode_audio, iter_video_chunks, n_frames
from pipeline.probe import MediaTimeout, ProbeError, iter_with_timeout, probe, run_with_timeout

SIDE = 64  # synthesised frames are SIDE x SIDE, blocks SIDE/4 wide


def code_image(index: int, width: int = SIDE, height: int = SIDE) -> np.ndarray:
    bits = np.array([(index >> b) & 1 for b in range(16)], np.uint8).reshape(4, 4) * 255
    grey = np.kron(bits, np.ones((height // 4, width // 4), np.uint8))
    return np.repeat(grey[:, :, None], 3, axis=2)


def read_code(frame: np.ndarray) -> int:
    """The index shown by a decoded (possibly rescaled) frame: block centres above mid-grey."""
    h, w = frame.shape[:2]
    centres = frame[h // 8::h // 4, w // 8::w // 4, :].mean(axis=2)[:4, :4]
    bits = (centres > 128).astype(int).ravel()
    return int(sum(int(b) << i for i, b in enumerate(bits)))


def write_coded_video(path: Path, pts: list[int], time_base: Fraction, rate: int,
                      width: int = SIDE, height: int = SIDE) -> Path:
    """H.264 video whose frame i shows i and has timestamp pts[i] (in time_base units)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(code_image(i, width, height), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


VFR_STEPS_MS = [17, 33, 50, 83, 120]


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> dict[str, Any]:
    """Synthesised test media, built once per session."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg binary is needed to build test media")
    d = tmp_path_factory.mktemp("synth_media")
    files: dict[str, Any] = {}
    files["fps60"] = write_coded_video(d / "fps60.mp4", list(range(240)), Fraction(1, 60), 60)
    steps = np.random.default_rng(0).choice(VFR_STEPS_MS, size=120)
    vfr_pts = [0] + [int(x) for x in np.cumsum(steps)[:-1]]
    files["vfr_pts_ms"] = vfr_pts
    files["vfr_mp4"] = write_coded_video(d / "vfr.mp4", vfr_pts, Fraction(1, 1000), 30)
    files["vfr_mkv"] = write_coded_video(d / "vfr.mkv", vfr_pts, Fraction(1, 1000), 30)
    # Landscape 96x64 with the index code, tagged to be shown rotated.
    landscape = write_coded_video(d / "landscape.mp4", list(range(25)), Fraction(1, 25), 25, 96, 64)
    files["rot90"] = d / "rot90.mp4"
    ffmpeg("-i", str(landscape), "-c", "copy", "-metadata:s:v", "rotate=90", str(files["rot90"]))
    # Video plus 44.1 kHz stereo AAC: a 440 Hz tone from 2.0 s in the left channel only.
    files["tone"] = d / "tone.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=64x64:rate=25:duration=4",
           "-f", "lavfi", "-i", "aevalsrc=if(gte(t\\,2)\\,0.5*sin(2*PI*440*t)\\,0)|0:s=44100:d=4",
           "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "192k", "-shortest",
           str(files["tone"]))
    # Broken files.
    media_like = files["tone"].read_bytes()
    (d / "zero.mp4").write_bytes(b"")
    (d / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(20_000))
    files["zero"], files["garbage"] = d / "zero.mp4", d / "garbage.mp4"
    files["audio_only"] = d / "audio_only.m4a"
    ffmpeg("-i", str(files["tone"]), "-vn", "-c", "copy", str(files["audio_only"]))
    files["moov_cut"] = d / "moov_cut.mp4"  # index at the end, cut off
    files["moov_cut"].write_bytes(media_like[: len(media_like) // 2])
    whole_mkv = d / "whole.mkv"  # Matroska keeps no index a cut file could contradict
    ffmpeg("-i", str(files["fps60"]), "-c", "copy", str(whole_mkv))
    files["mkv_cut"] = d / "mkv_cut.mkv"
    files["mkv_cut"].write_bytes(whole_mkv.read_bytes()[: whole_mkv.stat().st_size // 2])
    return files


@pytest.fixture(scope="session")
def truncated_faststart(media: Path, tmp_path_factory) -> Path:
    """lp_d20 has its index first: cut in half it opens but its data stops at about 3.2 s."""
    path = tmp_path_factory.mktemp("broken") / "half.mp4"
    data = (media / "lp_d20.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def decode_all(path, start_s, end_s, **kwargs) -> np.ndarray:
    chunks = list(iter_video_chunks(path, start_s, end_s, **kwargs))
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.uint8)


# ---------------------------------------------------------------------------------------------
# Probe

REAL = {  # file: (duration_s, fps, width, height, has_audio)
    "lp_d20.mp4": (7.0, 25.0, 480, 480, True),
    "lp_d14.mp4": (17.867, 30.0, 512, 512, True),
    "lp_s13.mp4": (4.12, 25.0, 720, 1080, True),
    "carphone.mp4": (4.004, 30000 / 1001, 176, 144, False),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_probe_real_media(media: Path, name: str) -> None:
    duration, fps, width, height, has_audio = REAL[name]
    info = probe(media / name)
    assert info.duration_s == pytest.approx(duration, abs=1e-3)
    assert info.fps == pytest.approx(fps, rel=1e-4)
    assert (info.width, info.height, info.rotation) == (width, height, 0)
    assert info.display_size == (width, height)
    assert info.is_vfr is False and info.has_video is True
    assert info.n_frames_est == round(duration * fps)
    assert info.has_audio is has_audio and info.video_codec == "h264"
    assert info.size_bytes == (media / name).stat().st_size
    if has_audio:
        assert (info.audio_rate, info.audio_channels, info.audio_codec) == (44100, 2, "aac")
    else:
        assert info.audio_rate is None and info.audio_codec is None


def test_probe_uri_goes_through_pyarrow(media: Path) -> None:
    local = probe(media / "lp_d20.mp4")
    assert probe((media / "lp_d20.mp4").as_uri()) == local


def test_probe_synthesised(synth) -> None:
    fast = probe(synth["fps60"])
    assert fast.fps == pytest.approx(60.0) and fast.n_frames_est == 240 and not fast.is_vfr
    for key in ("vfr_mp4", "vfr_mkv"):
        vfr = probe(synth[key])
        assert vfr.is_vfr, key
        assert vfr.fps == pytest.approx(120 / vfr.duration_s, rel=0.05)
    rotated = probe(synth["rot90"])
    assert (rotated.width, rotated.height, rotated.rotation) == (96, 64, 90)
    assert rotated.display_size == (64, 96)


def test_probe_audio_only_when_allowed(synth) -> None:
    info = probe(synth["audio_only"], require_video=False)
    assert info.has_video is False and info.has_audio and info.audio_rate == 44100
    assert info.duration_s == pytest.approx(4.0, abs=0.05)


@pytest.mark.parametrize("key,reason", [
    ("zero", "empty"), ("garbage", "not_media"), ("moov_cut", "truncated"),
    ("audio_only", "no_video"), ("missing", "not_found"),
])
def test_probe_broken_inputs(synth, key: str, reason: str) -> None:
    path = synth[key] if key in synth else synth["zero"].parent / "does_not_exist.mp4"
    with pytest.raises(ProbeError) as caught:
        probe(path)
    assert caught.value.reason == reason
    assert str(caught.value).startswith(reason + ": ") and path.name in str(caught.value)


def test_probe_truncated_data(truncated_faststart: Path, synth) -> None:
    with pytest.raises(ProbeError, match="index needs") as caught:
        probe(truncated_faststart)
    assert caught.value.reason == "truncated"
    with pytest.raises(ProbeError, match="states 4.00 s but its video data ends at") as caught:
        probe(synth["mkv_cut"])
    assert caught.value.reason == "truncated"


# ---------------------------------------------------------------------------------------------
# Video at a constant 25 fps


def test_n_frames_rounding() -> None:
    assert n_frames(0.0, 8.0) == 200
    assert n_frames(0.0, 8.02) == 201  # 200.5 rounds up
    assert n_frames(1.0, 9.019) == 200
    assert n_frames(0.2, 7.0) == 170


@pytest.mark.parametrize("name,start,end", [
    ("lp_d20.mp4", 0.0, 7.0), ("lp_d14.mp4", 2.5, 11.37), ("carphone.mp4", 0.3, 4.004),
    ("lp_s13.mp4", 1.0, 4.12),
])
def test_frame_counts_real(media: Path, name: str, start: float, end: float) -> None:
    info = probe(media / name)
    chunks = list(iter_video_chunks(media / name, start, end, chunk_frames=40, size=(48, 64)
                                    if name == "lp_s13.mp4" else None))
    assert all(c.dtype == np.uint8 and 0 < len(c) <= 40 for c in chunks)
    assert sum(len(c) for c in chunks) == n_frames(start, end)
    width, height = (48, 64) if name == "lp_s13.mp4" else info.display_size
    assert all(c.shape[1:] == (height, width, 3) for c in chunks)


@pytest.mark.parametrize("start,end", [(0.0, 4.0), (0.52, 3.33), (1.0, 2.0)])
def test_60fps_picks_nearest_previous(synth, start: float, end: float) -> None:
    frames = decode_all(synth["fps60"], start, end, chunk_frames=16)
    picked = [read_code(f) for f in frames]
    expected = [int(np.floor((start + k / 25) * 60 + 1e-9)) for k in range(n_frames(start, end))]
    assert picked == expected


@pytest.mark.parametrize("key", ["vfr_mp4", "vfr_mkv"])
@pytest.mark.parametrize("start,end", [(0.0, 6.0), (1.23, 4.5)])
def test_vfr_picks_latest_previous_timestamp(synth, key: str, start: float, end: float) -> None:
    pts_ms = np.asarray(synth["vfr_pts_ms"])
    frames = decode_all(synth[key], start, end, chunk_frames=50)
    picked = [read_code(f) for f in frames]
    times_ms = [round((start + k / 25) * 1000) for k in range(n_frames(start, end))]
    expected = [int(np.searchsorted(pts_ms, t, side="right")) - 1 for t in times_ms]
    assert len(picked) == n_frames(start, end)
    assert picked == expected
    assert all(b >= a for a, b in itertools.pairwise(picked))  # time never runs backwards


def test_rotation_matches_ffmpeg_autorotate(synth) -> None:
    path = synth["rot90"]
    ours = decode_all(path, 0.0, 0.4)
    assert ours.shape == (10, 96, 64, 3)  # stored 96x64, shown upright as 64 wide, 96 high
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(96, 64, 3)
    assert np.abs(ours[0].astype(int) - reference.astype(int)).mean() < 3
    small = decode_all(path, 0.0, 0.4, size=(32, 48))
    assert small.shape == (10, 48, 32, 3)


def test_decode_uri_matches_local(media: Path) -> None:
    local = decode_all(media / "carphone.mp4", 1.0, 2.0)
    remote = decode_all((media / "carphone.mp4").as_uri(), 1.0, 2.0)
    assert np.array_equal(local, remote)


def test_video_truncated_mid_span(truncated_faststart: Path, synth) -> None:
    assert len(decode_all(truncated_faststart, 0.0, 2.0)) == 50  # before the cut: fine
    with pytest.raises(DecodeError, match="span needs up to 7.00 s") as caught:
        decode_all(truncated_faststart, 0.0, 7.0)
    assert caught.value.reason == "truncated"
    with pytest.raises(DecodeError, match="span needs up to 3.50 s") as caught:
        decode_all(synth["mkv_cut"], 1.0, 3.5)
    assert caught.value.reason == "truncated"


@pytest.mark.parametrize("key,reason", [("zero", "not_media"), ("garbage", "not_media"),
                                        ("moov_cut", "truncated"), ("audio_only", "no_video")])
def test_decode_broken_inputs(synth, key: str, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_all(synth[key], 0.0, 1.0)
    assert caught.value.reason == reason and synth[key].name in str(caught.value)


def test_bad_span_is_rejected_at_call(media: Path) -> None:
    with pytest.raises(ValueError):
        iter_video_chunks(media / "lp_d20.mp4", 3.0, 2.0)


# ---------------------------------------------------------------------------------------------
# Audio at 16 kHz mono


def test_audio_length_and_content_match_ffmpeg(media: Path) -> None:
    path = media / "lp_d20.mp4"  # AAC stereo 44.1 kHz
    audio = decode_audio(path, 0.0, 7.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == n_frames(0.0, 7.0) * 640 == 112_000
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", "16000",
                          "-f", "f32le", "-"], capture_output=True, check=True).stdout
    reference = np.frombuffer(raw, np.float32)[: len(audio)]
    n = min(len(reference), len(audio))
    corr = np.corrcoef(audio[:n], reference[:n])[0, 1]
    assert corr > 0.99
    span = decode_audio(path, 2.0, 5.3)
    assert len(span) == n_frames(2.0, 5.3) * 640
    # Same samples as the whole-file decode at 2.0 s, up to the resampler's sub-sample phase.
    lags = range(-3, 4)
    corrs = [np.corrcoef(span[1000:47_000], audio[32_000 + lag + 1000:32_000 + lag + 47_000])[0, 1]
             for lag in lags]
    assert lags[int(np.argmax(corrs))] == 0 and max(corrs) > 0.95


def test_audio_timing_and_mono_mix(synth) -> None:
    audio = decode_audio(synth["tone"], 1.0, 3.0)
    assert len(audio) == 50 * 640
    envelope = np.abs(audio) > 0.05
    onset = int(np.argmax(envelope))
    assert abs(onset - 16_000) < 16_000 * 0.005  # the tone starts at 2.0 s = 1.0 s into the span
    # Left carries 0.5 * sin, right silence: the channel mean has amplitude 0.25.
    tone = audio[20_000:30_000]
    assert np.sqrt(np.mean(tone ** 2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.05)
    spectrum = np.abs(np.fft.rfft(tone))
    assert np.argmax(spectrum) * 16_000 / len(tone) == pytest.approx(440, abs=2)


def test_audio_pads_a_short_stream_end(synth) -> None:
    audio = decode_audio(synth["tone"], 3.0, 4.3)  # the stream stops at 4.0 s
    assert len(audio) == n_frames(3.0, 4.3) * 640
    assert np.abs(audio[-3000:]).max() == 0.0


def test_audio_missing_and_truncated(media: Path, truncated_faststart: Path) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_audio(media / "carphone.mp4", 0.0, 2.0)
    assert caught.value.reason == "no_audio"
    assert len(decode_audio(truncated_faststart, 0.5, 2.5)) == 50 * 640
    with pytest.raises(DecodeError, match="before the span does") as caught:
        decode_audio(truncated_faststart, 0.0, 7.0)
    assert caught.value.reason == "truncated"


# ---------------------------------------------------------------------------------------------
# Memory and timeouts


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_long_video_decodes_in_bounded_memory(tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg binary is needed to build test media")
    path = tmp_path / "ten_minutes.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=600", "-c:v", "libx264",
           "-preset", "ultrafast", "-g", "250", str(path))
    chunk_frames = 250
    chunk_bytes = chunk_frames * 64 * 64 * 3          # 3 MB; the whole video is 184 MB
    rss_before = _rss_bytes()
    rss_peak = rss_before
    total = 0
    tracemalloc.start()
    try:
        for chunk in iter_video_chunks(path, 0.0, 600.0, chunk_frames=chunk_frames, threads=1):
            assert len(chunk) <= chunk_frames
            total += len(chunk)
            rss_peak = max(rss_peak, _rss_bytes())
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 15_000
    assert traced_peak < 4 * chunk_bytes + 2_000_000
    assert rss_peak - rss_before < 60_000_000


def test_run_with_timeout() -> None:
    assert run_with_timeout(lambda x: x * 2, 5.0, 21) == 42
    with pytest.raises(ZeroDivisionError):
        run_with_timeout(lambda: 1 / 0, 5.0)
    began = time.monotonic()
    with pytest.raises(MediaTimeout, match="within 0.2 s"):
        run_with_timeout(time.sleep, 0.2, 10)
    assert time.monotonic() - began < 1.0


def test_iter_with_timeout_per_item() -> None:
    def slow_second():
        yield 1
        time.sleep(10)
        yield 2

    got = []
    began = time.monotonic()
    with pytest.raises(MediaTimeout):
        for item in iter_with_timeout(slow_second, 0.3):
            got.append(item)  # noqa: PERF402 - items before the timeout
    assert got == [1] and time.monotonic() - began < 2.0


def test_hanging_input_times_out(tmp_path: Path) -> None:
    """Opening a FIFO nobody writes blocks forever inside FFmpeg: a real hang."""
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)
    try:
        began = time.monotonic()
        with pytest.raises(DecodeError) as caught:
            decode_audio(fifo, 0.0, 1.0, timeout_s=0.5)
        assert caught.value.reason == "timeout"
        with pytest.raises(DecodeError) as caught:
            decode_all(fifo, 0.0, 1.0, timeout_s=0.5)
        assert caught.value.reason == "timeout"
        assert time.monotonic() - began < 5.0
    finally:
        # Release the abandoned readers: a writer that opens and closes gives them EOF.
        def release() -> None:
            with open(fifo, "wb"):
                pass
        threading.Thread(target=release, daemon=True).start()
