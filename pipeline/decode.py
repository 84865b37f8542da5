"""Decode a span of a video at a constant 25 fps and its audio at 16 kHz mono.

Frame count. A span ``[start_s, end_s)`` has ``n_frames(start_s, end_s, fps)`` =
``floor((end_s - start_s) * fps + 0.5)`` output frames, on the span in whole milliseconds
(round half up: 8.02 s at 25 fps is 200.5, so 201 frames), and exactly
``n_frames * sample_rate / fps`` audio samples (640 per frame at 25 fps and 16 kHz), so the
video and audio of a clip always agree in length.

Frame choice. Output frame ``k`` shows time ``t_k = start_s + k / fps`` and is the source frame
with the latest presentation time ``<= t_k`` (nearest previous, as a player would be showing
at that instant). Times come from the decoded timestamps, never from frame indices, so
variable frame rate inputs come out right; a 60 fps input gives source frames
``floor(k * 60 / 25)``. Before the first decoded frame the first frame is used. Times are
compared in ticks of the stream's time base, so float error cannot shift a frame.

Orientation and size. Frames are turned upright by the display-matrix rotation and, when
``size`` is given, scaled (by libswscale, before turning) so the upright frame is ``size``.

Memory. Frames are produced in chunks of at most ``chunk_frames``; nothing holds the whole
video. A worker thread decodes one chunk ahead, so at most three chunks are alive at once.

Failures raise ``DecodeError`` with a reason: ``no_audio``, ``no_video``, ``truncated`` (the
data ends before the span does), ``corrupt`` (packets in the span fail to decode), ``timeout``,
or the ``ProbeError`` reason when the file cannot be opened (``not_media``, ``not_found``...).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import av
import numpy as np

from pipeline.inputs import span_ms
from pipeline.probe import (
    MediaError,
    MediaTimeout,
    display_rotation,
    iter_with_timeout,
    open_media,
    run_with_timeout,
    stream_start_s,
)
from shards.format import FPS, SAMPLE_RATE

END_TOLERANCE_S = 0.5  # a stream may stop this much before the span's end; the rest is padded


class DecodeError(MediaError):
    """A span cannot be decoded; ``reason`` is a short code (see the module docstring)."""


def n_frames(start_s: float, end_s: float, fps: int = FPS) -> int:
    """Output frames of a span: ``floor((end_s - start_s) * fps + 0.5)``, computed exactly on
    the span in whole milliseconds (the resolution of clip ids), so no float error can move it."""
    duration_ms = span_ms(end_s) - span_ms(start_s)
    return (2 * duration_ms * fps + 1000) // 2000


def _check_span(start_s: float, end_s: float) -> None:
    if not (start_s >= 0 and end_s > start_s):
        raise ValueError(f"a span needs 0 <= start_s < end_s, got [{start_s}, {end_s})")


def _reraise(source: str, exc: BaseException, timeout_s: float) -> DecodeError:
    if isinstance(exc, MediaTimeout):
        return DecodeError("timeout", f"decoding {source} took longer than {timeout_s:g} s per step")
    if isinstance(exc, DecodeError):
        return exc
    if isinstance(exc, MediaError):
        return DecodeError(exc.reason, exc.message)
    return DecodeError("unreadable", f"cannot decode {source}: {exc}")


# ---------------------------------------------------------------------------------------------
# Video


def iter_video_chunks(
    path: str | os.PathLike,
    start_s: float,
    end_s: float,
    fps: int = FPS,
    chunk_frames: int = 250,
    size: tuple[int, int] | None = None,
    timeout_s: float = 60.0,
    threads: int = 0,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB arrays ``(n, H, W, 3)`` covering ``[start_s, end_s)`` at a constant ``fps``.

    ``n <= chunk_frames`` and the chunks add up to exactly ``n_frames(start_s, end_s, fps)``.
    ``size`` is the upright output ``(width, height)``, None for the source size. Each chunk
    (the first one including the open and seek) must be ready within ``timeout_s`` seconds.
    ``threads`` is FFmpeg's decoding thread count (0: FFmpeg decides).
    """
    source = os.fspath(path)
    _check_span(start_s, end_s)
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    return _guarded(source, timeout_s, lambda: _video_chunks(
        source, start_s, end_s, fps, chunk_frames, size, threads))


def _guarded(source: str, timeout_s: float, make_chunks) -> Iterator[np.ndarray]:
    """Run the decoder in a worker with a per-chunk timeout; failures become ``DecodeError``."""
    chunks = iter_with_timeout(make_chunks, timeout_s)
    try:
        yield from chunks
    except (MediaError, MediaTimeout, av.error.FFmpegError, OSError) as exc:
        raise _reraise(source, exc, timeout_s) from exc
    finally:
        chunks.close()


def _video_chunks(source: str, start_s: float, end_s: float, fps: int, chunk_frames: int,
                  size: tuple[int, int] | None, threads: int) -> Iterator[np.ndarray]:
    total = n_frames(start_s, end_s, fps)
    with open_media(source) as container:
        if not container.streams.video:
            raise DecodeError("no_video", f"{source} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        tb = stream.time_base
        origin = stream.start_time or 0

        def ticks(seconds: float) -> int:
            """Seconds on the span clock to the nearest tick of the stream clock."""
            return origin + round(seconds * tb.denominator / tb.numerator)

        if start_s > 0:
            container.seek(ticks(start_s), stream=stream, backward=True)

        picker = _FramePicker(total, size)
        target = ticks(start_s)  # time of the next output frame, in ticks
        emitted = 0
        last_end = None          # where the newest decoded frame stops showing, in ticks
        packets = _Packets(container, stream)
        for frames in packets:
            for frame in frames:
                pts = frame.pts if frame.pts is not None else (last_end if last_end is not None else target)
                if picker.empty:
                    picker.hold(frame)  # also shown for output times before the first frame
                # Every output time before this frame's pts shows the frame held until now.
                while emitted < total and target < pts:
                    yield from picker.emit(chunk_frames)
                    emitted += 1
                    target = ticks(start_s + emitted / fps)
                picker.hold(frame)
                step = frame.duration or (1 / (float(stream.average_rate or 25) * float(tb)))
                last_end = pts + int(step)
                if emitted >= total:
                    break
            if emitted >= total:
                break

        if emitted < total:
            final_target = ticks(start_s + (total - 1) / fps)
            if last_end is None or final_target > last_end + END_TOLERANCE_S / float(tb):
                have = "no frames" if last_end is None else f"frames up to {float((last_end - origin) * tb):.2f} s"
                raise DecodeError("truncated", f"{source} has {have}; the span needs up to {end_s:.2f} s")
            while emitted < total:  # the last frame lasts to the end of the stream
                yield from picker.emit(chunk_frames)
                emitted += 1
        if packets.failures:
            raise DecodeError("corrupt", f"{packets.failures} packets of {source} failed to decode in "
                              f"[{start_s:.2f}, {end_s:.2f}) s")
        yield from picker.flush()


class _Packets:
    """Decoded frames of one stream, packet by packet. A packet that fails to decode is counted in
    ``failures`` and skipped, so a damaged stretch is reported once, after the span is read."""

    def __init__(self, container: av.container.InputContainer, stream: av.stream.Stream):
        self._packets = container.demux(stream)
        self.failures = 0

    def __iter__(self) -> Iterator[list[av.frame.Frame]]:
        while True:
            try:
                packet = next(self._packets)
                frames = packet.decode()
            except StopIteration:
                return
            except av.error.FFmpegError:
                self.failures += 1
                continue
            yield frames


class _FramePicker:
    """Converts the held source frame to RGB (once, however often it repeats) and fills chunks."""

    def __init__(self, total: int, size: tuple[int, int] | None):
        self.total = total
        self.size = size
        self.frame: av.VideoFrame | None = None
        self.image: np.ndarray | None = None
        self.chunk: np.ndarray | None = None
        self.filled = 0
        self.done = 0
        self.turns: int | None = None  # quarter turns, fixed by the first frame for equal shapes
        self.reformatter = av.video.reformatter.VideoReformatter()  # keeps one libswscale context

    @property
    def empty(self) -> bool:
        return self.frame is None

    def hold(self, frame: av.VideoFrame) -> None:
        if frame is not self.frame:
            self.frame, self.image = frame, None

    def _upright(self, frame: av.VideoFrame) -> np.ndarray:
        if self.turns is None:
            self.turns = display_rotation(frame) // 90
        turns = self.turns
        kwargs: dict = {"format": "rgb24"}
        if self.size is not None:
            width, height = self.size if turns % 2 == 0 else self.size[::-1]
            kwargs.update(width=width, height=height)
        image = self.reformatter.reformat(frame, **kwargs).to_ndarray()
        return np.rot90(image, k=turns) if turns else image

    def emit(self, chunk_frames: int) -> Iterator[np.ndarray]:
        """Append the held frame to the current chunk; yield the chunk once it is full."""
        if self.image is None:
            self.image = self._upright(self.frame)
        if self.chunk is None:
            n = min(chunk_frames, self.total - self.done)
            self.chunk = np.empty((n, *self.image.shape), dtype=np.uint8)
            self.filled = 0
        self.chunk[self.filled] = self.image
        self.filled += 1
        self.done += 1
        if self.filled == len(self.chunk):
            chunk, self.chunk = self.chunk, None
            yield chunk

    def flush(self) -> Iterator[np.ndarray]:
        if self.chunk is not None and self.filled:
            chunk, self.chunk = self.chunk[: self.filled], None
            yield chunk


# ---------------------------------------------------------------------------------------------
# Audio


def decode_audio(
    path: str | os.PathLike,
    start_s: float,
    end_s: float,
    sample_rate: int = SAMPLE_RATE,
    fps: int = FPS,
    timeout_s: float = 120.0,
) -> np.ndarray:
    """The span's audio as float32 mono at ``sample_rate``: ``n_frames(start_s, end_s, fps) *
    sample_rate // fps`` samples exactly.

    Channels are averaged to mono after resampling (libswresample). Samples are placed by the
    decoded timestamps on the same clock as the video, so the A/V offset stored in the file is
    kept; where the stream has no samples (a late start, or an end up to ``END_TOLERANCE_S``
    early) there is silence. Raises ``DecodeError('no_audio')`` without an audio stream.
    """
    source = os.fspath(path)
    _check_span(start_s, end_s)
    if sample_rate % fps:
        raise ValueError(f"sample_rate {sample_rate} is not a whole number of samples per frame at {fps} fps")
    n_samples = n_frames(start_s, end_s, fps) * (sample_rate // fps)
    try:
        return run_with_timeout(_decode_audio, timeout_s, source, start_s, n_samples, sample_rate)
    except (MediaError, MediaTimeout, av.error.FFmpegError, OSError) as exc:
        raise _reraise(source, exc, timeout_s) from exc


def _decode_audio(source: str, start_s: float, n_samples: int, sample_rate: int) -> np.ndarray:
    with open_media(source) as container:
        if not container.streams.audio:
            raise DecodeError("no_audio", f"{source} has no audio stream")
        stream = container.streams.audio[0]
        start_abs = stream_start_s(container) + start_s  # span start on the file's clock
        end_abs = start_abs + n_samples / sample_rate
        if start_s > 0:
            container.seek(int(max(0.0, start_abs - 1.0) / stream.time_base), stream=stream, backward=True)

        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        pieces: list[np.ndarray] = []
        first_time = None       # file time of the first resampled sample
        decoded_until = None    # file time just after the last resampled sample
        first_input = None      # file time of the first decoded frame, when the resampler drops pts

        def take(frames: list[av.AudioFrame]) -> None:
            nonlocal first_time, decoded_until
            for out in frames:
                if first_time is None:
                    first_time = out.time if out.pts is not None else (first_input or start_abs)
                    decoded_until = first_time
                samples = out.to_ndarray().mean(axis=0, dtype=np.float32)
                pieces.append(samples)
                decoded_until += len(samples) / sample_rate

        packets = _Packets(container, stream)
        for frames in packets:
            for frame in frames:
                if first_input is None:
                    first_input = frame.time
                take(resampler.resample(frame))
            if decoded_until is not None and decoded_until >= end_abs:
                break
        take(resampler.resample(None))

    if first_time is None:
        raise DecodeError("truncated", f"{source} has no audio samples from {start_s:.2f} s")
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    offset = round((start_abs - first_time) * sample_rate)
    if offset < 0:  # the stream starts after the span does: silence until it starts
        audio = np.concatenate([np.zeros(-offset, np.float32), audio])
        offset = 0
    span = audio[offset: offset + n_samples]
    missing = n_samples - len(span)
    if missing > END_TOLERANCE_S * sample_rate:
        raise DecodeError("truncated", f"the audio of {source} ends {missing / sample_rate:.2f} s "
                          "before the span does")
    if packets.failures:
        raise DecodeError("corrupt", f"{packets.failures} audio packets of {source} failed to decode")
    if missing > 0:
        span = np.concatenate([span, np.zeros(missing, np.float32)])
    return np.ascontiguousarray(span, dtype=np.float32)
