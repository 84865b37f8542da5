"""Identity groups: videos whose faces are one person share a split group, without speaker labels.

Every video carries a few face embeddings (one per sampled frame), pooled into one: their mean,
scaled back to unit length for backends whose embeddings are unit length. Groups are then built
bottom-up by average linkage: two groups merge when the root mean square of the distances
between all their members (every pair, not just the closest) is under the grouping threshold,
closest first. Single linkage (a group is a chain of close pairs) does not survive many people:
with thousands of videos, some pair of look-alikes is always close, and one chain swallows nearly
every video. Average linkage needs the two groups to be close as wholes: one look-alike pair
among many far pairs does not merge them, and a merged group does not keep growing by its edges.

The mean squared distance between all pairs of two groups is ``|mean_a - mean_b|^2 + s_a + s_b``
(``s`` a group's mean squared distance to its own mean), so it comes from each group's size,
sum and sum of squared norms, without visiting the pairs. Which groups to compare comes from a
nearest-neighbour index (``shards.neighbours``): each video's ``NEIGHBOURS`` nearest videos
closer than the threshold propose a merge of their groups, and a merged group inherits both
groups' proposals. A video still alone at the end follows its nearest video within ``ATTACH``
times the threshold, or, within ``AGREE_REACH`` times, the group holding all of its ``AGREE``
nearest videos (a person's hardest video is often nearest to their others while too far from
the group).

A video still alone after the merges is the one a split can get wrong: its nearest videos may be
a stranger's as well as its own (dark, blurred, turned away, it is about as far from everyone).
Its rivals, the other groups holding one of its nearest videos within ``DOUBT`` times its nearest
distance, are returned beside the groups (``group_videos``), so the split can leave out a video
it cannot place on one side (``shards.split.unsure_videos``).

Groups are assigned once and kept: a grown input never moves a video that already has a group.
Known videos (assigned earlier, or with a ``speaker``) form their groups as given; two known groups
never merge, and a group of new videos joins at most one known group (it then takes that
group's name), else it becomes ``face:<smallest video id in it>``.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shards.neighbours import knn

# Same person below this distance between two frames, per embedding model (the name each clip
# records), as the audit's leak check compares clips: dlib's own threshold for its descriptor;
# DeepFace's for buffalo_l's ArcFace (unit-length embeddings).
IDENTITY_THRESHOLDS = {"dlib_resnet128": 0.6, "insightface_w600k_r50": 1.1}
# Default grouping thresholds (root mean square distance between two groups' pooled embeddings),
# chosen with bench/identity.py on worlds calibrated to each model's published figures, over
# several seeds (docs/identity.md): pooled embeddings of one person lie closer than single
# frames, so groups can be stricter than a frame pair's threshold (dlib 0.5 against 0.6) and
# still hold a person; a looser threshold mostly merges look-alikes into larger groups.
GROUP_THRESHOLDS = {"dlib_resnet128": 0.5, "insightface_w600k_r50": 1.1}
NEIGHBOURS = 10  # merges proposed per video: a person's other videos, plus room for look-alikes
# A video left alone follows its nearest video within 1.2 x the threshold: dlib 0.6, its own
# same-person threshold for frames (two real people in our media are 0.65-0.69 apart, and a
# lone video beyond 0.6 must not follow a stranger in a small input); ArcFace 1.32.
ATTACH = 1.2
# ... or, farther, the group that holds all of its 3 nearest videos when they lie within 1.4 x the
# threshold (dlib 0.7): one look-alike can be nearest by chance, three videos of one group rarely
# are, and a group of fewer than 3 videos (a small input's other person) never qualifies.
AGREE, AGREE_REACH = 3, 1.4
# A video alone after the merges has rivals: the other groups holding one of its nearest videos
# within 1.05 x its nearest distance. On the calibrated worlds of bench/identity.py every person
# left in both splits owned such a video; a hard video's own group often sits that close behind
# a stranger's (docs/identity.md).
DOUBT = 1.05
BLOCK = 2048  # rows of a distance block in ``nearest`` (2048 x 2048 float32 = 16 MB)


def identity_group(video_id: str) -> str:
    return f"face:{video_id}"


def pooled(embeddings: list[np.ndarray], batch: int = 8192) -> np.ndarray:
    """One embedding per video from each one's (K, D) frame embeddings (K > 0): their mean, at unit
    length when every frame embedding of the video is (ArcFace). Videos with equal K are pooled
    ``batch`` at a time: a few array operations, and no float32 copy of every frame at once."""
    if not embeddings:
        return np.zeros((0, 1), np.float32)
    dim = int(np.asarray(embeddings[0]).reshape(len(embeddings[0]), -1).shape[1])
    out = np.empty((len(embeddings), dim), np.float32)
    by_count: dict[int, list[int]] = {}
    for i, frames in enumerate(embeddings):
        by_count.setdefault(len(frames), []).append(i)
    for count, indices in by_count.items():
        for start in range(0, len(indices), batch):
            rows = indices[start:start + batch]
            frames = np.stack([np.asarray(embeddings[i], np.float32).reshape(count, dim) for i in rows])
            mean = frames.mean(axis=1)
            unit = np.abs(np.linalg.norm(frames, axis=2) - 1.0).max(axis=1) < 1e-3
            norms = np.linalg.norm(mean, axis=1, keepdims=True)
            out[rows] = np.where(unit[:, None] & (norms > 0), mean / np.maximum(norms, 1e-12), mean)
    return out


class _Groups:
    """Groups as (size, mean, spread): spread is the mean squared distance of the members to the
    mean, so the mean squared distance over all pairs of two groups is ``|mean_a - mean_b|^2 +
    spread_a + spread_b``. Merging keeps the exact values; no member is visited again."""

    def __init__(self, means: np.ndarray, size: np.ndarray, spread: np.ndarray):
        self.means, self.size, self.spread = means, size, spread
        self.parent = np.arange(len(means))
        self.version = np.zeros(len(means), np.int64)
        self.links: list[set[int]] = [set() for _ in range(len(means))]

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:
            self.parent[i], i = root, int(self.parent[i])
        return root

    def msd(self, a: int, others: np.ndarray) -> np.ndarray:
        """Mean squared distance over all member pairs of group ``a`` and each of ``others``."""
        gap = self.means[others] - self.means[a]
        return np.einsum("ij,ij->i", gap, gap) + self.spread[others] + self.spread[a]

    def merge(self, keep: int, gone: int) -> None:
        n_keep, n_gone = self.size[keep], self.size[gone]
        total = n_keep + n_gone
        mean = (n_keep * self.means[keep] + n_gone * self.means[gone]) / total
        gap_keep, gap_gone = self.means[keep] - mean, self.means[gone] - mean
        self.spread[keep] = (n_keep * (self.spread[keep] + gap_keep @ gap_keep)
                             + n_gone * (self.spread[gone] + gap_gone @ gap_gone)) / total
        self.means[keep], self.size[keep] = mean, total
        self.parent[gone] = keep
        self.version[keep] += 1
        self.version[gone] = -1
        self.links[keep] |= self.links[gone]
        self.links[gone] = set()


class _UnionFind:
    """Union by smallest root, so a tree holding a known group (the first nodes) is named by it."""

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


@dataclass
class Grouping:
    """The groups of the new videos, and the rivals of those that were alone after the merges:
    video id -> the other groups holding one of its nearest videos within ``DOUBT`` times its
    nearest distance, or None when all of its ``neighbours`` nearest lie that close (more may:
    the video is about as near to many people)."""

    groups: dict[str, str]
    rivals: dict[str, frozenset[str] | None]


def assign_groups(new: Mapping[str, np.ndarray], known: Mapping[str, tuple[str, np.ndarray]],
                  threshold: float, **options) -> dict[str, str]:
    """video id -> group of the ``new`` videos (``group_videos`` without the rivals)."""
    return group_videos(new, known, threshold, **options).groups


def group_videos(new: Mapping[str, np.ndarray], known: Mapping[str, tuple[str, np.ndarray]],
                 threshold: float, *, neighbours: int = NEIGHBOURS, attach: float = ATTACH,
                 agree: int = AGREE, agree_reach: float = AGREE_REACH, doubt: float = DOUBT) -> Grouping:
    """Groups of the ``new`` videos (video id -> (K, D) embeddings, K may be 0).

    ``known``: video id -> (group, (K, D) embeddings) of videos whose group is fixed (assigned
    earlier, or given by a speaker label). A new video without embeddings is its own group.
    ``neighbours``: merges each video proposes (its nearest videos closer than ``threshold``);
    ``attach``: a video left alone joins its nearest video's group within ``attach * threshold``,
    or, farther, the group holding all of its ``agree`` nearest videos within ``agree_reach * threshold``;
    ``doubt``: the reach of a lone video's rivals, times its nearest distance.
    """
    ids = sorted(new)
    faced = [vid for vid in ids if len(new[vid])]
    known_ids = sorted(vid for vid in known if len(known[vid][1]))
    result = {vid: identity_group(vid) for vid in ids}
    if not faced:
        return Grouping(result, {})
    known_names = sorted({known[vid][0] for vid in known_ids})
    n_known, name_index = len(known_names), {name: i for i, name in enumerate(known_names)}
    # Nodes: the known groups first (fixed), then one per new video with a face.
    points = pooled([known[vid][1] for vid in known_ids] + [new[vid] for vid in faced])
    owner = np.concatenate([np.asarray([name_index[known[vid][0]] for vid in known_ids], np.int64),
                            np.arange(n_known, n_known + len(faced))])
    distances, rows = knn(points, points[len(known_ids):], neighbours + 1)

    size = np.bincount(owner, minlength=n_known + len(faced)).astype(np.float64)
    known_points = points[:len(known_ids)].astype(np.float64)
    sums = np.zeros((n_known, points.shape[1]))
    np.add.at(sums, owner[:len(known_ids)], known_points)
    squares = np.bincount(owner[:len(known_ids)], (known_points ** 2).sum(axis=1), minlength=n_known)
    known_means = sums / np.maximum(size[:n_known, None], 1)
    means = np.concatenate([known_means.astype(np.float32), points[len(known_ids):]])
    spread = np.zeros(len(means))
    spread[:n_known] = squares / np.maximum(size[:n_known], 1) - (known_means ** 2).sum(axis=1)
    del points, known_points
    groups = _Groups(means, size, spread)

    # The proposed pairs, each once, closest first; pairs queued after a merge go to a heap.
    node = np.repeat(np.arange(n_known, n_known + len(faced)), rows.shape[1])
    other = owner[np.maximum(rows.reshape(-1), 0)]
    close = (distances.reshape(-1) < threshold) & (rows.reshape(-1) >= 0) & (other != node)
    low, high = np.minimum(node, other)[close], np.maximum(node, other)[close]
    pairs, first = np.unique(low * len(means) + high, return_index=True)
    order = np.argsort(distances.reshape(-1)[close][first], kind="stable")
    low, high = (pairs[order] // len(means)).tolist(), (pairs[order] % len(means)).tolist()
    squared = (distances.reshape(-1)[close][first][order].astype(np.float64) ** 2).tolist()
    for a, b in zip(low, high):
        groups.links[a].add(b)
        groups.links[b].add(a)

    # Each group keeps one entry in the heap: its closest linked group. Merges only raise the
    # linkage to a merged group (it is a weighted mean of the two), so an entry that went stale
    # (its other group merged since) is recomputed when it comes up, never missed.
    limit = threshold * threshold
    heap: list[tuple[float, int, int, int, int]] = []

    def queue_closest(a: int) -> None:
        others = np.fromiter({groups.find(o) for o in groups.links[a]} - {a}, np.int64)
        if a < n_known:
            others = others[others >= n_known]
        msd = groups.msd(a, others)
        keep = msd < limit  # farther groups never come back: a merge averages linkages
        groups.links[a] = set(others[keep].tolist())
        if keep.any():
            best = int(np.argmin(np.where(keep, msd, np.inf)))
            x, y = sorted((a, int(others[best])))
            heapq.heappush(heap, (float(msd[best]), x, y, int(groups.version[x]), int(groups.version[y])))

    i = 0
    while i < len(squared) or heap:
        if heap and (i == len(squared) or heap[0][0] < squared[i]):
            _, a, b, version_a, version_b = heapq.heappop(heap)
        else:
            a, b, version_a, version_b = low[i], high[i], 0, 0
            i += 1
        if groups.version[a] != version_a or groups.version[b] != version_b:
            for x, version in ((a, version_a), (b, version_b)):
                if groups.version[x] == version:  # x did not change, its partner did
                    queue_closest(x)
            continue
        groups.merge(a, b)  # a < b: a known group keeps its node (known nodes come first)
        queue_closest(a)

    # A video left alone follows its nearest video when that is within ``attach`` x the threshold,
    # to its group (or to where that video goes, if it is alone too), or when its ``agree`` nearest
    # videos all belong to that group within ``agree_reach`` x the threshold: a person's hardest
    # video (dark, blurred, turned away) can be farther from their other videos than the group
    # linkage allows, yet nearest to them. Each lone video follows one pointer and groups follow
    # none, so the pointers form trees that each end at one group (or at two lone videos nearest
    # to each other): no group grows by more than the lone videos nearest to it.
    roots = np.asarray([groups.find(n_known + q) for q in range(len(faced))], np.int64)
    alone = np.flatnonzero(groups.size[roots] == 1)
    first = np.argmax(owner[np.maximum(rows[alone], 0)] != (n_known + alone)[:, None], axis=1)
    hit = rows[alone, first]
    near = (hit >= 0) & (distances[alone, first] < attach * threshold)
    if agree:  # its nearest other video is then one of the group's
        near |= _unanimous(groups, owner, rows[alone], distances[alone], n_known + alone, agree,
                           agree_reach * threshold)
    follow = _UnionFind(len(means))
    for q, h in zip(alone[near].tolist(), hit[near].tolist()):
        follow.union(int(roots[q]), groups.find(int(owner[h])))
    roots = np.asarray([follow.find(int(r)) for r in roots], np.int64)

    members: dict[int, list[str]] = {}
    for q, vid in enumerate(faced):
        members.setdefault(int(roots[q]), []).append(vid)
    for root, vids in members.items():
        name = known_names[root] if root < n_known else identity_group(min(vids))
        result.update({vid: name for vid in vids})
    node_names = np.asarray(known_names + [result[vid] for vid in faced], dtype=object)
    rivals = _rivals(node_names, owner, rows[alone], distances[alone], n_known + alone, doubt, len(owner))
    return Grouping(result, {faced[q]: r for q, r in zip(alone.tolist(), rivals)})


def _rivals(names: np.ndarray, owner: np.ndarray, rows: np.ndarray, distances: np.ndarray,
            nodes: np.ndarray, doubt: float, references: int) -> list[frozenset[str] | None]:
    """Per lone node: the names of the other groups holding one of its nearest videos within
    ``doubt`` x its nearest distance; None when every video it saw lies that close and there were
    more to see."""
    out: list[frozenset[str] | None] = []
    for row, dist, node in zip(rows, distances, nodes):
        other = (row >= 0) & (owner[np.maximum(row, 0)] != node)
        row, dist = row[other], dist[other]
        if not len(row):
            out.append(frozenset())
            continue
        within = dist <= doubt * dist[0]
        if within.all() and len(row) + 1 < references:
            out.append(None)
            continue
        out.append(frozenset(names[owner[row[within]]].tolist()) - {names[node]})
    return out


def _unanimous(groups: _Groups, owner: np.ndarray, rows: np.ndarray, distances: np.ndarray,
               nodes: np.ndarray, count: int, reach: float) -> np.ndarray:
    """Per lone node (``rows``/``distances``: its nearest videos), whether its ``count`` nearest
    other videos all lie within ``reach`` and all belong to one group."""
    other = (rows >= 0) & (owner[np.maximum(rows, 0)] != nodes[:, None])
    order = np.argsort(~other, axis=1, kind="stable")[:, :count]  # the first ``count`` others, nearest first
    if order.shape[1] < count:
        return np.zeros(len(rows), bool)
    picked = np.take_along_axis(rows, order, axis=1)
    ok = np.take_along_axis(other, order, axis=1).all(axis=1)
    ok &= np.take_along_axis(distances, order, axis=1).max(axis=1) < reach
    roots = np.asarray([[groups.find(int(owner[max(h, 0)])) for h in row] for row in picked[ok]], np.int64)
    ok[np.flatnonzero(ok)] = (roots == roots[:, :1]).all(axis=1) if len(roots) else False
    return ok


def squared_distances(block: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """(len(block), len(b)) squared Euclidean distances, ``b_sq`` being b's squared row norms
    (computed once for all blocks); may dip just below 0 from rounding."""
    return (block * block).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * block @ b.T


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
