"""The pipeline's stages, in the order a clip meets them (cheap before expensive).

Stages are named here and imported on first use, so a worker that only decodes never imports the
model libraries. Three groups: ``video`` runs on whole videos and turns each into candidate clips;
``prepare`` (CPU) decodes, filters cheaply and crops faces; ``model`` runs the networks.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from pipeline.stages.base import Stage

STAGES: dict[str, str] = {
    "probe": "pipeline.stages.probe:ProbeStage",
    "shots": "pipeline.stages.shots:ShotStage",
    "decode": "pipeline.stages.decode:DecodeAudioStage",
    "duration": "pipeline.stages.cheap_filter:DurationFilterStage",
    "audio": "pipeline.stages.cheap_filter:AudioFilterStage",
    "faces": "pipeline.stages.faces:FaceStage",
    "quality": "pipeline.stages.quality:QualityStage",
    "sync": "pipeline.stages.sync:SyncStage",
    "motion": "pipeline.stages.motion:MotionStage",
    "head_motion": "pipeline.stages.head_motion:HeadMotionStage",
    "audio_features": "pipeline.stages.audio_features:AudioFeatureStage",
}

GROUPS: dict[str, tuple[str, ...]] = {
    "video": ("probe", "shots"),
    "prepare": ("duration", "decode", "audio", "faces"),
    "model": ("quality", "sync", "motion", "head_motion", "audio_features"),
}

MODEL_STAGES = ("quality", "sync", "motion", "audio_features")


def build_stage(name: str, cfg: Mapping[str, Any]) -> Stage:
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
