"""Read a video's frames at a constant 25 fps and its speech at 16 kHz, for scoring.

Every metric reads what a viewer would see: the frame on screen at each tick of a 25 fps clock
(the last frame whose timestamp is not after the tick), so a 30 fps source is resampled the way a
constant-rate decode would, and the metric code only ever handles 25 fps frames.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from shards.format import FPS, SAMPLE_RATE


def read_frames(path: str | Path, start_s: float = 0.0, end_s: float | None = None,
                max_frames: int | None = None, fps: int = FPS) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames at ``fps`` from ``start_s`` up to ``end_s`` (None: the end)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    times: list[float] = []
    decoded: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        frame_s = 1.0 / float(stream.average_rate or fps)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if end_s is not None and t >= end_s - 1e-6:
                break
            if t + frame_s <= start_s + 1e-6:
                continue  # shown entirely before the span
            times.append(t)
            decoded.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and t >= start_s + max_frames / fps:
                break
    if not decoded:
        raise ValueError(f"no frames in {path} between {start_s:.2f} s and {end_s} s")
    stop = times[-1] + frame_s if end_s is None else min(end_s, times[-1] + frame_s)
    n = int(np.floor((stop - start_s) * fps + 1e-6))
    if max_frames is not None:
        n = min(n, max_frames)
    ticks = start_s + np.arange(max(n, 1)) / fps
    shown = np.clip(np.searchsorted(np.asarray(times), ticks + 1e-6, side="right") - 1, 0, len(decoded) - 1)
    return np.stack([decoded[i] for i in shown])


def read_speech_span(path: str | Path, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """float32 16 kHz mono samples of the file's first audio track between the two times."""
    from models.audio_encoder import load_audio

    audio = load_audio(path)
    first = int(round(start_s * SAMPLE_RATE))
    last = len(audio) if end_s is None else int(round(end_s * SAMPLE_RATE))
    return np.ascontiguousarray(audio[first:last], dtype=np.float32)
