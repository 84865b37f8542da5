"""dlib's model files as the ``face-recognition-models`` package ships them (work offline).

The package's own ``__init__`` imports ``pkg_resources``, which current setuptools no longer has, so
the files are found from the package's location without importing it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "face_recognition_models"
SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
FACE_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"


def packaged_model(name: str) -> Path:
    """The path of one model file inside ``face-recognition-models``, or a clear error."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE} is not installed: pip install face-recognition-models dlib-bin")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in the {PACKAGE} package at {path}")
    return path
