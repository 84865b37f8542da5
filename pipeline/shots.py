"""Split a video into shots at hard cuts, and shots into candidate clips.

``split_shots`` feeds PySceneDetect's detectors with frames decoded by PyAV and scaled down to
256 px wide by libswscale (cheaper than full-size frames, and local files and pyarrow URIs are
read alike through ``open_media``); it returns contiguous ``(start_s, end_s)`` shots covering
the whole video. Frames are timed by their timestamps, so variable frame rates are handled.
Times use the clock of ``pipeline.probe``: seconds from the first video frame, with the last
shot ending at the stream duration that ``probe`` reports.

``make_clips`` turns shots into clips: it trims ``cut_margin_s`` at each side that touches a
cut (not at the very start or end of the video, where there is no cut), rejects shots
shorter than ``min_len_s`` and splits long shots into near-equal pieces of at most
``max_len_s``. It is a pure function, so re-runs give identical spans.
"""
from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from typing import NamedTuple

import av
from av.video.reformatter import VideoReformatter
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode, SceneDetector

from pipeline.decode import DecodeError
from pipeline.probe import MediaError, MediaTimeout, open_media, run_with_timeout, stream_duration_s

Span = tuple[float, float]
DETECT_WIDTH = 256  # frames are scaled down to this width for detection (PySceneDetect's default)
DETECTORS = ("content", "adaptive")
TOO_SHORT = "too_short"


class ClipPlan(NamedTuple):
    """Clips to process and spans rejected with a reason, as ``(start_s, end_s, reason)``."""

    clips: list[Span]
    rejected: list[tuple[float, float, str]]


def split_shots(
    path: str | os.PathLike,
    threshold: float | None = None,
    detector: str = "content",
    min_shot_s: float = 0.5,
    timeout_s: float = 600.0,
) -> list[Span]:
    """Contiguous shots ``[(start_s, end_s), ...]`` from 0 to the video's duration.

    ``detector`` is ``"content"`` (ContentDetector: a cut where the HSV/edge change between
    frames exceeds ``threshold``, default 27) or ``"adaptive"`` (AdaptiveDetector: where the
    change exceeds ``threshold`` times its rolling average, default 3). Cuts closer than
    ``min_shot_s`` to the previous one are ignored. Raises ``DecodeError`` (reason ``timeout``
    or the reason the file cannot be read).
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    source = os.fspath(path)
    try:
        return run_with_timeout(_split_shots, timeout_s, source, threshold, detector, min_shot_s)
    except MediaTimeout as exc:
        raise DecodeError("timeout", f"shot detection on {source} took longer than {timeout_s:g} s") from exc
    except MediaError as exc:
        raise DecodeError(exc.reason, exc.message) from exc


def _split_shots(source: str, threshold: float | None, detector: str, min_shot_s: float) -> list[Span]:
    with open_media(source) as container:
        if not container.streams.video:
            raise DecodeError("no_video", f"{source} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = stream_duration_s(container)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        origin = stream.start_time or 0
        scene_detector = _make_detector(detector, threshold, min_shot_s)
        reformatter = VideoReformatter()  # one libswscale context for every frame
        cuts: list[FrameTimecode] = []
        last = None
        for frame in _frames(container, stream):
            width = min(DETECT_WIDTH, frame.width)
            height = max(2, round(frame.height * width / frame.width / 2) * 2)
            image = reformatter.reformat(frame, format="bgr24", width=width, height=height).to_ndarray()
            last = FrameTimecode(float((frame.pts - origin) * stream.time_base), fps=rate)
            cuts += scene_detector.process_frame(last, image)
        if last is None:
            raise DecodeError("undecodable", f"no video frame could be decoded from {source}")
        cuts += scene_detector.post_process(last)
    times = sorted({round(cut.seconds, 6) for cut in cuts})
    bounds = [0.0] + [t for t in times if 0.0 < t < duration] + [duration]
    return list(itertools.pairwise(bounds))


def _make_detector(detector: str, threshold: float | None, min_shot_s: float) -> SceneDetector:
    if detector == "content":
        return ContentDetector(threshold=27.0 if threshold is None else threshold,
                               min_scene_len=float(min_shot_s))
    return AdaptiveDetector(adaptive_threshold=3.0 if threshold is None else threshold,
                            min_scene_len=float(min_shot_s))


def _frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream
            ) -> Iterator[av.VideoFrame]:
    """Decoded frames with timestamps, skipping packets that fail to decode (a damaged packet
    only blurs one cut estimate; decoding a clip later rejects damage inside it)."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        yield from (frame for frame in frames if frame.pts is not None)


def make_clips(
    shots: list[Span],
    duration_s: float,
    min_len_s: float = 8.0,
    max_len_s: float = 60.0,
    cut_margin_s: float = 0.2,
) -> ClipPlan:
    """Clips from shots: trim margins at cuts, reject short shots, split long ones.

    A shot longer than ``max_len_s`` is split into ``ceil(length / max_len_s)`` equal pieces;
    when those would be shorter than ``min_len_s`` (possible only if ``max_len_s <
    2 * min_len_s``), it yields as many ``max_len_s`` pieces as fit and rejects the rest.
    Span ends are rounded to milliseconds, the resolution of clip ids.
    """
    if not (0 < min_len_s <= max_len_s):
        raise ValueError(f"need 0 < min_len_s <= max_len_s, got {min_len_s}, {max_len_s}")
    if cut_margin_s < 0:
        raise ValueError("cut_margin_s must be >= 0")
    clips: list[Span] = []
    rejected: list[tuple[float, float, str]] = []
    for start, end in shots:
        start, end = max(0.0, start), min(duration_s, end)
        if start > 0.0:
            start += cut_margin_s
        if end < duration_s:
            end -= cut_margin_s
        start, end = _ms(start), _ms(end)
        length = end - start
        if length < min_len_s - 1e-9:
            if end > start:
                rejected.append((start, end, TOO_SHORT))
            continue
        pieces = max(1, math.ceil(length / max_len_s - 1e-9))
        if length / pieces >= min_len_s - 1e-9:
            step = length / pieces
            bounds = [_ms(start + i * step) for i in range(pieces)] + [end]
            clips.extend(itertools.pairwise(bounds))
        else:
            whole = int(length // max_len_s)
            bounds = [_ms(start + i * max_len_s) for i in range(whole + 1)]
            clips.extend(itertools.pairwise(bounds))
            rejected.append((bounds[-1], end, TOO_SHORT))
    return ClipPlan(clips, rejected)


def _ms(seconds: float) -> float:
    return round(seconds, 3)
