"""The training split's normalisation statistics, streamed back from the written shards (bounded memory)."""
from __future__ import annotations

from typing import Any, Iterable

from pipeline.outdir import SHARDS, OutputDir
from shards.reader import iter_samples
from shards.split import TRAIN
from shards.stats import DatasetMoments


def compute_stats(out: OutputDir, shard_names: Iterable[str]) -> dict[str, Any]:
    """Statistics over every training-split sample of the named shards."""
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
    return moments.document()
