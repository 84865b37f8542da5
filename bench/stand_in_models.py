"""The shard job with its model stages run on each clip's first frames only, for memory benches.

    python bench/stand_in_models.py --input ... --output ... [build_shards arguments]

Measuring how the job's memory follows the hours of its input needs hours of input, and on a CPU
the models do about a third of a second of video per second. Here every model stage (SyncNet, the
motion extractor, the audio encoder) runs for real on the clip's first ``HEAD_FRAMES`` frames,
and its per-frame outputs are repeated to the clip's length: every array a kept clip carries
(motion, audio features, audio) has its real shape, dtype and size, and everything else (probe,
decode, shots, faces and crops, the object store, the spill, the shard writer, the manifests) is
the real job. What this leaves out is what a model costs beyond a few frames; that depends on a
clip's length (``clips.max_len_s``), not on the input's. The quality filter runs whole.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.clip import Clip  # noqa: E402
from pipeline.stages.base import Stage  # noqa: E402
from pipeline.workers import CpuWorker, ModelWorker  # noqa: E402
from shards.format import FPS, SAMPLES_PER_FRAME  # noqa: E402

HEAD_FRAMES = 32
CUT_SHORT = ("sync", "motion", "audio_features")


def repeat_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """``rows`` (k, ...) repeated in order to n rows (a new array, as the real stage's would be)."""
    return np.resize(rows, (n, *rows.shape[1:])).astype(rows.dtype, copy=False)


class HeadOnly(Stage):
    """Runs ``stage`` on the clip's first frames and gives the clip full-length outputs."""

    def __init__(self, stage: Stage):
        super().__init__({})
        self.stage, self.name = stage, stage.name

    def process(self, clip: Clip) -> None:
        k = min(HEAD_FRAMES, clip.n_frames)
        head = dataclasses.replace(
            clip, end_s=clip.start_s + k / FPS, scores=dict(clip.scores),
            lp_crops=None if clip.lp_crops is None else clip.lp_crops[:k],
            sync_crops=None if clip.sync_crops is None else clip.sync_crops[:k],
            audio=None if clip.audio is None else clip.audio[:k * SAMPLES_PER_FRAME])
        self.stage.process(head)
        clip.scores = head.scores
        if head.motion is not None:
            clip.motion = {key: repeat_rows(value, clip.n_frames) for key, value in head.motion.items()}
        if head.audio_feat is not None:
            clip.audio_feat = repeat_rows(head.audio_feat, clip.n_frames)
        for name in ("lp_crops", "sync_crops"):  # what the stage is done with goes
            if getattr(head, name) is None:
                setattr(clip, name, None)
        if head.rejection is not None:
            clip.reject(head.rejection.stage, head.rejection.reason, head.rejection.error)

    def describe(self) -> dict:
        return self.stage.describe()


class HeadOnlyModelWorker(ModelWorker):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.groups["model"] = [HeadOnly(s) if s.name in CUT_SHORT else s for s in self.groups["model"]]


if __name__ == "__main__":
    from pipeline.build_shards import main

    sys.exit(main(sys.argv[1:], workers=(CpuWorker, HeadOnlyModelWorker)))
