"""Identity groups: videos whose faces are one person share a split group, without speaker labels.

Every video carries a few face embeddings (one per sampled frame). Two videos are linked when any
of their embeddings are closer than the identity threshold (Euclidean; 0.6 for dlib's descriptor,
1.1 for ArcFace), and a group is a connected component of that graph: over-merging (a chain of
look-alikes) only makes the split coarser, while a missed link would put one person in both splits.

Groups are assigned once and kept: a grown input never moves a video that already has a group.
New videos are linked among themselves; a component of new videos that reaches a video with a
group (an earlier video, or one with a ``speaker``) joins the group of the closest such embedding,
else it becomes ``face:<smallest video id in it>``. When a new component reaches two earlier
groups it joins one; the audit's identity check reports what that leaves in both splits.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

# Same person below this distance, per embedding model (the name each clip records).
# dlib's own threshold for its descriptor; DeepFace's for buffalo_l's ArcFace (unit-length embeddings).
IDENTITY_THRESHOLDS = {"dlib_resnet128": 0.6, "insightface_w600k_r50": 1.1}
BLOCK = 2048  # rows of a distance block (2048 x 2048 float32 = 16 MB)


def identity_group(video_id: str) -> str:
    return f"face:{video_id}"


def squared_distances(block: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """(len(block), len(b)) squared Euclidean distances, ``b_sq`` being b's squared row norms
    (computed once for all blocks); may dip just below 0 from rounding."""
    return (block * block).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * block @ b.T


def close_pairs(a: np.ndarray, b: np.ndarray, threshold: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows of ``a``, rows of ``b``, distances) of every pair closer than ``threshold``, block by block."""
    if len(a) == 0 or len(b) == 0:
        return
    a = np.asarray(a, np.float32).reshape(len(a), -1)
    b = np.asarray(b, np.float32).reshape(len(b), -1)
    b_sq = (b * b).sum(axis=1)
    for start in range(0, len(a), BLOCK):
        block = a[start:start + BLOCK]
        sq = squared_distances(block, b, b_sq)
        dist = np.sqrt(np.clip(sq, 0.0, None))
        rows, cols = np.nonzero(dist < threshold)
        yield rows + start, cols, dist[rows, cols]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def assign_groups(new: Mapping[str, np.ndarray], known: Mapping[str, tuple[str, np.ndarray]],
                  threshold: float) -> dict[str, str]:
    """Groups of the ``new`` videos (video id -> (K, D) embeddings, K may be 0).

    ``known``: video id -> (group, (K, D) embeddings) of videos whose group is fixed (assigned
    earlier, or given by a speaker label). A new video without embeddings is its own group.
    """
    ids = sorted(new)
    index = {vid: i for i, vid in enumerate(ids)}
    points, owner = _stack({vid: new[vid] for vid in ids}, index)
    union = _UnionFind(len(ids))
    for rows, cols, _ in close_pairs(points, points, threshold):
        for r, c in zip(rows, cols):
            union.union(int(owner[r]), int(owner[c]))

    known_ids = sorted(known)
    known_points, known_owner = _stack({vid: known[vid][1] for vid in known_ids},
                                       {vid: i for i, vid in enumerate(known_ids)})
    nearest: dict[int, tuple[float, str]] = {}  # component root -> (distance, group)
    for rows, cols, dist in close_pairs(points, known_points, threshold):
        for r, c, d in zip(rows, cols, dist):
            root = union.find(int(owner[r]))
            group = known[known_ids[int(known_owner[c])]][0]
            if root not in nearest or (float(d), group) < nearest[root]:
                nearest[root] = (float(d), group)
    # Roots are the smallest index of each component, and ids are sorted: the smallest video id.
    return {vid: nearest[union.find(i)][1] if union.find(i) in nearest else identity_group(ids[union.find(i)])
            for i, vid in enumerate(ids)}


def _stack(embeddings: Mapping[str, np.ndarray], index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """All embeddings as one (P, D) array and the index of the video each row belongs to."""
    arrays = [np.asarray(e, np.float32).reshape(len(e), -1) for e in embeddings.values() if len(e)]
    owners = [np.full(len(e), index[vid]) for vid, e in embeddings.items() if len(e)]
    if not arrays:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    return np.concatenate(arrays), np.concatenate(owners)


def nearest(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query embedding, the distance to the closest reference and its row (inf and -1
    without references)."""
    distances, rows = np.full(len(queries), np.inf), np.full(len(queries), -1, np.int64)
    if len(queries) == 0 or len(references) == 0:
        return distances, rows
    q = np.asarray(queries, np.float32).reshape(len(queries), -1)
    r = np.asarray(references, np.float32).reshape(len(references), -1)
    r_sq = (r * r).sum(axis=1)
    for start in range(0, len(q), BLOCK):
        block = q[start:start + BLOCK]
        sq = squared_distances(block, r, r_sq)
        rows[start:start + BLOCK] = sq.argmin(axis=1)
        distances[start:start + BLOCK] = np.sqrt(np.clip(sq.min(axis=1), 0.0, None))
    return distances, rows
