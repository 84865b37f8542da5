"""Probe a video cheaply before any decoding: duration, frame rate, size, rotation, streams.

Probing reads the container header, the first video packets (up to ``PROBE_PACKETS``, one of
them decoded to read the display rotation and prove the stream decodes) and the packets of the
last few seconds. That is enough to reject broken inputs early with a readable reason:

  ``not_found``    the file does not exist
  ``empty``        the file has zero bytes
  ``not_media``    FFmpeg recognises no container in it (garbage, text, ...)
  ``truncated``    the file ends before the data its header or index promises
  ``no_video``     no video stream (audio only)
  ``undecodable``  the video stream cannot be decoded
  ``unreadable``   any other failure to read it (permissions, network, ...)
  ``timeout``      probing took longer than ``timeout_s``

The same module opens media for the decoders: ``open_media`` takes a local path or any URI
pyarrow.fs understands (s3://, gs://, file://) and hands PyAV a file path or file object, and
``run_with_timeout`` bounds any blocking call.

Times are seconds on the video stream's clock with 0 at its first frame (the stream's
``start_time``), the convention shared by shot splitting and decoding.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeVar

import av
import numpy as np
import pyarrow.fs as pafs

from pipeline.inputs import InputError, filesystem_for, has_scheme

T = TypeVar("T")

PROBE_PACKETS = 300     # video packets read from the start of the file
TAIL_PACKET_LIMIT = 20_000  # the tail check gives up (passes) beyond this many packets
TAIL_SECONDS = 3.0      # how far before the stated end the tail check starts reading
TRUNCATION_TOLERANCE_S = 0.5  # the last packet may end this much before the stated duration
VFR_TOLERANCE = 0.1     # frame-time spread above this fraction of the typical step means VFR
REORDER_DEPTH = 16      # B-frame reordering can leave holes this many frames from a read's edges


class MediaError(Exception):
    """A media file cannot be used; ``reason`` is a short code for manifests, the text says why."""

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}" if message else reason)


class ProbeError(MediaError):
    """Raised by ``probe`` (reasons listed in the module docstring)."""


class MediaTimeout(TimeoutError):
    """A call wrapped by ``run_with_timeout`` or ``iter_with_timeout`` ran out of time."""


@dataclass(frozen=True)
class ProbeResult:
    """What the pipeline needs to know about a video before decoding it.

    ``width``/``height`` are the stored frame size; ``rotation`` is the counter-clockwise turn,
    in degrees (0, 90, 180 or 270), that the display matrix asks for to show frames upright
    (FFmpeg's convention, as ffprobe's ``rotation``); ``display_size`` applies it.
    """

    duration_s: float
    fps: float                 # average frame rate (frames / duration)
    is_vfr: bool               # frame times vary by more than VFR_TOLERANCE of their step
    n_frames_est: int
    width: int
    height: int
    rotation: int
    has_video: bool
    has_audio: bool
    audio_rate: int | None
    audio_channels: int | None
    video_codec: str | None
    audio_codec: str | None
    size_bytes: int
    start_time_s: float        # the video stream's first timestamp (time 0 of every span)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of frames once rotated upright."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


# ---------------------------------------------------------------------------------------------
# Timeouts


def run_with_timeout(fn: Callable[..., T], timeout_s: float, *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a worker thread and wait at most ``timeout_s`` seconds.

    Returns its result or re-raises its exception; raises ``MediaTimeout`` when time runs out.
    A Python thread cannot be killed, so a call that truly hangs is abandoned (a daemon thread
    that never blocks the caller or interpreter exit); it holds only its own file handle.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"timeout-{getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise MediaTimeout(f"{getattr(fn, '__name__', 'call')} did not finish within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


_DONE = object()


def iter_with_timeout(make_iter: Callable[[], Iterator[T]], timeout_s: float) -> Iterator[T]:
    """Run an iterator in a worker thread; each item (the first included) must arrive within
    ``timeout_s`` seconds or ``MediaTimeout`` is raised.

    The worker stays one item ahead (a queue of one), so memory holds at most three items:
    the one the caller has, the one queued and the one being built. Closing the returned
    generator early stops the worker at its next item.
    """
    items: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make_iter():
                if not offer(("item", item)):
                    return
            offer(("done", _DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            offer(("error", exc))

    worker = threading.Thread(target=produce, name="timeout-iter", daemon=True)
    worker.start()
    try:
        while True:
            try:
                kind, value = items.get(timeout=timeout_s)
            except queue.Empty:
                raise MediaTimeout(f"no result within {timeout_s:g} s") from None
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


# ---------------------------------------------------------------------------------------------
# Opening


def media_size(source: str) -> int:
    """Size in bytes of a local path or URI; ``ProbeError('not_found')`` when absent."""
    fs, path = filesystem_for(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ProbeError("not_found", f"no such file: {source}")
    if info.type != pafs.FileType.File:
        raise ProbeError("unreadable", f"not a regular file: {source}")
    return int(info.size)


@contextlib.contextmanager
def open_media(source: str | os.PathLike) -> Iterator[av.container.InputContainer]:
    """Open a local path or URI with PyAV; closes the container and any remote file on exit.

    Local paths go to FFmpeg directly; URIs are opened through pyarrow.fs as seekable file
    objects, so every filesystem pyarrow supports (S3, GCS, HDFS, local) works the same way.
    Opening failures are raised as ``ProbeError`` with a reason.
    """
    source = os.fspath(source)
    handle = None
    try:
        if has_scheme(source):
            fs, path = filesystem_for(source)
            handle = fs.open_input_file(path)
            container = av.open(handle, mode="r")
        else:
            container = av.open(source, mode="r")
    except Exception as exc:
        if handle is not None:
            handle.close()
        raise _open_error(source, exc) from exc
    try:
        yield container
    finally:
        container.close()
        if handle is not None:
            handle.close()


def _open_error(source: str, exc: Exception) -> ProbeError:
    """Name the reason an open failed."""
    if isinstance(exc, FileNotFoundError):
        return ProbeError("not_found", f"no such file: {source}")
    if isinstance(exc, av.error.InvalidDataError):
        if _looks_like_iso_media(source):
            return ProbeError("truncated", f"{source} starts like an MP4/MOV file but its index is "
                              "missing or cut off (an incomplete download or copy?)")
        return ProbeError("not_media", f"FFmpeg recognises no audio/video container in {source}")
    return ProbeError("unreadable", f"cannot open {source}: {exc}")


def _looks_like_iso_media(source: str) -> bool:
    """True when the first box is ``ftyp``: an MP4/MOV whose ``moov`` index never arrived."""
    try:
        fs, path = filesystem_for(source)
        with fs.open_input_stream(path) as f:
            head = f.read(12)
    except (OSError, InputError):
        return False
    return len(head) >= 8 and head[4:8] == b"ftyp"


def stream_start_s(container: av.container.InputContainer) -> float:
    """The video stream's first timestamp in seconds: time 0 of every span in this project."""
    if not container.streams.video:
        return 0.0
    stream = container.streams.video[0]
    if stream.start_time is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def stream_duration_s(container: av.container.InputContainer) -> float:
    """Duration of the video stream in seconds (the container's when the stream has none)."""
    stream = container.streams.video[0]
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return max(0.0, container.duration / av.time_base - stream_start_s(container))
    return 0.0


def display_rotation(frame: av.VideoFrame) -> int:
    """The frame's display-matrix rotation, counter-clockwise degrees snapped to 0/90/180/270."""
    return round((frame.rotation or 0) / 90.0) % 4 * 90


# ---------------------------------------------------------------------------------------------
# Probing


def probe(path_or_uri: str | os.PathLike, timeout_s: float = 30.0, require_video: bool = True) -> ProbeResult:
    """Probe a local path or URI; raises ``ProbeError`` with a reason for unusable inputs.

    With ``require_video=False`` an audio-only file is described (``has_video=False``) instead
    of rejected.
    """
    source = os.fspath(path_or_uri)
    try:
        return run_with_timeout(_probe, timeout_s, source, require_video)
    except MediaTimeout as exc:
        raise ProbeError("timeout", f"probing {source} took longer than {timeout_s:g} s") from exc
    except (OSError, InputError, av.error.FFmpegError) as exc:
        raise ProbeError("unreadable", f"cannot read {source}: {exc}") from exc


def _probe(source: str, require_video: bool) -> ProbeResult:
    size = media_size(source)
    if size == 0:
        raise ProbeError("empty", f"{source} has zero bytes")
    with open_media(source) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_rate = audio.codec_context.sample_rate if audio is not None else None
        audio_channels = audio.codec_context.channels if audio is not None else None
        audio_codec = audio.codec_context.name if audio is not None else None
        if not container.streams.video:
            if require_video:
                what = "audio only" if audio is not None else "no audio or video streams"
                raise ProbeError("no_video", f"{source} has no video stream ({what})")
            duration = container.duration / av.time_base if container.duration else 0.0
            return ProbeResult(
                duration_s=duration, fps=0.0, is_vfr=False, n_frames_est=0, width=0, height=0,
                rotation=0, has_video=False, has_audio=audio is not None, audio_rate=audio_rate,
                audio_channels=audio_channels, video_codec=None, audio_codec=audio_codec,
                size_bytes=size, start_time_s=0.0)

        video = container.streams.video[0]
        _check_index(video, size, source)
        duration = stream_duration_s(container)
        head_times, rotation = _read_head(container, video, source)
        tail_times = _read_tail(container, video, duration)
        if duration <= 0:
            raise ProbeError("unreadable", f"{source} states no duration")
        if tail_times is not None:
            data_end = tail_times[-1] if tail_times else 0.0
            if data_end < duration - TRUNCATION_TOLERANCE_S:
                raise ProbeError("truncated", f"{source} states {duration:.2f} s but its video data "
                                 f"ends at {data_end:.2f} s")

        tick = float(video.time_base)
        is_vfr = _is_vfr(head_times, tick) or _is_vfr(tail_times or [], tick)
        fps = _average_fps(video, duration, head_times, is_vfr)
        frames = video.frames if video.frames > 0 else round(duration * fps)
        return ProbeResult(
            duration_s=duration,
            fps=fps,
            is_vfr=is_vfr,
            n_frames_est=frames,
            width=video.codec_context.width,
            height=video.codec_context.height,
            rotation=rotation,
            has_video=True,
            has_audio=audio is not None,
            audio_rate=audio_rate,
            audio_channels=audio_channels,
            video_codec=video.codec_context.name,
            audio_codec=audio_codec,
            size_bytes=size,
            start_time_s=stream_start_s(container),
        )


def _check_index(video: av.video.stream.VideoStream, size: int, source: str) -> None:
    """MP4/MOV/MKV indexes give each packet's byte offset: one past the file end means truncation."""
    entries = video.index_entries
    if len(entries) == 0:
        return
    needed = max(entry.pos + entry.size for entry in entries)
    if needed > size:
        raise ProbeError("truncated", f"{source} has {size} bytes but its index needs {needed}")


def _packet_times(container: av.container.InputContainer, video: av.video.stream.VideoStream,
                  limit: int) -> Iterator[tuple[av.Packet, float]]:
    """Demux up to ``limit`` video packets with a timestamp, as (packet, seconds from start)."""
    start = stream_start_s(container)
    count = 0
    for packet in container.demux(video):
        if packet.pts is None or packet.size == 0:
            continue
        yield packet, float(packet.pts * packet.time_base) - start
        count += 1
        if count >= limit:
            return


def _read_head(container: av.container.InputContainer, video: av.video.stream.VideoStream,
               source: str) -> tuple[list[float], int]:
    """Frame times of the first packets and the rotation of the first decoded frame."""
    times: list[float] = []
    rotation = None
    try:
        for packet, t in _packet_times(container, video, PROBE_PACKETS):
            times.append(t)
            if rotation is None:
                for frame in packet.decode():
                    rotation = display_rotation(frame)
                    break
    except av.error.FFmpegError as exc:
        if rotation is None:
            raise ProbeError("undecodable", f"cannot decode the video of {source}: {exc}") from exc
    if rotation is None:
        # Frames held back for reordering come out when the decoder is flushed.
        try:
            for frame in video.codec_context.decode(None):
                rotation = display_rotation(frame)
                break
        except av.error.FFmpegError:
            pass
    if rotation is None:
        raise ProbeError("undecodable", f"no video frame could be decoded from {source}")
    return sorted(times), rotation


def _read_tail(container: av.container.InputContainer, video: av.video.stream.VideoStream,
               duration: float) -> list[float] | None:
    """End times of the packets from a keyframe before the last ``TAIL_SECONDS`` to the end:
    where the video data really stops. None when the container cannot seek (check skipped)."""
    start = stream_start_s(container)
    target = start + max(0.0, duration - TAIL_SECONDS)
    try:
        container.seek(int(target / video.time_base), stream=video, backward=True)
    except av.error.FFmpegError:
        return None
    ends = []
    try:
        for packet in container.demux(video):
            if packet.pts is None or packet.size == 0:
                continue
            t = float(packet.pts * packet.time_base) - start
            ends.append(t + float((packet.duration or 0) * packet.time_base))
            if len(ends) > TAIL_PACKET_LIMIT:
                return None  # keyframes too sparse to reach the end cheaply
    except av.error.FFmpegError:
        pass  # damaged data: the ends read so far say where it stops
    return sorted(ends)


def _average_fps(video: av.video.stream.VideoStream, duration: float, times: list[float],
                 is_vfr: bool) -> float:
    """Frames per second on average: the frame count over the duration when the container
    states a count; for VFR streams without one, measured over the first packets (a declared
    rate there is only nominal); otherwise the declared rate."""
    if video.frames > 0 and duration > 0:
        return video.frames / duration
    measured = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    if is_vfr and measured:
        return measured
    for rate in (video.average_rate, video.guessed_rate):
        if rate:
            return float(Fraction(rate.numerator, rate.denominator))
    if measured:
        return measured
    raise ProbeError("unreadable", "the video stream has no frame rate")


def _is_vfr(times: list[float], tick: float) -> bool:
    """Variable frame rate: a frame step differs from the median step by more than
    VFR_TOLERANCE of it (plus one time-base tick, for millisecond clocks at high rates)."""
    times = times[REORDER_DEPTH:-REORDER_DEPTH]
    if len(times) < 3:
        return False
    steps = np.diff(np.asarray(times))
    steps = steps[steps > 0]
    if len(steps) < 2:
        return False
    typical = float(np.median(steps))
    return float(np.max(np.abs(steps - typical))) > VFR_TOLERANCE * typical + tick
