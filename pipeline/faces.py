"""Face tracks through a clip, the reasons a clip fails, and the two crops the models need.

``FaceTracker.track`` detects faces on every ``detect_every``-th frame (faces of every size on
every ``full_scan_every``-th sample; in between only faces at least about half the size of those in
the previous sample, which saves a cascade most of its time), links detections of consecutive
sampled frames into tracks by box overlap (IoU), keeps the dominant track and decides:

* ``no_face``: no track persists (seen in fewer than ``min_track_share`` of the sampled frames);
* ``multiple_faces``: another track of comparable size (area >= ``multiple_area_ratio`` x the
  dominant's) is seen together with the dominant one in >= ``multiple_share`` of the sampled frames;
* ``face_too_small``: the dominant face's median box side is below ``min_face`` pixels;
* ``track_lost``: the dominant face is missing from more than ``max_lost_fraction`` of the sampled
  frames, or from a run of more than ``max_gap_frames`` consecutive frames (clip ends included).

The dominant track's boxes are interpolated to every frame and median-filtered over
``smooth_frames`` (as syncnet_python smooths its face track). Frames may come as one (T, H, W, 3)
array or as an iterator of such chunks, so a long clip never has to be in memory at once; the
result holds only boxes.

Crops (both work chunk by chunk: pass ``track.slice(start, stop)`` with each chunk):

* ``crop_liveportrait``: ONE square box for the whole clip, as LivePortrait crops a driving video:
  each frame's box comes from the face's landmarks (``shards.crop.driving_box``: scale 2.2, moved
  up by 0.1 x its side along the face's axis, left axis-aligned), the per-frame boxes are averaged
  over the clip, the frame is cut to 512 px with black outside the frame, then resized to 256.
  Landmarks (``models.face_landmarks``; dlib's 68 points by default) are taken on every
  ``landmark_every``-th sampled frame of each track, on the detector's box; the frames between
  get boxes interpolated linearly (held at the clip's ends) before the average, so every frame
  counts once as in LivePortrait. ``TrackResult.crop_backend`` names the landmark backend that
  made the box. Without landmarks (``landmarks: none``, or a dominant track seen on no landmarked
  sample) the detector box stands in for the landmark extent: a square of ``scale`` x its side
  around its centre, moved up by ``vy_ratio`` x that side (``crop_backend`` ``detector_box``).
* ``crop_syncnet``: per-frame whole-face crops for SyncNet, cut as syncnet_python's ``crop_video``
  does around its smoothed face track: with ``bs`` half the box side and ``cs`` the crop scale 0.4,
  the crop spans ``bs * (1 + cs)`` either side of the centre horizontally and from ``bs`` above to
  ``bs * (1 + 2 cs)`` below it vertically (so it takes in the chin), grey (110) outside the frame,
  resized to 224.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import median_filter

from models.face_detectors import make_detector
from models.face_landmarks import LandmarkBackend, make_landmarks
from shards.crop import (CROP_SIZE, DRIVING_SCALE, DRIVING_VY_RATIO, SYNCNET_CROP_SCALE, SYNCNET_PAD_VALUE,
                         SYNCNET_SIZE, driving_box)

REASONS = ("no_face", "multiple_faces", "face_too_small", "track_lost")

LIVEPORTRAIT_SCALE = DRIVING_SCALE       # LivePortrait's scale_crop_driving_video
LIVEPORTRAIT_VY_RATIO = DRIVING_VY_RATIO  # LivePortrait's vy_ratio_crop_driving_video
LIVEPORTRAIT_CROP = CROP_SIZE             # LivePortrait cuts driving frames at this size ...
LIVEPORTRAIT_SIZE = 256       # ... and the motion extractor reads them at this one
DETECTOR_BOX = "detector_box"  # crop_backend of a clip cropped from the detector box (no landmarks)


@dataclass
class TrackResult:
    """The dominant face of a clip (or why there is none usable).

    ``boxes``: (T, 4) float32 ``x1, y1, x2, y2`` per frame, smoothed; NaN when there is no track.
    ``n_faces_max``: most faces that count (the dominant one and comparable, persistent others)
    seen together in one sampled frame. ``face_size``: median side (max of width, height) of the
    dominant face's detections, pixels. ``clip_face``: (cx, cy, side) averaged over all T frames,
    which fixes the LivePortrait box when there are no landmarks; ``crop_box``: the clip's
    LivePortrait box ``x1, y1, x2, y2`` from landmarks (NaN without), ``crop_backend`` the backend
    that made it (or ``detector_box``). A ``slice`` keeps both, so chunked crops share one box.
    """

    ok: bool
    reason: str | None
    boxes: np.ndarray
    n_faces_max: int
    face_size: float | None
    n_frames: int
    frame_size: tuple[int, int]          # (height, width)
    detected_fraction: float = 0.0       # share of sampled frames with the dominant face
    longest_gap: int = 0                 # longest run of frames without a dominant-face detection
    n_tracks: int = 0                    # tracks that persisted (min_track_share)
    clip_face: np.ndarray = field(default_factory=lambda: np.full(3, np.nan, np.float32))
    crop_box: np.ndarray = field(default_factory=lambda: np.full(4, np.nan, np.float64))
    crop_backend: str = DETECTOR_BOX
    landmarked_frames: int = 0           # frames of the dominant track with landmarks

    def slice(self, start: int, stop: int) -> TrackResult:
        """The same track restricted to frames [start, stop), for cropping one decoded chunk."""
        if not 0 <= start <= stop <= self.n_frames:
            raise ValueError(f"slice [{start}, {stop}) outside the clip's {self.n_frames} frames")
        return dataclasses.replace(self, boxes=self.boxes[start:stop], n_frames=stop - start)


@dataclass
class _Track:
    """Detections linked through the clip: sampled-frame positions, frame indices and boxes."""

    samples: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    landmark_frames: list[int] = field(default_factory=list)
    landmark_boxes: list[np.ndarray] = field(default_factory=list)  # driving_box of each

    def sides(self) -> np.ndarray:
        b = np.asarray(self.boxes)
        return np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``x1, y1, x2, y2`` box with each row of ``others``."""
    if len(others) == 0:
        return np.zeros(0, np.float32)
    xx1 = np.maximum(box[0], others[:, 0])
    yy1 = np.maximum(box[1], others[:, 1])
    xx2 = np.minimum(box[2], others[:, 2])
    yy2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _drop_nested(dets: np.ndarray, overlap: float = 0.6) -> np.ndarray:
    """Drop detections mostly inside a better one (a cascade sometimes reports a face twice)."""
    kept: list[np.ndarray] = []
    for det in dets:  # best first
        area = max((det[2] - det[0]) * (det[3] - det[1]), 1e-9)
        nested = False
        for other in kept:
            ix = max(0.0, min(det[2], other[2]) - max(det[0], other[0]))
            iy = max(0.0, min(det[3], other[3]) - max(det[1], other[1]))
            other_area = (other[2] - other[0]) * (other[3] - other[1])
            if ix * iy / min(area, other_area) > overlap:
                nested = True
                break
        if not nested:
            kept.append(det)
    return np.asarray(kept, np.float32).reshape(-1, 5)


def check_frames(frames: np.ndarray) -> np.ndarray:
    """``frames`` as a (T, H, W, 3) uint8 array, or a clear error."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    return frames


def iter_chunks(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Checked chunks of frames from one (T, H, W, 3) array or an iterable of such arrays."""
    for chunk in ([frames] if isinstance(frames, np.ndarray) else frames):
        yield check_frames(chunk)


class FaceTracker:
    """Detect, link and judge faces through a clip; see the module docstring for the rules.

    ``detector_options`` go to the backend (``HaarDetector`` or ``ScrfdDetector``); ``weights`` is
    an explicit ``det_10g.onnx`` path for the insightface backend (else the weights registry).
    ``landmarks`` names the landmark backend (``dlib``, ``insightface`` or ``none``), with
    ``landmark_weights`` an explicit file for it; landmarks are taken on every
    ``landmark_every``-th sampled frame.
    """

    def __init__(self, backend: str = "haar", min_face: float = 64.0, detect_every: int = 3,
                 iou_threshold: float = 0.3, min_track_share: float = 0.2,
                 multiple_area_ratio: float = 0.5, multiple_share: float = 0.5,
                 max_lost_fraction: float = 0.3, max_gap_frames: int = 50, smooth_frames: int = 13,
                 full_scan_every: int = 8, weights: str | Path | None = None, weights_dir: str | Path | None = None,
                 detector_options: dict | None = None, landmarks: str = "dlib", landmark_every: int = 2,
                 landmark_weights: str | Path | None = None):
        if detect_every < 1 or full_scan_every < 1 or landmark_every < 1:
            raise ValueError(f"detect_every, full_scan_every and landmark_every must be >= 1, got "
                             f"{detect_every}, {full_scan_every}, {landmark_every}")
        self.backend = backend
        self.detector = make_detector(backend, weights=weights, weights_dir=weights_dir,
                                      **dict(detector_options or {}))
        self.landmarker: LandmarkBackend | None = make_landmarks(landmarks, landmark_weights, weights_dir)
        self.landmark_every = int(landmark_every)
        self.min_face = float(min_face)
        self.detect_every = int(detect_every)
        self.iou_threshold = float(iou_threshold)
        self.min_track_share = float(min_track_share)
        self.multiple_area_ratio = float(multiple_area_ratio)
        self.multiple_share = float(multiple_share)
        self.max_lost_fraction = float(max_lost_fraction)
        self.max_gap_frames = int(max_gap_frames)
        self.smooth_frames = int(smooth_frames)
        self.full_scan_every = int(full_scan_every)
        # Between full scans the detector may skip faces under this share of the smallest face it
        # saw in the previous sample: 0.7 of the smallest side that still counts as comparable.
        self.scan_side_ratio = 0.7 * float(np.sqrt(self.multiple_area_ratio))

    # -- detection and linking ------------------------------------------------------------------

    def _detect_and_link(self, frames) -> tuple[list[_Track], int, int, tuple[int, int]]:
        """Tracks over the sampled frames, the number of samples, of frames, and the frame size."""
        active: list[_Track] = []    # may still be extended
        finished: list[_Track] = []  # gone for longer than max_gap_frames
        n_frames, n_samples, frame_size = 0, 0, None
        for chunk in iter_chunks(frames):
            if frame_size is None:
                frame_size = chunk.shape[1:3]
            elif chunk.shape[1:3] != frame_size:
                raise ValueError(f"frame size changed within a clip: {frame_size} -> {chunk.shape[1:3]}")
            first = -n_frames % self.detect_every
            for offset in range(first, len(chunk), self.detect_every):
                frame_index = n_frames + offset
                gone = [t for t in active if frame_index - t.frames[-1] > self.max_gap_frames]
                finished += [t for t in gone if len(t.frames) > 1]  # lone detections never persist
                active = [t for t in active if frame_index - t.frames[-1] <= self.max_gap_frames]
                dets = _drop_nested(self.detector.detect(chunk[offset], self._min_side(active, n_samples)))
                active += self._link(active, dets, n_samples, frame_index)
                if self.landmarker is not None and n_samples % self.landmark_every == 0:
                    self._add_landmarks(chunk[offset], [t for t in active if t.frames[-1] == frame_index])
                n_samples += 1
            n_frames += len(chunk)
        if frame_size is None:
            raise ValueError("no frames to track")
        return finished + active, n_samples, n_frames, (int(frame_size[0]), int(frame_size[1]))

    def _add_landmarks(self, frame: np.ndarray, tracks: list[_Track]) -> None:
        """Each track's driving-video box from landmarks on its detection in this frame."""
        for track in tracks:
            points = self.landmarker.landmarks(frame, track.boxes[-1])
            track.landmark_frames.append(track.frames[-1])
            track.landmark_boxes.append(driving_box(points))

    def _min_side(self, active: list[_Track], sample: int) -> float:
        """The smallest face worth finding in this sample: ``scan_side_ratio`` of the smallest face
        seen in the last sample, so every face comparable to a tracked one is still found while a
        cascade skips the small scales where it spends most of its time (the same boxes, a test
        checks); 0 (every size) on every ``full_scan_every``-th sample and whenever
        the last sample had no face."""
        if sample % self.full_scan_every == 0:
            return 0.0
        last = [t.boxes[-1] for t in active if t.samples[-1] == sample - 1]
        if not last:
            return 0.0
        sides = [max(b[2] - b[0], b[3] - b[1]) for b in last]
        return self.scan_side_ratio * float(min(sides))

    def _link(self, open_tracks: list[_Track], dets: np.ndarray, sample: int, frame_index: int) -> list[_Track]:
        """Extend open tracks with this frame's detections (greedy by IoU); new tracks for the rest."""
        last = np.asarray([t.boxes[-1] for t in open_tracks], np.float32).reshape(-1, 4)
        pairs = sorted(((overlap, ti, di) for di, det in enumerate(dets)
                        for ti, overlap in enumerate(iou(det[:4], last)) if overlap >= self.iou_threshold),
                       reverse=True)
        used_tracks, used_dets = set(), set()
        for _, ti, di in pairs:
            if ti in used_tracks or di in used_dets:
                continue
            used_tracks.add(ti)
            used_dets.add(di)
            track = open_tracks[ti]
            track.samples.append(sample)
            track.frames.append(frame_index)
            track.boxes.append(dets[di, :4])
        return [_Track([sample], [frame_index], [det[:4]]) for di, det in enumerate(dets) if di not in used_dets]

    # -- judging ----------------------------------------------------------------------------------

    def track(self, frames: np.ndarray | Iterable[np.ndarray]) -> TrackResult:
        """Track the dominant face through (T, H, W, 3) uint8 RGB frames, or chunks of them."""
        tracks, n_samples, n_frames, frame_size = self._detect_and_link(frames)
        min_detections = max(2, int(np.ceil(self.min_track_share * n_samples))) if n_samples > 1 else 1
        persistent = [t for t in tracks if len(t.samples) >= min_detections]
        no_boxes = np.full((n_frames, 4), np.nan, np.float32)
        if not persistent:
            return TrackResult(False, "no_face", no_boxes, 0, None, n_frames, frame_size)

        # The dominant face: the most face-pixels over the clip (long-lived and large wins).
        dominant = max(persistent, key=lambda t: float(t.sides().sum()))
        face_size = float(np.median(dominant.sides()))
        dominant_samples = set(dominant.samples)
        dominant_area = float(np.median(dominant.sides() ** 2))

        # Other faces that count: comparable in size and seen with the dominant one often enough.
        counted = [dominant_samples]
        for other in persistent:
            if other is dominant:
                continue
            together = dominant_samples & set(other.samples)
            comparable = float(np.median(other.sides() ** 2)) >= self.multiple_area_ratio * dominant_area
            if comparable and len(together) >= self.multiple_share * n_samples:
                counted.append(set(other.samples))
        n_faces_max = max(sum(s in c for c in counted) for s in dominant_samples)

        detected_fraction = len(dominant.samples) / n_samples
        edges = [-1, *dominant.frames, n_frames]
        longest_gap = int(max(b - a - 1 for a, b in pairwise(edges)))
        lost = (1.0 - detected_fraction > self.max_lost_fraction) or longest_gap > self.max_gap_frames

        if n_faces_max > 1:
            reason = "multiple_faces"
        elif face_size < self.min_face:
            reason = "face_too_small"
        elif lost:
            reason = "track_lost"
        else:
            reason = None
        boxes = self._smooth_boxes(dominant, n_frames)
        landmarked = bool(dominant.landmark_frames)
        return TrackResult(ok=reason is None, reason=reason, boxes=boxes, n_faces_max=int(n_faces_max),
                           face_size=face_size, n_frames=n_frames, frame_size=frame_size,
                           detected_fraction=float(detected_fraction), longest_gap=longest_gap,
                           n_tracks=len(persistent), clip_face=clip_face(boxes),
                           crop_box=landmark_clip_box(dominant.landmark_frames, dominant.landmark_boxes, n_frames)
                           if landmarked else np.full(4, np.nan),
                           crop_backend=self.landmarker.name if landmarked else DETECTOR_BOX,
                           landmarked_frames=len(dominant.landmark_frames))

    def _smooth_boxes(self, track: _Track, n_frames: int) -> np.ndarray:
        """Centre and size interpolated to every frame (held at the ends), then median-filtered."""
        det = np.asarray(track.boxes, np.float64)
        known = np.asarray(track.frames)
        every = np.arange(n_frames)
        centre_size = np.stack([(det[:, 0] + det[:, 2]) / 2, (det[:, 1] + det[:, 3]) / 2,
                                det[:, 2] - det[:, 0], det[:, 3] - det[:, 1]], axis=1)
        series = np.stack([np.interp(every, known, centre_size[:, k]) for k in range(4)], axis=1)
        if self.smooth_frames > 1:
            series = median_filter(series, size=(self.smooth_frames, 1), mode="nearest")
        cx, cy, w, h = series.T
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def landmark_clip_box(frames: list[int], boxes: list[np.ndarray], n_frames: int) -> np.ndarray:
    """The clip's box: per-frame landmark boxes, interpolated to every frame (held at the ends),
    averaged over the clip as LivePortrait averages its per-frame boxes."""
    known = np.asarray(boxes, np.float64).reshape(-1, 4)
    every = np.arange(n_frames)
    series = np.stack([np.interp(every, frames, known[:, k]) for k in range(4)], axis=1)
    return series.mean(axis=0)


def clip_face(boxes: np.ndarray) -> np.ndarray:
    """(cx, cy, side) averaged over the frames, side = max(width, height) of each frame's box.

    LivePortrait averages its per-frame crop boxes; each is linear in (cx, cy, side), so averaging
    these first and building one box gives the same box.
    """
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return np.asarray([cx.mean(), cy.mean(), side.mean()], np.float32)


def liveportrait_box(track: TrackResult, scale: float = LIVEPORTRAIT_SCALE,
                     vy_ratio: float = LIVEPORTRAIT_VY_RATIO) -> np.ndarray:
    """The clip's crop box ``x1, y1, x2, y2``: the landmark box when the track has one, else from the
    detector box: side ``scale * face``, centre moved by ``vy_ratio * side``."""
    if np.isfinite(track.crop_box).all():
        return np.asarray(track.crop_box, np.float32)
    cx, cy, face = (float(v) for v in track.clip_face)
    if not np.isfinite([cx, cy, face]).all():
        raise ValueError(f"no face track to crop from (reason: {track.reason})")
    side = scale * face
    cy = cy + vy_ratio * side
    return np.asarray([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def _warp_square(frame: np.ndarray, cx: float, cy: float, side: float, out: int, pad: int) -> np.ndarray:
    """Cut the square of ``side`` around (cx, cy) to ``out`` px (bilinear), ``pad`` outside the frame."""
    s = out / side
    matrix = np.asarray([[s, 0.0, out / 2 - s * cx], [0.0, s, out / 2 - s * cy]], np.float64)
    return cv2.warpAffine(frame, matrix, (out, out), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(pad, pad, pad))


def crop_liveportrait(frames: np.ndarray, track: TrackResult, scale: float = LIVEPORTRAIT_SCALE,
                      vy_ratio: float = LIVEPORTRAIT_VY_RATIO, crop_size: int = LIVEPORTRAIT_CROP,
                      out_size: int = LIVEPORTRAIT_SIZE, resize: str = "linear") -> np.ndarray:
    """(T, 256, 256, 3) uint8 LivePortrait driving crops, one box for the clip (see the module doc).

    ``resize``: how the 512 px cut becomes 256 px. LivePortrait's driving-video path calls
    ``cv2.resize`` with its default (bilinear, ``"linear"``); its source-image path uses ``"area"``.
    """
    frames = check_frames(frames)
    x1, y1, x2, y2 = liveportrait_box(track, scale, vy_ratio)
    interpolation = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}[resize]
    out = np.empty((len(frames), out_size, out_size, 3), np.uint8)
    for i, frame in enumerate(frames):
        cut = _warp_square(frame, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, crop_size, 0)
        out[i] = cut if crop_size == out_size else cv2.resize(cut, (out_size, out_size), interpolation=interpolation)
    return out


def crop_syncnet(frames: np.ndarray, track: TrackResult, crop_scale: float = SYNCNET_CROP_SCALE,
                 out_size: int = SYNCNET_SIZE) -> np.ndarray:
    """(T, 224, 224, 3) uint8 per-frame whole-face crops for SyncNet (syncnet_python's geometry)."""
    frames = check_frames(frames)
    if len(track.boxes) != len(frames):
        raise ValueError(f"{len(frames)} frames but the track has {len(track.boxes)} boxes; "
                         "pass track.slice(start, start + len(frames)) for a chunk")
    if not np.isfinite(track.boxes).all():
        raise ValueError(f"no face track to crop from (reason: {track.reason})")
    out = np.empty((len(frames), out_size, out_size, 3), np.uint8)
    for i, (frame, box) in enumerate(zip(frames, track.boxes)):
        half = max(box[2] - box[0], box[3] - box[1]) / 2
        cx = (box[0] + box[2]) / 2
        cy = (box[1] + box[3]) / 2 + half * crop_scale
        out[i] = _warp_square(frame, cx, cy, 2 * half * (1 + crop_scale), out_size, SYNCNET_PAD_VALUE)
    return out
