"""Face identity embeddings, so the split can keep one person's videos on one side without labels.

* ``dlib``: dlib's ResNet face descriptor (128-d, ``dlib_face_recognition_resnet_model_v1.dat``)
  on the face aligned by dlib's 5-point shape predictor, both from ``face-recognition-models``
  (offline). Two faces are one person when their Euclidean distance is under 0.6 (dlib's own
  threshold; on the real sample clips one person's frames were 0.21 to 0.36 apart, different
  people 0.72 to 0.90).

``embed(frame, box)`` takes one RGB uint8 frame and a face box ``x1, y1, x2, y2`` in its pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from models.dlib_models import FACE_DESCRIPTOR, SHAPE_5, packaged_model
from models.face_landmarks import check_box

DLIB_THRESHOLD = 0.6


class FaceEmbedder(Protocol):
    name: str            # recorded per clip, e.g. "dlib_resnet128"
    threshold: float     # same person below this Euclidean distance
    model_paths: tuple[Path, ...]

    def embed(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(D,) float32 identity embedding of the face in ``box``."""
        ...


class DlibFaceDescriptor:
    """dlib's 128-d ResNet face descriptor (see the module docstring)."""

    name = "dlib_resnet128"
    threshold = DLIB_THRESHOLD

    def __init__(self, descriptor_path: str | Path | None = None, shape_path: str | Path | None = None):
        import dlib

        self.model_paths = (Path(descriptor_path) if descriptor_path else packaged_model(FACE_DESCRIPTOR),
                            Path(shape_path) if shape_path else packaged_model(SHAPE_5))
        for path in self.model_paths:
            if not path.is_file():
                raise FileNotFoundError(f"dlib model not found: {path}")
        self.descriptor = dlib.face_recognition_model_v1(str(self.model_paths[0]))
        self.shape = dlib.shape_predictor(str(self.model_paths[1]))
        self._rectangle = dlib.rectangle

    def embed(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = (int(round(v)) for v in check_box(box))
        frame = np.ascontiguousarray(frame)
        shape = self.shape(frame, self._rectangle(x1, y1, x2, y2))
        return np.asarray(self.descriptor.compute_face_descriptor(frame, shape), np.float32)


IDENTITY_BACKENDS = ("dlib", "none")
BACKEND_MODELS = {"dlib": DlibFaceDescriptor.name}  # backend -> the model name each record carries


def make_embedder(backend: str | None) -> FaceEmbedder | None:
    """The identity embedder named ``backend`` (None for ``none``)."""
    if backend == "dlib":
        return DlibFaceDescriptor()
    if backend in ("none", None):
        return None
    raise ValueError(f"unknown identity backend {backend!r}; use one of {', '.join(IDENTITY_BACKENDS)}")
