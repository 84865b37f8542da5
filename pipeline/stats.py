"""The training split's normalisation statistics, merged from the moments each chunk stored.

Every done chunk records the merged moments of its training clips (``pipeline.chunk_writer``), so a
run's ``stats.json`` costs one small record per chunk, whatever the size of the data, on a resume
or a grown input set alike. A chunk done by a version of the job that stored no moments is read
back from its shards instead (bounded memory, downloaded when the output is remote).
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from pipeline.outdir import SHARDS, OutputDir
from shards.reader import iter_samples
from shards.split import TRAIN
from shards.stats import DatasetMoments

log = logging.getLogger(__name__)


def merged_stats(out: OutputDir, done: dict[int, dict[str, Any]],
                 train_shards: dict[int, list[str]]) -> dict[str, Any]:
    """Statistics of the training split of the done chunks (``{chunk: done record}``), merged in
    chunk order; ``train_shards`` names each chunk's shards holding training clips (for the
    chunks without stored moments)."""
    moments = DatasetMoments()
    for chunk in sorted(done):
        stored = done[chunk].get("train_moments")
        if stored is not None:
            moments.merge(DatasetMoments.from_dict(stored))
        else:
            log.info("chunk %d has no stored moments: reading its training shards back", chunk)
            moments.merge(shard_moments(out, train_shards.get(chunk, [])))
    return moments.document()


def shard_moments(out: OutputDir, shard_names: Iterable[str]) -> DatasetMoments:
    """Moments of every training-split sample of the named shards, read back from the shards."""
    moments = DatasetMoments()
    for name in sorted(set(shard_names)):
        path = out.open_local(f"{SHARDS}/{name}")
        try:
            for sample in iter_samples(path):
                if sample["meta"].get("split") == TRAIN:
                    moments.add_sample(sample["motion"], sample["audio_feat"])
        finally:
            if out.remote:
                path.unlink(missing_ok=True)
    return moments


def compute_stats(out: OutputDir, shard_names: Iterable[str]) -> dict[str, Any]:
    """Statistics over every training-split sample of the named shards (the slow path, by reading)."""
    return shard_moments(out, shard_names).document()
