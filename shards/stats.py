"""Normalisation statistics (``stats.json``): the format and the per-clip moments they are merged from.

Statistics describe exactly what the trainer reads: the 70-dim vector of
``shards.vector.motion_to_vector`` per frame, and the audio features as stored (float16). Per
dimension: mean and std (population), merged clip by clip with Chan's parallel update in float64;
audio features likewise (mean and std); and the mean canonical keypoints.

Ranges (``vector.min`` / ``vector.max``, which scale the pose dims to [-1, 1]) are robust to a few
bad frames: each clip contributes a *trimmed* range, the ``k``-th smallest and ``k``-th largest
value of each dimension with ``k = max(1, floor(TRIM_FRACTION * T))`` frames left out at each end
(``k`` at most ``(T - 1) // 2``, so a clip of 1 or 2 frames gives its plain min and max), and the
dataset's range is the min of the clips' lows and the max of their highs. One frame of a clip on
which the motion extractor jumped therefore never sets the range; a pose the subject really holds
for a while (more than ``k`` frames) does. Normalised frames may fall slightly outside [-1, 1].

Each chunk of the job stores one row of moments per kept clip (``moments/chunk-NNNNNN.parquet``,
:func:`moments_table`) before its done marker, and the merged moments of its training clips in
the done marker itself, so ``stats.json`` merges one record per chunk and the statistics of any
selection of clips (a re-thresholded manifest) merge from the clip rows, without reading a shard.
Merging is associative up to float64 rounding, so any grouping of the same clips gives the same
statistics to about 1e-12.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from shards.format import MOTION_SHAPES
from shards.split import TRAIN
from shards.vector import VECTOR_DIM, motion_to_vector

STATS_FILE = "stats.json"
FORMAT_VERSION = 1
MOMENTS_DIR = "moments"
TRIM_FRACTION = 0.01  # share of a clip's frames left out at each end of its range (at least one)
SECTIONS = ("vector", "audio_feat", "kp")


def moments_name(chunk: int) -> str:
    """The per-clip moments file of a chunk, relative to the output folder."""
    return f"{MOMENTS_DIR}/chunk-{chunk:06d}.parquet"


def trimmed_range(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the k-th smallest and k-th largest value (k from ``TRIM_FRACTION``; module doc)."""
    n = rows.shape[0]
    k = min(max(1, int(TRIM_FRACTION * n)), (n - 1) // 2)
    if k == 0:
        return rows.min(0), rows.max(0)
    ordered = np.partition(rows, (k, n - 1 - k), axis=0)
    return ordered[k], ordered[n - 1 - k]


class RunningMoments:
    """Count, mean, sum of squared deviations and a range per column, mergeable across clips and
    workers (Chan et al.'s parallel update, float64). The range is optional (None when not kept)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    @classmethod
    def of_rows(cls, rows: np.ndarray, trimmed: bool = False, with_range: bool = True) -> "RunningMoments":
        """Moments of one block of rows; ``trimmed`` takes the robust range of the module doc."""
        rows = np.asarray(rows, dtype=np.float64)
        moments = cls()
        if rows.ndim != 2 or len(rows) == 0:
            return moments
        moments.n, moments.mean = len(rows), rows.mean(0)
        moments.m2 = ((rows - moments.mean) ** 2).sum(0)
        if with_range:
            moments.min, moments.max = trimmed_range(rows) if trimmed else (rows.min(0), rows.max(0))
        return moments

    def update(self, rows: np.ndarray) -> None:
        self.merge(RunningMoments.of_rows(rows))

    def merge(self, other: "RunningMoments") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2, self.min, self.max = other.n, other.mean, other.m2, other.min, other.max
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.n / n
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / n
        if self.min is None or other.min is None:
            self.min = self.max = None
        else:
            self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)

    def to_dict(self) -> dict[str, Any]:
        """Exact JSON form (Python writes float64 values that read back bit for bit)."""
        return {"n": self.n, **{name: _as_list(getattr(self, name)) if getattr(self, name) is not None else None
                                for name in ("mean", "m2", "min", "max")}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunningMoments":
        moments = cls()
        moments.n = int(data["n"])
        for name in ("mean", "m2", "min", "max"):
            if data.get(name) is not None and moments.n:
                setattr(moments, name, np.asarray(data[name], dtype=np.float64))
        return moments


def _as_list(values: np.ndarray | None) -> list[float]:
    return [] if values is None else [float(v) for v in values]


class DatasetMoments:
    """Moments of the training vectors, audio features and canonical keypoints of a set of clips."""

    def __init__(self) -> None:
        self.vector, self.audio_feat, self.kp = RunningMoments(), RunningMoments(), RunningMoments()
        self.n_clips = 0

    @classmethod
    def of_clip(cls, motion: dict[str, np.ndarray], audio_feat: np.ndarray) -> "DatasetMoments":
        """One clip's moments, from its arrays as a shard stores them (float32 motion, float16
        features), so they equal the moments of the sample read back."""
        n = int(np.asarray(motion["exp"]).shape[0])
        stored = {name: np.asarray(motion[name], dtype=np.float32).reshape(n, *shape)
                  for name, shape in MOTION_SHAPES.items()}
        moments = cls()
        moments.vector = RunningMoments.of_rows(motion_to_vector(stored), trimmed=True)
        feat = np.asarray(audio_feat).astype(np.float16).astype(np.float64)
        moments.audio_feat = RunningMoments.of_rows(feat, with_range=False)
        moments.kp = RunningMoments.of_rows(stored["kp"].reshape(n, -1), with_range=False)
        moments.n_clips = 1
        return moments

    def add_sample(self, motion: dict[str, np.ndarray], audio_feat: np.ndarray) -> None:
        self.merge(DatasetMoments.of_clip(motion, audio_feat))

    def merge(self, other: "DatasetMoments") -> None:
        for name in SECTIONS:
            getattr(self, name).merge(getattr(other, name))
        self.n_clips += other.n_clips

    def to_dict(self) -> dict[str, Any]:
        return {"n_clips": self.n_clips, **{name: getattr(self, name).to_dict() for name in SECTIONS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatasetMoments":
        moments = cls()
        moments.n_clips = int(data["n_clips"])
        for name in SECTIONS:
            setattr(moments, name, RunningMoments.from_dict(data[name]))
        return moments

    def document(self) -> dict[str, Any]:
        """The ``stats.json`` document of the training split these moments describe."""
        vector, feat, kp = self.vector, self.audio_feat, self.kp
        return {
            "format_version": FORMAT_VERSION, "split": TRAIN, "n_frames": int(vector.n), "n_clips": self.n_clips,
            "vector": {"dim": VECTOR_DIM, "mean": _as_list(vector.mean),
                       "std": _as_list(vector.std if vector.n else None),
                       "min": _as_list(vector.min), "max": _as_list(vector.max)},
            "audio_feat": {"dim": 0 if feat.mean is None else int(len(feat.mean)), "mean": _as_list(feat.mean),
                           "std": _as_list(feat.std if feat.n else None)},
            # Mean canonical keypoints: the neutral face generated motion is drawn on (templates, previews).
            "kp": {"dim": 63, "mean": _as_list(kp.mean)},
        }


# ------------------------------------------------------------------------------------ clip rows

LABEL_COLUMNS = ("shard", "key", "split", "dataset")
_FLOATS = pa.list_(pa.float64())
MOMENTS_SCHEMA = pa.schema(
    [(name, pa.string()) for name in LABEL_COLUMNS] + [("n_frames", pa.int64())]
    + [(f"{section}_{part}", _FLOATS) for section in SECTIONS for part in ("mean", "m2")]
    + [("vector_min", _FLOATS), ("vector_max", _FLOATS)])


def moments_table(rows: Iterable[tuple[dict[str, str], DatasetMoments]]) -> pa.Table:
    """One row per clip: its labels (shard, key, split, dataset) and its moments."""
    records = []
    for labels, moments in rows:
        record: dict[str, Any] = {name: labels.get(name) for name in LABEL_COLUMNS}
        record["n_frames"] = moments.vector.n
        for section in SECTIONS:
            part = getattr(moments, section)
            record[f"{section}_mean"], record[f"{section}_m2"] = _as_list(part.mean), _as_list(part.m2)
        record["vector_min"], record["vector_max"] = _as_list(moments.vector.min), _as_list(moments.vector.max)
        records.append(record)
    return pa.Table.from_pylist(records, schema=MOMENTS_SCHEMA)


def merge_rows(table: pa.Table, keys: Iterable[str] | None = None) -> DatasetMoments:
    """The merged moments of the table's clips (those whose key is in ``keys``), in table order."""
    wanted = None if keys is None else set(keys)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    total = DatasetMoments()
    for i, key in enumerate(columns["key"]):
        if wanted is not None and key not in wanted:
            continue
        clip = DatasetMoments()
        clip.n_clips = 1
        for section in SECTIONS:
            part = RunningMoments()
            part.n = int(columns["n_frames"][i])
            part.mean = np.asarray(columns[f"{section}_mean"][i], dtype=np.float64)
            part.m2 = np.asarray(columns[f"{section}_m2"][i], dtype=np.float64)
            if section == "vector":
                part.min = np.asarray(columns["vector_min"][i], dtype=np.float64)
                part.max = np.asarray(columns["vector_max"][i], dtype=np.float64)
            setattr(clip, section, part)
        total.merge(clip)
    return total
