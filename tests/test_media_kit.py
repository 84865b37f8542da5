"""The media kit keeps its promises, measured on the written files with independent readers.

ffprobe (the Debian binary) reads the stream metadata; PyAV decodes the pixels and samples. The
mouth is measured as the darkness of the mouth region in the decoded frames and compared with the
energy of the decoded audio track, so a clip passes only if what a viewer would see follows what a
listener would hear.
"""
from __future__ import annotations

import itertools
import json
import mimetypes
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import decord
import numpy as np
import pytest

from pipeline.media import ENV_VAR
from pipeline.media_kit import (
    BROKEN_KINDS,
    SPEECH_FILES,
    SPEECH_RATE,
    STANDARD_SPECS,
    SynthClip,
    detect_faces,
    load_speech,
    make_broken_inputs,
    make_clip,
    make_standard_set,
    synthetic_speech,
)

CLIP_NAMES = [spec.name for spec in STANDARD_SPECS]
MIN_MOUTH_CORRELATION = 0.6
HAAR_SAMPLES = 6  # frames per clip checked with the face detector


# ----------------------------------------------------------------------------------------------
# Independent readers


def ffprobe(path: Path) -> dict:
    """Streams and format of ``path`` as ffprobe reports them."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
         str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(result.stdout)


def streams_of(probe: dict, kind: str) -> list[dict]:
    return [s for s in probe["streams"] if s["codec_type"] == kind]


def rms_per_frame(samples: np.ndarray, rate: int, fps: Fraction, n_frames: int) -> np.ndarray:
    bounds = [round(i * rate / fps) for i in range(n_frames + 1)]
    return np.array([np.sqrt(np.mean(np.square(samples[a:b]))) if b > a else 0.0
                     for a, b in itertools.pairwise(bounds)])


@dataclass
class Measured:
    """What the decoded file holds."""

    n_frames: int
    frame_shape: tuple[int, int]  # (height, width)
    pts_seconds: np.ndarray
    mouth_darkness: np.ndarray  # mean (255 - luma) over the region the mouth can occupy
    faces_per_sample: list[int]
    mouth_inside_face: list[bool]
    max_sway_px: float  # largest shift of the whole frame against the first one
    audio_channels: int
    audio_rate: int
    audio_samples: int
    audio_rms: np.ndarray | None  # per video frame, from the decoded track


def measure(clip: SynthClip) -> Measured:
    """Decode ``clip.path`` with PyAV and take every measurement the tests need in one pass."""
    (x0, y0), (x1, y1) = mouth_region(clip)
    luma, pts = [], []
    with av.open(str(clip.path)) as container:
        for frame in container.decode(video=0):
            luma.append(frame.to_ndarray(format="gray"))
            pts.append(float(frame.pts * frame.time_base))
    darkness = np.array([255.0 - y[y0:y1, x0:x1].mean() for y in luma])

    sampled = np.linspace(0, len(luma) - 1, HAAR_SAMPLES).astype(int)
    faces, inside = [], []
    for i in sampled:
        boxes = detect_faces(cv2.cvtColor(luma[i], cv2.COLOR_GRAY2RGB))
        faces.append(len(boxes))
        mx, my = clip.mouth_center[i]
        inside.append(any(x <= mx < x + w and y <= my < y + h for x, y, w, h in boxes))
    first = np.float32(luma[0])
    sway = max(np.hypot(*cv2.phaseCorrelate(first, np.float32(y))[0]) for y in luma[1:])

    channels = rate = n_samples = 0
    audio_rms = None
    with av.open(str(clip.path)) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            chunks = [f.to_ndarray() for f in container.decode(stream)]
            samples = np.concatenate(chunks, axis=1)  # planar float: (channels, n)
            channels, n_samples = samples.shape
            audio_rms = rms_per_frame(samples[0], rate, clip.fps, clip.n_frames)
    return Measured(len(luma), luma[0].shape, np.array(pts), darkness, faces, inside, float(sway),
                    channels, rate, n_samples, audio_rms)


def mouth_region(clip: SynthClip) -> tuple[tuple[int, int], tuple[int, int]]:
    """One fixed box holding the mouth in every frame, wherever the head sways."""
    half_w, half_h = clip.mouth_axes
    lo = clip.mouth_center.min(axis=0) - (half_w + 2, half_h + 4)
    hi = clip.mouth_center.max(axis=0) + (half_w + 3, half_h + 5)
    width, height = clip.size
    return (max(0, lo[0]), max(0, lo[1])), (min(width, hi[0]), min(height, hi[1]))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def best_lag(seen: np.ndarray, heard: np.ndarray, max_lag: int = 5) -> int:
    """The shift (in frames) of ``seen`` against ``heard`` that correlates best."""
    n = len(seen)
    scores = {
        lag: correlation(seen[max(0, lag):n + min(0, lag)], heard[max(0, -lag):n - max(0, lag)])
        for lag in range(-max_lag, max_lag + 1)
    }
    return max(scores, key=scores.get)


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def standard_set(media, tmp_path_factory) -> dict[str, SynthClip]:
    return make_standard_set(tmp_path_factory.mktemp("standard_set"))


@pytest.fixture(scope="session")
def measured(standard_set) -> dict[str, Measured]:
    """Measurements of each standard clip, decoded once and shared by the tests below."""
    class MeasuredOnDemand(dict):
        def __missing__(self, name: str) -> Measured:
            self[name] = measure(standard_set[name])
            return self[name]

    return MeasuredOnDemand()


@pytest.fixture(scope="session")
def broken(tmp_path_factory) -> dict[str, Path]:
    return make_broken_inputs(tmp_path_factory.mktemp("broken"))


@pytest.fixture()
def no_media(tmp_path, monkeypatch) -> Path:
    empty = tmp_path / "no_media"
    empty.mkdir()
    monkeypatch.setenv(ENV_VAR, str(empty))
    return empty


# ----------------------------------------------------------------------------------------------
# Standard set: promises against measurements


def test_standard_set_covers_the_matrix(standard_set):
    clips = standard_set.values()
    assert {round(float(c.fps), 2) for c in clips} == {25.0, 29.97, 30.0, 60.0}
    assert {c.size for c in clips} >= {(320, 240), (480, 480), (640, 360), (360, 640)}
    assert {c.sample_rate for c in clips if c.has_audio} == {16000, 44100, 48000}
    assert {c.channels for c in clips if c.has_audio} == {1, 2}
    assert {c.has_audio for c in clips} == {True, False}
    assert {c.face_source for c in clips} == {"lp_d20.mp4"}
    assert {c.speech_source.split("@")[0] for c in clips} == set(SPEECH_FILES)


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_ffprobe_reports_promised_streams(standard_set, name):
    clip = standard_set[name]
    probe = ffprobe(clip.path)
    (video,) = streams_of(probe, "video")
    assert video["codec_name"] == "h264"
    assert (video["width"], video["height"]) == clip.size
    assert abs(float(Fraction(video["avg_frame_rate"])) - float(clip.fps)) < 0.01
    assert abs(float(Fraction(video["r_frame_rate"])) - float(clip.fps)) < 0.01
    assert int(video["nb_frames"]) == clip.n_frames
    one_frame = 1 / float(clip.fps)
    assert abs(float(video["duration"]) - clip.duration) <= one_frame
    assert abs(float(probe["format"]["duration"]) - clip.duration) <= one_frame

    audio = streams_of(probe, "audio")
    assert len(audio) == int(clip.has_audio)
    if clip.has_audio:
        assert audio[0]["codec_name"] == "aac"
        assert int(audio[0]["sample_rate"]) == clip.sample_rate
        assert int(audio[0]["channels"]) == clip.channels
        assert abs(float(audio[0]["duration"]) - clip.duration) <= one_frame


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_decoded_frames_and_samples_match_promise(standard_set, measured, name):
    clip, m = standard_set[name], measured[name]
    assert m.n_frames == clip.n_frames
    assert m.frame_shape == (clip.size[1], clip.size[0])
    assert np.allclose(np.diff(m.pts_seconds), 1 / float(clip.fps), atol=1e-3)
    assert abs(m.pts_seconds[-1] + 1 / float(clip.fps) - clip.duration) < 1e-3
    if clip.has_audio:
        assert (m.audio_channels, m.audio_rate) == (clip.channels, clip.sample_rate)
        # AAC codes whole frames of 1024 samples: the decoder may return up to one frame of padding.
        decoded_seconds = m.audio_samples / m.audio_rate
        one_frame, one_aac_frame = 1 / float(clip.fps), 1024 / m.audio_rate
        assert clip.duration - one_frame <= decoded_seconds <= clip.duration + one_aac_frame
    else:
        assert m.audio_rms is None


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_mouth_follows_speech_energy(standard_set, measured, name):
    clip, m = standard_set[name], measured[name]
    assert np.std(clip.mouth_opening) > 0.15, "the speech excerpt barely varies"
    heard = m.audio_rms if clip.has_audio else clip.speech_rms
    r = correlation(m.mouth_darkness, heard)
    assert r > MIN_MOUTH_CORRELATION, f"mouth darkness vs speech RMS correlation {r:.2f}"
    assert abs(best_lag(m.mouth_darkness, heard)) <= 1, "mouth and speech are out of sync"


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_face_is_found_by_haar_and_head_moves(standard_set, measured, name):
    m = measured[name]
    assert m.faces_per_sample == [1] * HAAR_SAMPLES
    assert all(m.mouth_inside_face)
    assert m.max_sway_px >= 1.0


def test_clip_rejects_odd_size(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_clip(tmp_path / "odd.mp4", size=(321, 240), duration=0.2)


# ----------------------------------------------------------------------------------------------
# Without the media folder


def test_fallback_without_media_is_a_detectable_talking_face(no_media, tmp_path):
    clip = make_clip(tmp_path / "drawn.mp4", fps=30, size=(320, 240), duration=2.0,
                     sample_rate=44100, channels=2, seed=3)
    assert (clip.face_source, clip.speech_source) == ("drawn", "synthetic")
    probe = ffprobe(clip.path)
    assert len(streams_of(probe, "video")) == 1
    (audio,) = streams_of(probe, "audio")
    assert (int(audio["sample_rate"]), int(audio["channels"])) == (44100, 2)
    m = measure(clip)
    assert m.n_frames == clip.n_frames == 60
    assert correlation(m.mouth_darkness, m.audio_rms) > MIN_MOUTH_CORRELATION
    assert m.faces_per_sample == [1] * HAAR_SAMPLES
    assert all(m.mouth_inside_face)


def test_synthetic_speech_is_modulated_at_syllable_rate():
    signal = synthetic_speech(4.0, seed=0)
    envelope = rms_per_frame(signal, SPEECH_RATE, Fraction(100), 400)  # 10 ms hops
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))
    freqs = np.fft.rfftfreq(len(envelope), d=0.01)
    peak = freqs[np.argmax(spectrum)]
    assert 1.5 <= peak <= 8.0, f"envelope peaks at {peak:.2f} Hz"
    voiced = np.abs(np.fft.rfft(signal[:SPEECH_RATE]))
    f0 = np.fft.rfftfreq(SPEECH_RATE, 1 / SPEECH_RATE)[np.argmax(voiced)]
    assert 80 <= f0 <= 400, f"strongest component at {f0:.0f} Hz is not a voice pitch"


def test_fallback_speech_when_media_missing(no_media):
    signal, source = load_speech(1.0, seed=0)
    assert source == "synthetic" and signal.shape == (SPEECH_RATE,)


def test_real_speech_is_cut_from_the_media(media):
    signal, source = load_speech(2.0, seed=1)
    assert source.startswith("joyvasa_006.wav@") and signal.shape == (2 * SPEECH_RATE,)
    assert np.sqrt(np.mean(np.square(signal))) > 0.01


# ----------------------------------------------------------------------------------------------
# Broken inputs


def test_broken_set_has_every_kind(broken):
    assert set(broken) == set(BROKEN_KINDS)
    assert all(path.is_file() for path in broken.values())


@pytest.mark.parametrize("kind", ["zero_bytes", "truncated", "garbage"])
def test_unreadable_inputs_fail_to_open(broken, kind):
    path = broken[kind]
    assert path.suffix == ".mp4"
    with pytest.raises(av.FFmpegError), av.open(str(path)) as container:
        for _ in container.decode(video=0):
            pass
    with pytest.raises((RuntimeError, decord.DECORDError)):
        decord.VideoReader(str(path))


def test_zero_bytes_and_truncated_sizes(broken):
    assert broken["zero_bytes"].stat().st_size == 0
    whole = broken["mp4_as_txt"].stat().st_size  # the same kind of valid clip
    assert 0 < broken["truncated"].stat().st_size < 0.5 * whole


@pytest.mark.parametrize("kind", ["wav_as_mp4", "audio_only_mp4", "audio_only_m4a"])
def test_audio_only_inputs_have_no_video(broken, kind):
    path = broken[kind]
    probe = ffprobe(path)
    assert streams_of(probe, "video") == []
    assert len(streams_of(probe, "audio")) == 1
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(path))


def test_wav_named_mp4_is_a_wav(broken):
    path = broken["wav_as_mp4"]
    assert path.suffix == ".mp4" and path.read_bytes()[:4] == b"RIFF"
    assert ffprobe(path)["format"]["format_name"] == "wav"


def test_mp4_named_txt_is_a_valid_mp4(broken):
    path = broken["mp4_as_txt"]
    assert mimetypes.guess_type(path.name)[0] == "text/plain"
    assert path.read_bytes()[4:8] == b"ftyp"
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 50


def test_video_only_has_no_audio(broken):
    path = broken["video_only"]
    probe = ffprobe(path)
    assert len(streams_of(probe, "video")) == 1
    assert streams_of(probe, "audio") == []
    with pytest.raises(decord.DECORDError):
        decord.AudioReader(str(path), sample_rate=SPEECH_RATE)


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_standard_set_and_broken_inputs(tmp_path):
    out = tmp_path / "kit"
    subprocess.run([sys.executable, "-m", "pipeline.media_kit", str(out)], check=True, timeout=300,
                   cwd=Path(__file__).resolve().parents[1], capture_output=True)
    assert sorted(p.stem for p in out.glob("*.mp4")) == sorted(CLIP_NAMES)
    assert len(list((out / "broken").iterdir())) == len(BROKEN_KINDS)
