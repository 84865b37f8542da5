"""Worker classes for the fault tests: the real workers, with a stage in front of the models that
raises a real CUDA out-of-memory error (``torch.cuda.OutOfMemoryError``, as a GPU shared with
another job does) for chosen inputs, a given number of times per clip.

The count lives in files under a folder, so it holds across retries on other actors and processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.clip import Clip
from pipeline.stages.base import Stage
from pipeline.workers import CpuWorker, ModelWorker


class OutOfMemoryStage(Stage):
    """Raises CUDA OOM for a clip whose source contains ``match``, its first ``fails`` times."""

    name = "fault"

    def __init__(self, cfg: Mapping[str, Any], folder: str, match: str, fails: int):
        super().__init__(cfg)
        self.folder, self.match, self.fails = Path(folder), match, fails

    def process(self, clip: Clip) -> None:
        if self.match not in clip.source:
            return
        tries = len(list(self.folder.glob(f"{clip.clip_id}.*")))
        (self.folder / f"{clip.clip_id}.{tries}").touch()
        if tries < self.fails:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                              "(GPU 0; 23.65 GiB total capacity; 22.90 GiB already allocated)")


class FaultyModelWorker(ModelWorker):
    folder = ""
    match = ""
    fails = 0

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.groups["model"].insert(0, OutOfMemoryStage(cfg, self.folder, self.match, self.fails))


def faulty_workers(folder: Path, match: str, fails: int) -> tuple[type, type]:
    """(CPU worker, model worker) classes for ``build_shards.main(workers=...)``; the model worker's
    settings are class attributes of a class made here, so Ray ships them with it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = type("ConfiguredFaultyModelWorker", (FaultyModelWorker,), {"folder": str(folder), "match": match, "fails": fails})
    return CpuWorker, model


def attempts(folder: Path) -> dict[str, int]:
    """clip id -> model calls the fault stage saw for it."""
    counts: dict[str, int] = {}
    for path in folder.glob("*.*"):
        counts[path.stem] = counts.get(path.stem, 0) + 1
    return counts
