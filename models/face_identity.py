"""Face identity embeddings, so the split can keep one person's videos on one side without labels.

* ``dlib``: dlib's ResNet face descriptor (128-d, ``dlib_face_recognition_resnet_model_v1.dat``)
  on the face aligned by dlib's 5-point shape predictor, both from ``face-recognition-models``
  (offline). Two faces are one person when their Euclidean distance is under 0.6 (dlib's own
  threshold; on the real sample clips one person's frames were 0.21 to 0.36 apart, different
  people 0.72 to 0.90).
* ``insightface``: InsightFace's ArcFace ResNet-50 (``w600k_r50.onnx`` of the buffalo_l pack,
  512-d, user-supplied) through onnxruntime, prepared as InsightFace's ``ArcFaceONNX`` does: the
  face aligned to 112x112 by the least-squares similarity (Umeyama) that takes its five points
  (eye centres, nose tip, mouth corners; here from dlib's 68 landmarks, offline) onto ArcFace's
  template, RGB, ``(x - 127.5) / 127.5`` unless the graph starts by normalising itself (a ``Sub``
  and a ``Mul`` among its first nodes: then 0 and 1). The embedding is scaled to unit length and
  two faces are one person under a Euclidean distance of 1.1 (cosine similarity 0.395), DeepFace's
  verification threshold for the same buffalo_l model.

``embed(frame, box)`` takes one RGB uint8 frame and a face box ``x1, y1, x2, y2`` in its pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from models.dlib_models import FACE_DESCRIPTOR, SHAPE_5, packaged_model
from models.face_landmarks import DlibLandmarks, check_box
from shards.identity import GROUP_THRESHOLDS, IDENTITY_THRESHOLDS

# ArcFace's five reference points in its 112x112 input: eye centres, nose tip, mouth corners
# (image left first), as InsightFace's face_align defines them.
ARCFACE_TEMPLATE = np.asarray([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                               [41.5493, 92.3655], [70.7299, 92.2041]])
ARCFACE_SIZE = 112


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
    threshold = IDENTITY_THRESHOLDS[name]

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


def five_points_from_68(points: np.ndarray) -> np.ndarray:
    """ArcFace's five points from the 68-point iBUG layout: the two eye contours' centres, the nose
    tip (30) and the mouth corners (48, 54)."""
    points = np.asarray(points, np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation) taking ``src`` points onto
    ``dst`` (Umeyama 1991, the estimate InsightFace aligns faces with); reflections excluded."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sigma) @ d) / (a ** 2).sum(1).mean()
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def normalises_inside(model_path: Path) -> bool:
    """True when the graph's first eight nodes hold a ``Sub`` and a ``Mul`` (InsightFace's test for
    a model that takes raw pixels)."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node[:8]
    names = [node.name or node.op_type for node in nodes]
    return (any(n.startswith(("Sub", "_minus")) for n in names)
            and any(n.startswith(("Mul", "_mul")) for n in names))


class ArcFaceEmbedder:
    """InsightFace's ArcFace ``w600k_r50.onnx`` (see the module docstring)."""

    name = "insightface_w600k_r50"
    threshold = IDENTITY_THRESHOLDS[name]

    def __init__(self, model_path: str | Path, landmarks: DlibLandmarks | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"ArcFace model w600k_r50.onnx not found: {model_path}")
        self.landmarks = landmarks or DlibLandmarks()
        self.model_paths = (model_path, self.landmarks.model_path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=list(providers))
        model_input = self.session.get_inputs()[0]
        if list(model_input.shape[1:]) != [3, ARCFACE_SIZE, ARCFACE_SIZE]:
            raise ValueError(f"{model_path} takes {model_input.shape}, not ArcFace's (N, 3, 112, 112)")
        self.input_name = model_input.name
        self.mean, self.std = (0.0, 1.0) if normalises_inside(model_path) else (127.5, 127.5)

    def aligned(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(112, 112, 3) uint8 RGB face, aligned on its five points."""
        points = five_points_from_68(self.landmarks.landmarks(frame, box))
        matrix = similarity_matrix(points, ARCFACE_TEMPLATE)
        return cv2.warpAffine(np.ascontiguousarray(frame), matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)

    def embed(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        face = self.aligned(frame, box).astype(np.float32)
        blob = ((face - self.mean) / self.std).transpose(2, 0, 1)[None]
        (feature,) = self.session.run(None, {self.input_name: np.ascontiguousarray(blob)})[:1]
        feature = np.asarray(feature, np.float32).reshape(-1)
        return feature / max(float(np.linalg.norm(feature)), 1e-12)


IDENTITY_BACKENDS = ("dlib", "insightface", "none")
# backend -> the model name each record carries
BACKEND_MODELS = {"dlib": DlibFaceDescriptor.name, "insightface": ArcFaceEmbedder.name}


def make_embedder(backend: str | None, weights: str | Path | None = None,
                  weights_dir: str | Path | None = None) -> FaceEmbedder | None:
    """The identity embedder named ``backend`` (None for ``none``); ``weights`` an explicit model
    file, else the packaged dlib models or the registry's ``insightface_w600k_r50``."""
    if backend == "dlib":
        return DlibFaceDescriptor(weights)
    if backend == "insightface":
        if weights is None:
            from models.weights import resolve

            weights = resolve("insightface_w600k_r50", weights_dir)
        return ArcFaceEmbedder(weights)
    if backend in ("none", None):
        return None
    raise ValueError(f"unknown identity backend {backend!r}; use one of {', '.join(IDENTITY_BACKENDS)}")


def identity_threshold(backend: str, threshold: float | None = None) -> float:
    """The grouping threshold of ``backend`` (``shards.identity.assign_groups``): ``threshold``
    when given, else the backend's default in ``GROUP_THRESHOLDS``."""
    if threshold is not None:
        return float(threshold)
    return GROUP_THRESHOLDS[BACKEND_MODELS[backend]]
