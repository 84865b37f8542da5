"""Face landmarks from a face box, for crops as LivePortrait computes them (``shards.crop``).

Each backend takes one RGB uint8 frame and a face box ``x1, y1, x2, y2`` (a detector's, in frame
pixels) and returns (N, 2) float32 landmarks in frame pixels.

* ``dlib``: dlib's 68-point (iBUG layout) shape predictor from ``face-recognition-models``, run with
  the ``dlib-bin`` wheel: ships inside a registry package, so it works offline; the default. Its
  training data (iBUG 300-W) excludes commercial use. It was trained on dlib's HOG detector boxes;
  on the real sample clips, fed the Haar cascade's boxes instead, its points moved by 0.2 to 1.1 px
  on faces of 50 to 260 px, so the tracker's boxes are given to it as they are.
* ``insightface``: InsightFace's ``2d106det.onnx`` (buffalo_l, LivePortrait's own 106-point model),
  user-supplied, through onnxruntime, prepared as InsightFace's ``Landmark.get`` does: a square of
  1.5 x the box's longer side around the box centre, cut to the network's 192 px, RGB, mean 0 and
  std 1 (an MXNet export that normalises inside), output (1, 212) in [-1, 1] mapped back.

LivePortrait itself refines the 106 points with a 203-point model of its own (``landmark.onnx``);
the crop rule takes any of the three layouts.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from models.dlib_models import SHAPE_68, packaged_model

INSIGHTFACE_BOX_SCALE = 1.5   # Landmark.get: the crop is 1.5 x the box's longer side
INSIGHTFACE_MEAN = 0.0        # 2d106det normalises inside the graph (bn_data)
INSIGHTFACE_STD = 1.0


class LandmarkBackend(Protocol):
    name: str         # short backend name recorded per clip, e.g. "dlib68"
    model_path: Path  # its weights file, hashed into the run's weight ids

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(N, 2) float32 landmarks in frame pixels of the face in ``box`` (x1, y1, x2, y2)."""
        ...


def check_box(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"face box must be finite x1, y1, x2, y2 with x2 > x1 and y2 > y1, got {box}")
    return box


class DlibLandmarks:
    """dlib's 68-point shape predictor (see the module docstring)."""

    name = "dlib68"

    def __init__(self, model_path: str | Path | None = None):
        import dlib

        self.model_path = Path(model_path) if model_path is not None else packaged_model(SHAPE_68)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"dlib shape predictor not found: {self.model_path}")
        self.predictor = dlib.shape_predictor(str(self.model_path))
        self._rectangle = dlib.rectangle

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = (int(round(v)) for v in check_box(box))
        shape = self.predictor(np.ascontiguousarray(frame), self._rectangle(x1, y1, x2, y2))
        return np.asarray([(p.x, p.y) for p in shape.parts()], np.float32)


class InsightFaceLandmarks:
    """InsightFace ``2d106det.onnx`` through onnxruntime (see the module docstring)."""

    name = "insightface106"

    def __init__(self, model_path: str | Path, providers: Sequence[str] | None = None):
        import onnxruntime

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"2d106det model not found: {self.model_path}")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(self.model_path), options, providers=list(providers or ["CPUExecutionProvider"]))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_size = int(model_input.shape[2])
        (output,) = self.session.get_outputs()
        self.output_name = output.name
        self.n_points = int(output.shape[1]) // 2

    def input_matrix(self, box: np.ndarray) -> np.ndarray:
        """2x3 frame-to-input matrix: the box centre to the input centre, 1.5 x its longer side to
        the input size."""
        x1, y1, x2, y2 = check_box(box)
        s = self.input_size / (max(x2 - x1, y2 - y1) * INSIGHTFACE_BOX_SCALE)
        half = self.input_size / 2
        return np.asarray([[s, 0.0, half - s * (x1 + x2) / 2], [0.0, s, half - s * (y1 + y2) / 2]])

    def blob(self, frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """(1, 3, S, S) float32 network input, RGB."""
        cut = cv2.warpAffine(frame, matrix, (self.input_size, self.input_size), borderValue=0.0)
        blob = (cut.astype(np.float32) - INSIGHTFACE_MEAN) / INSIGHTFACE_STD
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        matrix = self.input_matrix(box)
        pred = self.session.run([self.output_name], {self.input_name: self.blob(frame, matrix)})[0]
        points = np.asarray(pred, np.float64).reshape(-1, 2)[-self.n_points:]
        points = (points + 1) * (self.input_size // 2)  # [-1, 1] -> input pixels
        back = cv2.invertAffineTransform(matrix)
        return (points @ back[:, :2].T + back[:, 2]).astype(np.float32)


LANDMARK_BACKENDS = ("dlib", "insightface", "none")


def make_landmarks(backend: str, weights: str | Path | None = None,
                   weights_dir: str | Path | None = None) -> LandmarkBackend | None:
    """The landmark backend named ``backend`` (None for ``none``); ``weights`` an explicit file,
    else the packaged dlib model or the registry's ``insightface_2d106det``."""
    if backend == "dlib":
        return DlibLandmarks(weights)
    if backend == "insightface":
        if weights is None:
            from models.weights import resolve

            weights = resolve("insightface_2d106det", weights_dir)
        return InsightFaceLandmarks(weights)
    if backend in ("none", None):
        return None
    raise ValueError(f"unknown landmark backend {backend!r}; use one of {', '.join(LANDMARK_BACKENDS)}")
