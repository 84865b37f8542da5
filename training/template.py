"""LivePortrait motion templates: write generated motion in the format LivePortrait drives a face with.

A template is a pickled dict, as LivePortrait's ``make_motion_template`` writes it
(``src/live_portrait_pipeline.py`` in KwaiVGI/LivePortrait)::

    {"n_frames": int, "output_fps": int,
     "motion": [{"scale": (1,1), "R": (1,3,3), "exp": (1,21,3), "t": (1,3),
                 "kp": (1,21,3), "x_s": (1,21,3)}, ...],      # float32, one dict per frame
     "c_eyes_lst": [(1,2), ...], "c_lip_lst": [(1,1), ...]}   # float32, one per frame

What LivePortrait reads from a driving template, with a still source image: per frame ``R`` (or the
older ``R_d``), ``exp``, ``t`` and ``scale``; in relative mode (its default) each is taken relative
to the template's first frame and applied to the *source* image's own canonical keypoints, pose and
expression. ``kp`` and ``x_s`` of a driving template are not read: the canonical keypoints always
come from the source face. ``c_eyes_lst``/``c_lip_lst`` (or ``c_d_eyes_lst``/``c_d_lip_lst``) are read
unconditionally but used only with ``--flag_eye_retargeting``/``--flag_lip_retargeting`` (both off by
default). Older templates name ``R`` ``R_d`` and the ratio lists ``c_d_*``; :func:`load_template`
reads both.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.pose import matrix_to_degrees, transform_keypoints
from shards.format import FPS
from shards.vector import motion_to_vector, vector_to_motion

N_KEYPOINTS = 21

# Keypoint rows LivePortrait animates for its "lip" and "eyes" regions (``animation_region`` in
# KwaiVGI/LivePortrait src/live_portrait_pipeline.py); its other rows carry no published names.
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)

# Eye/lip open ratios come from the 203-point 2D landmarks of real driving frames, which generated
# motion does not have, and no mapping from the 21 implicit keypoints to them is published. The
# template therefore carries constants at rest: eyes at 0.39 (the open-eye value LivePortrait itself
# substitutes for a closed first frame) and lips at 0.0 (the closed value it normalises lips to).
# They matter only if a user turns on LivePortrait's eye/lip retargeting, which replaces the driving
# motion by ratio-driven deltas: leave those flags off when driving with generated motion.
EYES_OPEN_RATIO = 0.39
LIP_REST_RATIO = 0.0


def neutral_canonical_kp() -> np.ndarray:
    """A schematic face of 21 canonical keypoints (21, 3), float32.

    A placeholder for ``kp`` (and through it ``x_s``) when neither the source face's keypoints nor a
    dataset mean is at hand. LivePortrait replaces it by the source image's own canonical keypoints
    when it renders, so it never reaches a rendered frame; it makes the preview look like a face.
    Layout: LivePortrait's keypoint space (x right, y down, about [-1, 1] over the crop), lip rows on
    a mouth ring, eye rows on two eyes, the remaining rows on the face outline.
    """
    kp = np.zeros((N_KEYPOINTS, 3), dtype=np.float32)
    lip_angles = np.linspace(0.0, 2.0 * np.pi, len(LIP_KEYPOINTS), endpoint=False)
    for row, angle in zip(LIP_KEYPOINTS, lip_angles):
        kp[row] = (0.12 * np.cos(angle), 0.22 + 0.05 * np.sin(angle), -0.05)
    eye_positions = [(-0.20, -0.10), (-0.12, -0.10), (0.12, -0.10), (0.20, -0.10), (0.0, -0.16)]
    for row, (x, y) in zip(EYE_KEYPOINTS, eye_positions):
        kp[row] = (x, y, -0.08)
    outline = [r for r in range(N_KEYPOINTS) if r not in LIP_KEYPOINTS + EYE_KEYPOINTS]
    outline_angles = np.linspace(0.0, 2.0 * np.pi, len(outline), endpoint=False)
    for row, angle in zip(outline, outline_angles):
        kp[row] = (0.32 * np.sin(angle), -0.40 * np.cos(angle), 0.05)
    return kp


def n_frames_for(n_samples: int, sample_rate: int, fps: int = FPS) -> int:
    """Frames covering the audio: ceil(seconds * fps), in exact integer arithmetic."""
    return -(-n_samples * fps // sample_rate)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place, else remove it.

    Readers therefore see the complete file or none. The temporary name keeps the suffix, so
    writers that pick a format from the extension (video muxers) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def motion_template(vector: np.ndarray, kp_c: np.ndarray | None = None,
                    fps: int = FPS) -> dict[str, Any]:
    """(T, 70) motion vectors -> a LivePortrait motion template dict (current key names).

    ``kp_c`` is the canonical keypoints (21, 3) or (63,) to store as ``kp`` and to drive ``x_s``
    with; default :func:`neutral_canonical_kp`.
    """
    motion = vector_to_motion(vector)
    n = motion["exp"].shape[0]
    kp = (neutral_canonical_kp() if kp_c is None
          else np.asarray(kp_c, dtype=np.float32).reshape(N_KEYPOINTS, 3))
    kp_all = np.broadcast_to(kp, (n, N_KEYPOINTS, 3))
    x_s = transform_keypoints(kp_all, motion["scale"], motion["R"], motion["exp"], motion["t"])

    def f32(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32).reshape(shape)

    frames = [{
        "scale": f32(motion["scale"][i], (1, 1)),
        "R": f32(motion["R"][i], (1, 3, 3)),
        "exp": f32(motion["exp"][i], (1, N_KEYPOINTS, 3)),
        "t": f32(motion["t"][i], (1, 3)),
        "kp": f32(kp, (1, N_KEYPOINTS, 3)),
        "x_s": f32(x_s[i], (1, N_KEYPOINTS, 3)),
    } for i in range(n)]
    return {
        "n_frames": int(n),
        "output_fps": int(fps),
        "motion": frames,
        "c_eyes_lst": [np.full((1, 2), EYES_OPEN_RATIO, dtype=np.float32) for _ in range(n)],
        "c_lip_lst": [np.full((1, 1), LIP_REST_RATIO, dtype=np.float32) for _ in range(n)],
    }


def save_template(template: dict[str, Any], path: str | Path) -> Path:
    """Pickle a template atomically (LivePortrait loads it with ``pickle.load``)."""
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(template, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def save_vector(vector: np.ndarray, path: str | Path) -> Path:
    """Write the (T, 70) float32 sequence as .npy, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(vector, dtype=np.float32))
    return path


@dataclass
class LoadedTemplate:
    """A template read back: the 70-dim sequence plus what else the file held."""

    vector: np.ndarray                 # (T, 70) float32
    fps: float
    kp: np.ndarray | None              # (T, 21, 3) canonical keypoints, when stored
    c_eyes: np.ndarray | None          # (T, 2)
    c_lip: np.ndarray | None           # (T, 1)


def template_to_vector(template: dict[str, Any]) -> np.ndarray:
    """A template dict (current or older key names) -> (T, 70) float32 vector."""
    frames = template.get("motion")
    if not isinstance(frames, list) or not frames:
        raise ValueError("not a LivePortrait motion template: 'motion' must be a non-empty list")
    key_r = "R" if "R" in frames[0] else "R_d"
    missing = [k for k in ("exp", "scale", "t", key_r) if k not in frames[0]]
    if missing:
        raise ValueError(f"not a LivePortrait motion template: frame dicts lack {missing}")

    def stack(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([np.asarray(f[name], dtype=np.float32).reshape(shape) for f in frames])

    pitch, yaw, roll = matrix_to_degrees(stack(key_r, (3, 3)))
    return motion_to_vector({"exp": stack("exp", (N_KEYPOINTS, 3)), "scale": stack("scale", (1,)),
                             "t": stack("t", (3,)), "pitch_deg": pitch, "yaw_deg": yaw,
                             "roll_deg": roll})


def load_template(path: str | Path) -> LoadedTemplate:
    """Read a template pickle of either key generation into a :class:`LoadedTemplate`."""
    with open(path, "rb") as f:
        template = pickle.load(f)
    if not isinstance(template, dict):
        raise ValueError(f"{path}: not a LivePortrait motion template (a {type(template).__name__})")
    vector = template_to_vector(template)
    frames = template["motion"]
    kp = (np.stack([np.asarray(f["kp"], np.float32).reshape(N_KEYPOINTS, 3) for f in frames])
          if "kp" in frames[0] else None)

    def ratios(new: str, old: str, width: int) -> np.ndarray | None:
        values = template.get(new, template.get(old))
        return None if values is None else np.asarray(values, np.float32).reshape(-1, width)

    fps = float(template.get("output_fps", FPS))
    return LoadedTemplate(vector=vector, fps=fps, kp=kp,
                          c_eyes=ratios("c_eyes_lst", "c_d_eyes_lst", 2),
                          c_lip=ratios("c_lip_lst", "c_d_lip_lst", 1))


def resample_vector(vector: np.ndarray, src_fps: float, dst_fps: float = FPS) -> np.ndarray:
    """Linearly resample a (T, 70) sequence to another frame rate (templates come at 20 to 30 fps)."""
    if math.isclose(src_fps, dst_fps):
        return np.asarray(vector, dtype=np.float32)
    n_src = len(vector)
    n_dst = max(1, round(n_src * dst_fps / src_fps))
    src_t = np.arange(n_src) / src_fps
    dst_t = np.arange(n_dst) / dst_fps
    return np.stack([np.interp(dst_t, src_t, vector[:, d]) for d in range(vector.shape[1])],
                    axis=1).astype(np.float32)
