"""Synthesised talking-face clips and broken inputs, made offline in seconds.

Why: the pipeline must be tested at many frame rates, sizes and audio layouts, and real footage
covers only a few. Each clip here is a frontal face (a real frame from the media folder, or a
drawn face when the media is absent) whose mouth opens with the energy of real speech, muxed with
that speech as H.264 + AAC through PyAV. Every clip records what it promises (fps, duration, size,
streams) and the mouth opening per frame, so tests can measure the file against the promise.

Usage: ``python -m pipeline.media_kit OUT_DIR`` writes the standard set and the broken inputs.
"""
from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from pipeline.media import media_dir
from shards.format import SAMPLE_RATE

SPEECH_RATE = SAMPLE_RATE
SPEECH_FILES = ("joyvasa_001.wav", "joyvasa_006.wav", "speech_2spk_30s.wav")
FACE_VIDEO = "lp_d20.mp4"
BASE_SIZE = 480  # base face images are square, this many pixels a side
HAAR_CASCADE = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class SynthClip:
    """A written clip and what it promises. Audio fields are 0 when the clip has no audio track."""

    path: Path
    fps: Fraction
    n_frames: int
    duration: float  # n_frames / fps, seconds
    size: tuple[int, int]  # (width, height)
    sample_rate: int
    channels: int
    has_audio: bool
    mouth_opening: np.ndarray  # (n_frames,) in [0, 1], 0 = closed
    mouth_center: np.ndarray  # (n_frames, 2) int (x, y) in output pixels, head sway included
    mouth_axes: tuple[int, int]  # (half width, half height) of the fully open mouth, pixels
    speech_rms: np.ndarray  # (n_frames,) RMS of the 16 kHz speech within each video frame
    face_source: str  # "lp_d20.mp4" or "drawn"
    speech_source: str  # "<file>@<start seconds>" or "synthetic"


@dataclass(frozen=True)
class BaseFace:
    """A square frontal face image with the place where the mouth is drawn."""

    image: np.ndarray  # (BASE_SIZE, BASE_SIZE, 3) uint8 RGB
    mouth_center: tuple[int, int]
    mouth_half_width: int
    source: str


# ----------------------------------------------------------------------------------------------
# Faces


def detect_faces(image_rgb: np.ndarray) -> np.ndarray:
    """Haar frontal-face boxes (N, 4) as x, y, w, h: the detector the offline face backend uses."""
    cascade = _haar_cascade()
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


@functools.lru_cache(maxsize=1)
def _haar_cascade() -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(HAAR_CASCADE)


@functools.lru_cache(maxsize=4)
def load_base_face(folder: Path) -> BaseFace:
    """The first frame of the real face video in ``folder``, or a drawn face when it is absent.

    The mouth is placed from the Haar box (lips sit about 82% down a Haar face box), so the
    drawn mouth lands on the real lips.
    """
    if not (folder / FACE_VIDEO).is_file():
        return draw_face()
    with av.open(str(folder / FACE_VIDEO)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    image = cv2.resize(frame, (BASE_SIZE, BASE_SIZE), interpolation=cv2.INTER_AREA)
    boxes = detect_faces(image)
    if len(boxes) != 1:
        raise RuntimeError(f"expected one face in {FACE_VIDEO}'s first frame, found {len(boxes)}")
    x, y, w, h = boxes[0]
    return BaseFace(image, (int(x + w / 2), int(y + 0.82 * h)), int(0.13 * w), FACE_VIDEO)


def draw_face() -> BaseFace:
    """A flat-shaded cartoon face (hair, skin, brows, eyes, nose, lips) that Haar detects."""
    image = np.full((BASE_SIZE, BASE_SIZE, 3), (70, 90, 110), np.uint8)
    cx, cy = BASE_SIZE // 2, BASE_SIZE // 2
    cv2.ellipse(image, (cx, cy - 30), (125, 150), 0, 0, 360, (50, 35, 25), -1)  # hair
    cv2.ellipse(image, (cx, cy + 10), (110, 145), 0, 0, 360, (225, 180, 150), -1)  # skin
    for side in (-1, 1):
        cv2.ellipse(image, (cx + side * 45, cy - 45), (30, 7), 0, 0, 360, (60, 40, 30), -1)  # brow
        cv2.ellipse(image, (cx + side * 45, cy - 18), (24, 11), 0, 0, 360, (245, 245, 240), -1)
        cv2.circle(image, (cx + side * 45, cy - 18), 9, (40, 30, 25), -1)  # iris
    cv2.line(image, (cx - 10, cy - 10), (cx - 14, cy + 30), (195, 150, 125), 4)  # nose ridge
    cv2.ellipse(image, (cx, cy + 35), (14, 8), 0, 0, 360, (170, 120, 100), -1)  # nose tip
    cv2.ellipse(image, (cx, cy + 80), (35, 8), 0, 0, 360, (170, 70, 70), -1)  # closed lips
    image = cv2.GaussianBlur(image, (0, 0), 3)
    return BaseFace(image, (cx, cy + 80), 35, "drawn")


# ----------------------------------------------------------------------------------------------
# Speech


def load_speech(duration: float, seed: int = 0, speech: str | Path | np.ndarray | None = None,
                folder: Path | None = None) -> tuple[np.ndarray, str]:
    """``duration`` seconds of mono float32 speech at 16 kHz and a label saying where it came from.

    ``speech`` may be an array (mono, 16 kHz), a wav path (absolute or relative to the media
    folder), or None: then a real speech file picked by ``seed`` from the media folder, cut at the
    livelier of a few seeded offsets, or a synthetic voiced signal when the media is absent.
    """
    folder = media_dir() if folder is None else folder
    n = math.ceil(duration * SPEECH_RATE)
    if isinstance(speech, np.ndarray):
        return _fit_length(np.asarray(speech, np.float32).reshape(-1), n), "array"
    rng = np.random.default_rng(seed)
    if speech is None:
        if not all((folder / name).is_file() for name in SPEECH_FILES):
            return synthetic_speech(duration, seed), "synthetic"
        path = folder / SPEECH_FILES[seed % len(SPEECH_FILES)]
    else:
        path = Path(speech) if Path(speech).is_absolute() else folder / speech
    signal, rate = sf.read(str(path), dtype="float32", always_2d=True)
    signal = signal.mean(axis=1)
    if rate != SPEECH_RATE:
        signal = _resample(signal, rate, SPEECH_RATE)
    if len(signal) <= n:
        return _fit_length(signal, n), f"{path.name}@0.00"
    starts = rng.integers(0, len(signal) - n, size=5)
    liveliness = [np.std(frame_rms(signal[s:s + n], SPEECH_RATE, 25)) for s in starts]
    start = int(starts[int(np.argmax(liveliness))])
    return signal[start:start + n].copy(), f"{path.name}@{start / SPEECH_RATE:.2f}"


def synthetic_speech(duration: float, seed: int = 0) -> np.ndarray:
    """A voiced stand-in for speech: a harmonic tone on a gliding pitch, in syllable-rate bursts."""
    rng = np.random.default_rng(seed)
    n = math.ceil(duration * SPEECH_RATE)
    t = np.arange(n) / SPEECH_RATE
    f0 = 130 + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / SPEECH_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 11))
    envelope = np.zeros(n)
    onset = rng.uniform(0.0, 0.15)
    while onset < duration:  # syllables of 120-280 ms, gaps of 40-350 ms: about 4 per second
        length = int(rng.uniform(0.12, 0.28) * SPEECH_RATE)
        start = int(onset * SPEECH_RATE)
        burst = rng.uniform(0.4, 1.0) * np.hanning(length)[: n - start]
        envelope[start:start + len(burst)] = burst
        onset += length / SPEECH_RATE + rng.uniform(0.04, 0.35)
    signal = envelope * voice + 0.003 * rng.standard_normal(n)
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def frame_rms(signal: np.ndarray, sample_rate: int, fps: float | Fraction,
              n_frames: int | None = None) -> np.ndarray:
    """RMS of ``signal`` within each video frame's time span [i/fps, (i+1)/fps)."""
    if n_frames is None:
        n_frames = int(len(signal) * Fraction(fps) / sample_rate)
    edges = np.round(np.arange(n_frames + 1) * sample_rate / float(fps)).astype(np.int64)
    edges = np.minimum(edges, len(signal))
    power = np.concatenate([[0.0], np.cumsum(np.square(signal, dtype=np.float64))])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt((power[edges[1:]] - power[edges[:-1]]) / counts)


def mouth_opening_from_rms(rms: np.ndarray) -> np.ndarray:
    """Map energy to opening in [0, 1]: closed at the quiet floor, fully open at loud speech."""
    floor, loud = np.percentile(rms, 10), np.percentile(rms, 95)
    return np.clip((rms - floor) / max(loud - floor, 1e-8), 0.0, 1.0)


def _fit_length(signal: np.ndarray, n: int) -> np.ndarray:
    """Repeat or cut ``signal`` to exactly ``n`` samples."""
    if len(signal) == 0:
        raise ValueError("speech signal is empty")
    return np.resize(signal, n).astype(np.float32)


def _resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    g = math.gcd(rate_in, rate_out)
    return resample_poly(signal, rate_out // g, rate_in // g).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Clips


def as_frame_rate(fps: float | Fraction) -> Fraction:
    """Exact frame rate: 29.97 means 30000/1001 (and 23.976, 59.94 likewise)."""
    if isinstance(fps, Fraction):
        return fps
    for ntsc in (24, 30, 60):
        if abs(fps - ntsc * 1000 / 1001) < 0.005:
            return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def make_clip(path: str | Path, fps: float | Fraction = 25, size: tuple[int, int] = (320, 240),
              duration: float = 4.0, sample_rate: int = 16000, channels: int = 1,
              audio: bool = True, speech: str | Path | np.ndarray | None = None,
              seed: int = 0) -> SynthClip:
    """Write a talking-face clip (H.264, and AAC unless ``audio`` is False) and return its promise.

    ``size`` is (width, height), both even (yuv420p). The clip has round(duration * fps) frames.
    """
    path = Path(path)
    width, height = size
    if width % 2 or height % 2 or min(width, height) < 64:
        raise ValueError(f"size must be even and at least 64x64, got {width}x{height}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    rate = as_frame_rate(fps)
    n_frames = round(duration * rate)
    if n_frames < 1:
        raise ValueError(f"duration {duration} s at {float(rate)} fps gives no frames")
    seconds = float(n_frames / rate)
    folder = media_dir()
    face = load_base_face(folder)
    voice, speech_source = load_speech(seconds, seed, speech, folder)

    rms = frame_rms(voice, SPEECH_RATE, rate, n_frames)
    opening = mouth_opening_from_rms(rms)
    canvas, scale, offset = _fit_on_canvas(face.image, width, height)
    half_width = max(3, round(face.mouth_half_width * scale))
    axes = (half_width, max(2, round(0.55 * half_width)))
    sway = np.round(_head_sway(n_frames, rate, max(2.0, 4.0 * scale), seed)).astype(np.int64)
    centers = np.round(np.array(face.mouth_center) * scale + offset).astype(np.int64) + sway

    def frames() -> Iterator[np.ndarray]:
        for i in range(n_frames):
            shift = np.float32([[1, 0, sway[i, 0]], [0, 1, sway[i, 1]]])
            frame = cv2.warpAffine(canvas, shift, (width, height), borderMode=cv2.BORDER_REPLICATE)
            _draw_mouth(frame, centers[i], axes[0], opening[i] * axes[1])
            yield frame

    track = None
    if audio:
        track = _speaker_signal(voice, sample_rate, channels, round(seconds * sample_rate))
    _mux(path, frames(), rate, (width, height), track, sample_rate)
    return SynthClip(
        path=path, fps=rate, n_frames=n_frames, duration=seconds, size=(width, height),
        sample_rate=sample_rate if audio else 0, channels=channels if audio else 0, has_audio=audio,
        mouth_opening=opening.astype(np.float32), mouth_center=centers, mouth_axes=axes,
        speech_rms=rms.astype(np.float32), face_source=face.source, speech_source=speech_source,
    )


def _fit_on_canvas(image: np.ndarray, width: int,
                   height: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Scale the square face to 90% of the shorter side, centre it, repeat its edges outwards."""
    side = max(2, int(0.9 * min(width, height)))
    scale = side / image.shape[0]
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    left, top = (width - side) // 2, (height - side) // 2
    canvas = cv2.copyMakeBorder(small, top, height - side - top, left, width - side - left,
                                cv2.BORDER_REPLICATE)
    return canvas, scale, np.array([left, top], dtype=np.float64)


def _head_sway(n_frames: int, fps: Fraction, amplitude: float, seed: int) -> np.ndarray:
    """A slow side-to-side and nodding drift (n_frames, 2) in pixels: frames never stand still."""
    phase = np.random.default_rng(seed + 1).uniform(0, 2 * np.pi, size=2)
    t = np.arange(n_frames) / float(fps)
    dx = amplitude * np.sin(2 * np.pi * t / 2.3 + phase[0])
    dy = 0.5 * amplitude * np.sin(2 * np.pi * t / 3.1 + phase[1])
    return np.stack([dx, dy], axis=1)


def _draw_mouth(frame: np.ndarray, center: np.ndarray, half_width: int, half_height: float) -> None:
    """A dark open mouth with lip-coloured rims; nothing when closed (the face's own lips show)."""
    if half_height < 0.25:
        return
    bits = 4  # sub-pixel precision so the opening grows smoothly
    c = (int(center[0]) << bits, int(center[1]) << bits)
    outer = (half_width << bits, round((half_height + 2) * (1 << bits)))
    inner = (half_width << bits, round(half_height * (1 << bits)))
    cv2.ellipse(frame, c, outer, 0, 0, 360, (150, 60, 60), -1, cv2.LINE_AA, bits)
    cv2.ellipse(frame, c, inner, 0, 0, 360, (30, 10, 12), -1, cv2.LINE_AA, bits)


def _speaker_signal(voice: np.ndarray, sample_rate: int, channels: int,
                    n_samples: int) -> np.ndarray:
    """The speech at ``sample_rate`` as (channels, n_samples) float32; the right one is quieter."""
    signal = voice if sample_rate == SPEECH_RATE else _resample(voice, SPEECH_RATE, sample_rate)
    signal = _fit_length(signal, n_samples)
    signal = 0.9 * signal / max(float(np.max(np.abs(signal))), 1e-6)
    layers = [signal] if channels == 1 else [signal, 0.7 * signal]
    return np.stack(layers).astype(np.float32)


def _mux(path: Path, frames: Iterable[np.ndarray] | None, fps: Fraction | None,
         size: tuple[int, int] | None, audio: np.ndarray | None, sample_rate: int) -> None:
    """Encode RGB frames as H.264 and (channels, n) float audio as AAC, interleaved in time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = audio_stream = None
        if frames is not None:
            video = container.add_stream("libx264", rate=fps)
            video.width, video.height = size
            video.pix_fmt = "yuv420p"
            video.options = {"preset": "veryfast", "crf": "18", "threads": "2"}
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
            audio_stream.bit_rate = 96000 * audio.shape[0]
        written = 0  # audio samples handed to the encoder so far

        def push_audio(until: int) -> None:
            nonlocal written
            until = min(until, audio.shape[1])
            if until > written:
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, written:until]),
                                                   format="fltp", layout=audio_stream.layout)
                chunk.sample_rate, chunk.pts = sample_rate, written
                chunk.time_base = Fraction(1, sample_rate)
                container.mux(audio_stream.encode(chunk))
                written = until

        if video is not None:
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / fps
                container.mux(video.encode(frame))
                if audio_stream is not None:
                    push_audio(round((i + 1) / fps * sample_rate))
            container.mux(video.encode(None))
        if audio_stream is not None:
            push_audio(audio.shape[1])
            container.mux(audio_stream.encode(None))


# ----------------------------------------------------------------------------------------------
# Sets


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the standard set, named after its frame rate, size and audio."""

    name: str
    fps: float | Fraction
    size: tuple[int, int]
    sample_rate: int
    channels: int
    audio: bool
    duration: float


STANDARD_SPECS: tuple[ClipSpec, ...] = (
    ClipSpec("f25_320x240_16k_mono", 25, (320, 240), 16000, 1, True, 3.0),
    ClipSpec("f30_480x480_44k_stereo", 30, (480, 480), 44100, 2, True, 3.0),
    ClipSpec("f2997_640x360_48k_mono", Fraction(30000, 1001), (640, 360), 48000, 1, True, 3.0),
    ClipSpec("f60_360x640_16k_stereo", 60, (360, 640), 16000, 2, True, 2.0),
    ClipSpec("f25_640x360_48k_stereo", 25, (640, 360), 48000, 2, True, 4.0),
    ClipSpec("f2997_320x240_44k_stereo", Fraction(30000, 1001), (320, 240), 44100, 2, True, 2.5),
    ClipSpec("f25_480x480_silent", 25, (480, 480), 16000, 1, False, 3.0),
    ClipSpec("f60_320x240_silent", 60, (320, 240), 16000, 1, False, 2.0),
)


def make_standard_set(out_dir: str | Path) -> dict[str, SynthClip]:
    """The standard matrix: 25/30/29.97/60 fps, four sizes, 16/44.1/48 kHz, mono/stereo/none."""
    out_dir = Path(out_dir)
    return {
        spec.name: make_clip(out_dir / f"{spec.name}.mp4", fps=spec.fps, size=spec.size,
                             duration=spec.duration, sample_rate=spec.sample_rate,
                             channels=spec.channels, audio=spec.audio, seed=seed)
        for seed, spec in enumerate(STANDARD_SPECS)
    }


BROKEN_KINDS = ("zero_bytes", "truncated", "wav_as_mp4", "mp4_as_txt", "audio_only_mp4",
                "audio_only_m4a", "video_only", "garbage")


def make_broken_inputs(out_dir: str | Path) -> dict[str, Path]:
    """Files a video pipeline must reject or treat specially, keyed by the kind of damage.

    zero_bytes: empty .mp4. truncated: the first 30% of a valid mp4 (its index is at the end, so
    it is lost). wav_as_mp4: a wav file named .mp4. mp4_as_txt: a valid mp4 named .txt.
    audio_only_mp4 / audio_only_m4a: AAC without a video stream. video_only: H.264 without an
    audio stream. garbage: random bytes named .mp4.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "_valid"
    valid = make_clip(work / "valid.mp4", fps=25, size=(160, 120), duration=2.0, seed=11)
    voice, _ = load_speech(2.0, seed=11)
    paths = {kind: out_dir / name for kind, name in zip(BROKEN_KINDS, (
        "zero_bytes.mp4", "truncated.mp4", "speech_wav.mp4", "clip_mp4.txt", "audio_only.mp4",
        "audio_only.m4a", "video_only.mp4", "garbage.mp4"))}

    paths["zero_bytes"].write_bytes(b"")
    data = valid.path.read_bytes()
    paths["truncated"].write_bytes(data[: int(0.3 * len(data))])
    sf.write(str(paths["wav_as_mp4"]), voice, SPEECH_RATE, format="WAV", subtype="PCM_16")
    paths["mp4_as_txt"].write_bytes(data)
    for kind in ("audio_only_mp4", "audio_only_m4a"):
        _mux(paths[kind], None, None, None, voice[None, :], SPEECH_RATE)
    make_clip(paths["video_only"], fps=25, size=(160, 120), duration=2.0, audio=False, seed=12)
    paths["garbage"].write_bytes(np.random.default_rng(13).bytes(64 * 1024))
    valid.path.unlink()
    work.rmdir()
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for clip in make_standard_set(args.out_dir).values():
        audio = f"{clip.sample_rate} Hz x{clip.channels}" if clip.has_audio else "no audio"
        print(f"{clip.path}  {float(clip.fps):.3f} fps  {clip.size[0]}x{clip.size[1]}  "
              f"{clip.duration:.2f} s  {audio}  face={clip.face_source}  "
              f"speech={clip.speech_source}")
    for kind, path in make_broken_inputs(args.out_dir / "broken").items():
        print(f"{path}  broken: {kind}")


if __name__ == "__main__":
    main()
