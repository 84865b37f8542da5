"""The two face detectors behind ``pipeline.faces``: OpenCV's Haar cascade and InsightFace's SCRFD.

Both take one RGB uint8 frame and return an (K, 5) float32 array of ``x1, y1, x2, y2, score`` rows
in the frame's pixel coordinates, best first.

* ``haar``: the frontal-face cascade bundled with opencv-python-headless 4.x
  (``cv2.data.haarcascades``), so it runs offline with no weights to fetch. Limits: frontal faces
  only (profiles beyond ~45 degrees of yaw are missed), in-plane rotation beyond ~15 degrees is
  missed (hence the retry on rotated copies below), faces under ~24 px at detection scale are
  missed, occasional false positives on textured background (the tracker discards detections that
  do not persist), and its boxes are tighter than the landmark extent LivePortrait crops around.
* ``insightface``: SCRFD ``det_10g.onnx`` from InsightFace's ``buffalo_l`` pack, the detector
  LivePortrait uses, run through onnxruntime. The file is user-supplied (its licence is
  non-commercial research only) and found through the weights registry.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

HAAR_CASCADE = "haarcascade_frontalface_default.xml"

# SCRFD (det_10g): three feature strides, two anchors per location, score/box/keypoint heads.
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2
SCRFD_MEAN = 127.5
SCRFD_STD = 128.0


class FaceDetector(Protocol):
    def detect(self, frame: np.ndarray, min_side: float = 0.0) -> np.ndarray:
        """(K, 5) float32 ``x1, y1, x2, y2, score`` in frame pixels for one RGB uint8 frame. Faces
        with a side under ``min_side`` frame pixels may be left out (a hint that saves work)."""
        ...


# ---------------------------------------------------------------------------------------------
# Haar cascade

class HaarDetector:
    """OpenCV's frontal-face Haar cascade, on a downscaled grey copy of the frame.

    ``max_side``: frames are shrunk so their longer side is at most this (detection cost grows with
    the pixel count). ``retry_angles``: when the upright frame has no face, copies rotated by these
    angles (degrees) are tried in turn; a tilted head is the cascade's most common miss in talking
    video. Boxes found on a rotated copy are mapped back as axis-aligned boxes of the same size.
    The score is the cascade's final-stage weight (higher is more face-like).
    """

    def __init__(self, cascade: str = HAAR_CASCADE, max_side: int = 400, scale_factor: float = 1.1,
                 min_neighbors: int = 4, min_size: int = 20,
                 retry_angles: Sequence[float] = (-20.0, 20.0)):
        path = Path(cascade) if Path(cascade).is_file() else Path(cv2.data.haarcascades) / cascade
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise FileNotFoundError(f"Haar cascade not found or unreadable: {path}")
        self.max_side = int(max_side)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.retry_angles = tuple(float(a) for a in retry_angles)

    def _detect_grey(self, grey: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
        boxes, _, weights = self.classifier.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size), outputRejectLevels=True)
        if len(boxes) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(weights, np.float32).reshape(-1)

    def detect(self, frame: np.ndarray, min_side: float = 0.0) -> np.ndarray:
        """``min_side`` skips the pyramid levels of smaller faces, where most of the cascade's time
        goes (its scan windows grow with the level)."""
        height, width = frame.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        min_size = max(self.min_size, int(min_side * scale))
        xywh, scores = self._detect_grey(grey, min_size)
        if len(xywh) == 0:
            for angle in self.retry_angles:
                xywh, scores = self._detect_rotated(grey, angle, min_size)
                if len(xywh):
                    break
        out = np.zeros((len(xywh), 5), np.float32)
        out[:, 0:2] = xywh[:, 0:2]
        out[:, 2:4] = xywh[:, 0:2] + xywh[:, 2:4]
        out[:, :4] /= scale
        out[:, 4] = scores
        return out[np.argsort(-out[:, 4])]

    def _detect_rotated(self, grey: np.ndarray, angle: float, min_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Detect on a copy rotated about the image centre; return boxes in unrotated coordinates."""
        h, w = grey.shape
        rotation = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rotated = cv2.warpAffine(grey, rotation, (w, h), borderMode=cv2.BORDER_REPLICATE)
        xywh, scores = self._detect_grey(rotated, min_size)
        if len(xywh) == 0:
            return xywh, scores
        centres = xywh[:, :2] + xywh[:, 2:] / 2
        back = cv2.invertAffineTransform(rotation)
        centres = centres @ back[:, :2].T + back[:, 2]
        xywh = np.concatenate([centres - xywh[:, 2:] / 2, xywh[:, 2:]], axis=1).astype(np.float32)
        return xywh, scores


# ---------------------------------------------------------------------------------------------
# SCRFD (InsightFace det_10g)

def scrfd_anchor_centres(height: int, width: int, stride: int, num_anchors: int = SCRFD_ANCHORS) -> np.ndarray:
    """(height * width * num_anchors, 2) anchor centres ``x, y`` in network-input pixels.

    SCRFD places anchors at the top-left corner of every feature cell (``x * stride``, no half-cell
    offset), row by row, each location repeated ``num_anchors`` times.
    """
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, num_anchors, axis=0)


def distance2bbox(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Boxes from anchor points and (left, top, right, bottom) distances: (N, 4) ``x1, y1, x2, y2``."""
    return np.stack([points[:, 0] - distances[:, 0], points[:, 1] - distances[:, 1],
                     points[:, 0] + distances[:, 2], points[:, 1] + distances[:, 3]], axis=-1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        xx1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_scrfd(outputs: Sequence[np.ndarray], input_size: int, score_threshold: float,
                 nms_threshold: float) -> np.ndarray:
    """SCRFD head outputs -> (K, 5) ``x1, y1, x2, y2, score`` in network-input pixels, after NMS.

    ``outputs`` are in the ONNX file's order: the score maps of strides 8, 16, 32, then their box
    distance maps (in units of the stride), then (det_10g only) their keypoint maps, which are
    not used here. A leading batch axis of size 1 is accepted.
    """
    n_strides = len(SCRFD_STRIDES)
    if len(outputs) not in (2 * n_strides, 3 * n_strides):
        raise ValueError(f"SCRFD model must have 6 or 9 outputs, got {len(outputs)}")
    boxes, scores = [], []
    for i, stride in enumerate(SCRFD_STRIDES):
        score = np.asarray(outputs[i]).reshape(-1)
        distance = np.asarray(outputs[i + n_strides]).reshape(-1, 4) * stride
        side = input_size // stride
        centres = scrfd_anchor_centres(side, side, stride)
        if len(score) != len(centres) or len(distance) != len(centres):
            raise ValueError(f"stride {stride}: expected {len(centres)} anchors for a {input_size} px input, "
                             f"got {len(score)} scores and {len(distance)} boxes")
        keep = score >= score_threshold
        boxes.append(distance2bbox(centres[keep], distance[keep]))
        scores.append(score[keep])
    all_boxes = np.concatenate(boxes).astype(np.float32)
    all_scores = np.concatenate(scores).astype(np.float32)
    kept = nms(all_boxes, all_scores, nms_threshold)
    return np.concatenate([all_boxes[kept], all_scores[kept, None]], axis=1).reshape(-1, 5)


class ScrfdDetector:
    """InsightFace SCRFD (``det_10g.onnx``) through onnxruntime, as InsightFace runs it.

    The frame is resized keeping its aspect ratio into the top-left of a black square of
    ``input_size`` (LivePortrait prepares the detector at 512), normalised as ``(x - 127.5) / 128``
    in RGB order, and the decoded boxes are scaled back to frame pixels.
    """

    def __init__(self, model_path: str | Path, input_size: int = 512, score_threshold: float = 0.5,
                 nms_threshold: float = 0.4, providers: Sequence[str] | None = None):
        import onnxruntime

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"SCRFD model not found: {model_path}")
        if input_size % max(SCRFD_STRIDES):
            raise ValueError(f"input_size must be a multiple of {max(SCRFD_STRIDES)}, got {input_size}")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(model_path), options, providers=list(providers or ["CPUExecutionProvider"]))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_size = int(input_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)

    def letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """(1, 3, S, S) float32 network input and the frame-to-input scale."""
        height, width = frame.shape[:2]
        if height > width:
            new_h, new_w = self.input_size, int(self.input_size * width / height)
        else:
            new_h, new_w = int(self.input_size * height / width), self.input_size
        scale = new_h / height
        canvas = np.zeros((self.input_size, self.input_size, 3), np.float32)
        canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
        blob = ((canvas - SCRFD_MEAN) / SCRFD_STD).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(blob, dtype=np.float32), scale

    def detect(self, frame: np.ndarray, min_side: float = 0.0) -> np.ndarray:
        """``min_side`` is ignored: the network costs the same whatever the face size."""
        blob, scale = self.letterbox(frame)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        dets = decode_scrfd(outputs, self.input_size, self.score_threshold, self.nms_threshold)
        dets[:, :4] /= scale
        return dets


def insightface_model_path(weights: str | Path | None, weights_dir: str | Path | None = None) -> Path:
    """An explicit ``det_10g.onnx`` path, else the weights registry's ``insightface_det_10g``."""
    if weights is not None:
        return Path(weights)
    from models.weights import resolve

    return resolve("insightface_det_10g", weights_dir)


def make_detector(backend: str, weights: str | Path | None = None, weights_dir: str | Path | None = None,
                  **options) -> FaceDetector:
    """The detector for ``backend`` (``haar`` or ``insightface``); ``options`` go to its constructor."""
    if backend == "haar":
        return HaarDetector(**options)
    if backend == "insightface":
        return ScrfdDetector(insightface_model_path(weights, weights_dir), **options)
    raise ValueError(f"unknown face backend {backend!r}; use 'haar' or 'insightface'")
