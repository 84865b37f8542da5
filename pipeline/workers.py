"""The two kinds of worker the driver runs as Ray actors: stage lists built once, called per item.

A worker builds its stages (and so loads its models) once, in its constructor, and then serves
calls. Each call returns a small summary (the clip without its arrays) separately from the full
clip, so the driver decides from a few hundred bytes while crops and features stay in the object
store until the next worker or the shard writer needs them.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

from pipeline.activity import CallRecorder
from pipeline.clip import Clip
from pipeline.stages import GROUPS, build_stage


def configure_threads(n: int, torch_too: bool) -> None:
    """Limit intra-op threads of OpenCV (and torch, in a worker that runs models) so actors do not
    oversubscribe the cores. Only model workers import torch: it costs over a CPU-second each."""
    import cv2

    cv2.setNumThreads(max(1, n))
    if torch_too:
        import torch

        torch.set_num_threads(max(1, n))


class StageWorker:
    """Runs the stages of the named groups; the CPU worker serves ``video`` and ``prepare``, the
    model worker ``model``."""

    def __init__(self, groups: tuple[str, ...], cfg: Mapping[str, Any]):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        configure_threads(int(cfg["ray"]["torch_threads"]), torch_too="model" in groups)
        self.groups = {group: [build_stage(name, cfg) for name in GROUPS[group]] for group in groups}
        self.recorder = CallRecorder()  # busy and CPU time per kind of call (pipeline.activity)
        self.recorder.started()

    def run(self, group: str, clips: list[Clip]) -> list[Clip]:
        for stage in self.groups[group]:
            clips = stage(clips)
        return clips

    def plan_video(self, video: Clip) -> tuple[Clip, list[Clip]]:
        """Probe a whole-video record and cut it into candidate clips (no arrays)."""
        with self.recorder.call("plan"):
            probe, shots = self.groups["video"]
            (video,) = probe([video])
            if not video.kept:
                return video, []
            clips = shots([video])
            return (video, []) if not video.kept else (video, clips)

    def process(self, group: str, clip: Clip) -> tuple[Clip, Clip | None]:
        """(summary, full clip or None when rejected)."""
        with self.recorder.call(group):
            (clip,) = self.run(group, [clip])
            return clip.summary(), (clip if clip.kept else None)

    def activity(self) -> dict:
        """This actor's calls, busy and CPU seconds per kind (``pipeline.activity``)."""
        return self.recorder.as_dict()

    def describe(self) -> dict[str, dict[str, str]]:
        """{stage: {model_id, weight_id}} of the stages that run a model; also proves they loaded."""
        return {stage.name: stage.describe() for stages in self.groups.values() for stage in stages
                if stage.describe()}


# One class per kind, so that `ps`, `ray list actors` and the dashboard tell them apart
# (ray::CpuWorker.process, ray::ModelWorker.process).


class CpuWorker(StageWorker):
    """Probes and cuts videos, decodes clips, runs the cheap filters and crops faces."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(("video", "prepare"), cfg)
        self.cfg = cfg
        self._video_embedder = None

    def identity_embeddings(self, sources: list[str]) -> list:
        """Face embeddings of whole videos for the identity pass (``pipeline.identity``), with the
        face stage's detector and identity embedder."""
        from pipeline.identity import VideoEmbedder

        with self.recorder.call("identity"):
            if self._video_embedder is None:
                faces = next(stage for stage in self.groups["prepare"] if stage.name == "faces")
                self._video_embedder = VideoEmbedder(self.cfg, faces.tracker.detector, faces.embedder)
            return self._video_embedder.many(sources)


class ModelWorker(StageWorker):
    """Runs quality, SyncNet, the motion extractor and the audio encoder on prepared clips."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(("model",), cfg)
