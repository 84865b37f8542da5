"""Sync-C / Sync-D as syncnet_python's pipeline gets them: face tracks, crops, then SyncNet.

syncnet_python (``run_pipeline.py``) detects faces on every frame, links detections into tracks
(IoU > 0.5 with the track's last box, at most 25 frames without a detection), keeps tracks of at
least 100 frames whose faces average at least 100 px, fills gaps by linear interpolation, smooths
each box's centre and half-side with ``scipy.signal.medfilt`` (kernel 13), and cuts each frame as
``frame[y - s : y + s (1 + 2c), x - s (1 + c) : x + s (1 + c)]`` from a copy padded with grey 110,
c = 0.40, resized to 224x224. The scores of the longest track are reported (Wav2Lip's
``scores_LSE`` reads the same numbers). The detector here is ``models.face_detectors`` (Haar or
SCRFD) instead of S3FD; the minimum track and face sizes are options so short test clips can be scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.signal import medfilt

from filters.syncnet import sync_scores
from models.syncnet import CROP_SIZE, WINDOW_FRAMES
from shards.crop import SYNCNET_CROP_SCALE as CROP_SCALE
from shards.crop import SYNCNET_PAD_VALUE as PAD_VALUE
from shards.format import SAMPLES_PER_FRAME

IOU_THRESHOLD = 0.5
MAX_MISSED = 25       # num_failed_det
MIN_TRACK = 100       # min_track
MIN_FACE_SIZE = 100   # min_face_size (pixels)
SMOOTH_KERNEL = 13
VSHIFT = 15


@dataclass(frozen=True)
class FaceTrack:
    """Frames ``start`` .. ``start + len(boxes) - 1`` and one (x1, y1, x2, y2) box each, gaps filled."""

    start: int
    boxes: np.ndarray


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def track_faces(detections: list[np.ndarray], min_track: int = MIN_TRACK, min_face_size: float = MIN_FACE_SIZE
                ) -> list[FaceTrack]:
    """syncnet_python's ``track_shot`` on per-frame (K, >=4) boxes: tracks longest first."""
    remaining = [list(np.asarray(d, np.float64)[:, :4]) for d in detections]
    tracks = []
    while True:
        frames, boxes = [], []
        for t, faces in enumerate(remaining):
            for k, face in enumerate(faces):
                if not frames:
                    frames.append(t), boxes.append(face)
                    del faces[k]
                    break
                if t - frames[-1] <= MAX_MISSED and iou(face, boxes[-1]) > IOU_THRESHOLD:
                    frames.append(t), boxes.append(face)
                    del faces[k]
                    break
            else:
                if frames and t - frames[-1] > MAX_MISSED:
                    break
        if not frames:
            break
        if frames[-1] - frames[0] + 1 < min_track:
            continue
        span = np.arange(frames[0], frames[-1] + 1)
        filled = np.stack([np.interp(span, frames, np.asarray(boxes)[:, j]) for j in range(4)], axis=1)
        size = np.mean(np.maximum(filled[:, 2] - filled[:, 0], filled[:, 3] - filled[:, 1]))
        if size >= min_face_size:
            tracks.append(FaceTrack(int(frames[0]), filled))
    return sorted(tracks, key=lambda tr: -len(tr.boxes))


def crop_track(frames: np.ndarray, track: FaceTrack, crop_scale: float = CROP_SCALE,
               out_size: int = CROP_SIZE) -> np.ndarray:
    """(n, 224, 224, 3) uint8 crops of the track's frames, as syncnet_python's ``crop_video``."""
    boxes = track.boxes
    kernel = SMOOTH_KERNEL
    half = medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2, kernel)
    cy = medfilt((boxes[:, 1] + boxes[:, 3]) / 2, kernel)
    cx = medfilt((boxes[:, 0] + boxes[:, 2]) / 2, kernel)
    out = np.empty((len(boxes), out_size, out_size, 3), np.uint8)
    for i in range(len(boxes)):
        frame = frames[track.start + i]
        bs = half[i]
        bsi = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), mode="constant", constant_values=PAD_VALUE)
        my, mx = cy[i] + bsi, cx[i] + bsi
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        if face.size == 0:  # a zero-size box after the zero-padded median filter's edge
            face = np.full((out_size, out_size, 3), PAD_VALUE, np.uint8)
        out[i] = cv2.resize(face, (out_size, out_size))
    return out


def sync_metric(model, detector, frames: np.ndarray, audio: np.ndarray, min_track: int = MIN_TRACK,
                min_face_size: float = MIN_FACE_SIZE, vshift: int = VSHIFT) -> dict[str, object]:
    """Sync-C, Sync-D and offset of the longest face track of 25 fps frames against 16 kHz audio;
    None scores with a ``reason`` when no track qualifies or the track is too short for SyncNet."""
    detections = [detector.detect(f) for f in frames]
    tracks = track_faces(detections, min_track, min_face_size)
    result: dict[str, object] = {"sync_c": None, "sync_d": None, "offset": None, "track_frames": 0,
                                 "tracks": len(tracks), "reason": None}
    if not tracks:
        result["reason"] = f"no face track of >= {min_track} frames with faces >= {min_face_size:g} px"
        return result
    track = tracks[0]
    crops = crop_track(frames, track)
    first = track.start * SAMPLES_PER_FRAME
    speech = audio[first:first + len(crops) * SAMPLES_PER_FRAME]
    result["track_frames"] = len(crops)
    if min(len(crops), len(speech) // SAMPLES_PER_FRAME) <= WINDOW_FRAMES:
        result["reason"] = f"track of {len(crops)} frames is too short for SyncNet's 5-frame windows"
        return result
    scores = sync_scores(model, crops, speech, vshift=vshift)
    result.update(sync_c=scores.conf, sync_d=scores.dist, offset=scores.offset)
    return result
