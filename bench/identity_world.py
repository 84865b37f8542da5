"""Synthetic face-embedding worlds calibrated to published verification figures, for the identity
grouping benchmark (``bench/identity.py``) and its test.

A frame's embedding is ``person + a_v * video + frame`` (then unit length for ArcFace):

* ``person``: a point in a random ``rank``-dimensional subspace (faces differ along fewer
  directions than the embedding has); the spread of distances between people comes from it;
* ``video``: isotropic noise shared by a video's frames (lighting, camera, age), scaled per video
  by ``a_v`` (log-normal), so some videos are much harder than others;
* ``frame``: isotropic noise of each frame (pose, expression), a third of the within-person
  squared distance.

The parameters below were set so that frame pairs reproduce the published figures; ``calibration``
measures them again and ``bench/identity.py`` reports both, so the match can be checked:

* dlib (``dlib_resnet128``): precision / recall of ``distance < t`` over the 81,875,206 pairs of
  12,797 LFW images of 5,467 people (Jack Grimes, "Face recognition distances investigation",
  jackgrimes.net/projects/face_recognition): recall 0.02 / 0.29 / 0.59 / 0.84 / 0.96 / 0.99 at
  t = 0.30 / 0.40 / 0.45 / 0.50 / 0.55 / 0.60, precision 0.98 / 0.91 / 0.71 / 0.34 at
  0.45 / 0.50 / 0.55 / 0.60. With LFW's ~0.24 M same-person pairs that is a different-person
  rate of 3.5e-5 / 2.4e-4 / 1.15e-3 / 5.7e-3 at 0.45 / 0.50 / 0.55 / 0.60.
* ArcFace (``insightface_w600k_r50``, buffalo_l): InsightFace's published accuracy of buffalo_l
  (python-package README): TAR 97.25 % at FAR 1e-4 on IJB-C and 91.25 % at FAR 1e-6 on MR-ALL.
  Thresholds are not published with them: different-person cosine similarity is taken as
  N(0, 0.08) (ArcFace's negative pairs sit near 90 degrees), which puts FAR 1e-4 at cosine 0.30
  and 1e-6 at 0.38, so same-person cosines are N(0.58, 0.146) to meet both TARs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorldParams:
    backend: str
    dim: int
    rank: int            # dimensions people differ along
    person_scale: float  # per-coordinate sd of a person in that subspace
    video_scale: float   # per-coordinate sd of a video's shared noise (times a_v)
    video_spread: float  # sd of log a_v
    frame_scale: float   # per-coordinate sd of a frame's own noise
    unit: bool           # embeddings at unit length (ArcFace)


WORLDS = {
    "dlib": WorldParams("dlib_resnet128", 128, 30, 0.087, 0.0208, 0.27, 0.0153, False),
    "arcface": WorldParams("insightface_w600k_r50", 512, 72, 1.0, 0.0272, 0.55, 0.0235, True),
}

# Published figures to compare the world with (see the module docstring).
PUBLISHED = {
    "dlib": {"same_below": {0.30: 0.02, 0.40: 0.29, 0.45: 0.59, 0.50: 0.84, 0.55: 0.96, 0.60: 0.99},
             "different_below": {0.45: 3.5e-5, 0.50: 2.4e-4, 0.55: 1.15e-3, 0.60: 5.7e-3}},
    # cosine 0.2976 / 0.3805 is Euclidean 1.1854 / 1.1132 on unit vectors
    "arcface": {"same_below": {1.1854: 0.9725, 1.1132: 0.9125},
                "different_below": {1.1854: 1e-4, 1.1132: 1e-6}},
}


@dataclass
class World:
    person: np.ndarray             # (V,) person index of each video
    frames: np.ndarray             # (V, F, D) float16 frame embeddings

    @property
    def n_people(self) -> int:
        return int(self.person.max()) + 1 if len(self.person) else 0


def _frames(params: WorldParams, rng: np.random.Generator, basis: np.ndarray, person_of: np.ndarray,
            centres: np.ndarray, n_frames: int) -> np.ndarray:
    n = len(person_of)
    scale = params.video_scale * np.exp(params.video_spread * rng.standard_normal(n)).astype(np.float32)
    video = centres[person_of] @ basis + scale[:, None] * rng.standard_normal((n, params.dim), np.float32)
    frames = video[:, None, :] + params.frame_scale * rng.standard_normal((n, n_frames, params.dim), np.float32)
    if params.unit:
        frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    return frames


def make_world(name: str, n_people: int, seed: int = 0, videos: tuple[int, int] = (1, 8),
               n_frames: int = 4) -> World:
    """``n_people`` people with a uniform ``videos`` range of videos each, ``n_frames`` frames a video."""
    params = WORLDS[name]
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((params.dim, params.rank)))[0].T.astype(np.float32)
    centres = (params.person_scale * rng.standard_normal((n_people, params.rank))).astype(np.float32)
    if params.unit:  # people on the unit sphere of their subspace, noise added around them
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    counts = rng.integers(videos[0], videos[1] + 1, n_people)
    person = np.repeat(np.arange(n_people), counts)
    frames = np.empty((len(person), n_frames, params.dim), np.float16)  # half the memory of a 100k-people world
    for start in range(0, len(person), 50_000):  # bounded temporaries
        part = person[start:start + 50_000]
        frames[start:start + len(part)] = _frames(params, rng, basis, part, centres, n_frames)
    return World(person, frames)


def calibration(name: str, pairs: int = 400_000, seed: int = 1) -> dict[str, dict[str, float]]:
    """The fraction of frame pairs under each published threshold: same person in two different
    videos, and two different people, measured on a world of 20,000 people."""
    world = make_world(name, 20_000, seed, videos=(2, 2), n_frames=1)
    rng = np.random.default_rng(seed)
    emb = world.frames[:, 0].astype(np.float32)
    first = 2 * rng.integers(0, world.n_people, pairs)
    same = np.linalg.norm(emb[first] - emb[first + 1], axis=1)
    a, b = rng.integers(0, len(emb), (2, pairs * 5))
    keep = world.person[a] != world.person[b]
    different = np.linalg.norm(emb[a[keep]] - emb[b[keep]], axis=1)
    published = PUBLISHED[name]
    return {"same_below": {f"{t:g}": float((same < t).mean()) for t in published["same_below"]},
            "different_below": {f"{t:g}": float((different < t).mean()) for t in published["different_below"]},
            "same_mean": float(same.mean()), "same_sd": float(same.std()),
            "different_mean": float(different.mean()), "different_sd": float(different.std()),
            "pairs": {"same": int(len(same)), "different": int(len(different))}}
