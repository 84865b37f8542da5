"""A talking video written as it is rendered: H.264 at 25 fps with the speech as AAC, in one MP4.

Frames arrive in batches and go straight into the encoder, and the speech is encoded alongside up
to the last frame written, so memory does not grow with the video's length and the two streams
stay interleaved in time. The file appears atomically (a temporary name, renamed on success).

H.264's usual 4:2:0 chroma needs even sides; an odd-sized portrait is encoded in 4:4:4 instead of
being cropped or padded, so the video has exactly the portrait's size.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from shards.format import FPS, SAMPLE_RATE
from training.template import atomic_output

AUDIO_FRAME = 1024  # samples per AAC frame


class TalkingVideoWriter:
    """``with TalkingVideoWriter(path, width, height, audio) as out: out.write(frames)``.

    ``audio``: 16 kHz mono float32 in [-1, 1], or None for a silent video. Audio past the last
    written frame is dropped; a video longer than its audio gets silence after it ends.
    """

    def __init__(self, path: str | Path, width: int, height: int, audio: np.ndarray | None = None,
                 fps: int = FPS, crf: int = 18, preset: str = "veryfast"):
        self.path, self.width, self.height, self.fps = Path(path), int(width), int(height), fps
        self.audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        self.frames_written = 0
        self._audio_sent = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_output(self.path))
        self._container = self._stack.enter_context(av.open(str(tmp), mode="w", format="mp4"))
        self._video = self._container.add_stream("libx264", rate=fps)
        self._video.width, self._video.height = self.width, self.height
        even = self.width % 2 == 0 and self.height % 2 == 0
        self._video.pix_fmt = "yuv420p" if even else "yuv444p"
        self._video.options = {"crf": str(crf), "preset": preset}
        self._sound = None
        if self.audio is not None:
            self._sound = self._container.add_stream("aac", rate=SAMPLE_RATE)
            self._sound.layout = "mono"

    def write(self, frames: np.ndarray) -> None:
        """Append (B, H, W, 3) or (H, W, 3) uint8 RGB frames."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames must be uint8 (B, {self.height}, {self.width}, 3), "
                             f"got {frames.dtype} {frames.shape}")
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames_written
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
        # Whole AAC frames up to the end of the last video frame written.
        end = self.frames_written * SAMPLE_RATE // self.fps
        self._send_audio(end // AUDIO_FRAME * AUDIO_FRAME)

    def _send_audio(self, until: int) -> None:
        if self._sound is None:
            return
        until = min(until, len(self.audio))
        while self._audio_sent < until:
            chunk = self.audio[self._audio_sent:min(until, self._audio_sent + AUDIO_FRAME)]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, self._audio_sent
            self._container.mux(self._sound.encode(frame))
            self._audio_sent += len(chunk)

    def __enter__(self) -> "TalkingVideoWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._send_audio(self.frames_written * SAMPLE_RATE // self.fps)
                self._container.mux(self._video.encode())
                if self._sound is not None:
                    self._container.mux(self._sound.encode())
        finally:
            # atomic_output renames the file only when no exception is passing through.
            self._stack.__exit__(exc_type, exc, tb)
