"""Shot stage: split a video at its cuts (PySceneDetect) and cut the shots into candidate clips.

Runs on whole-video records and replaces each by its candidate clips: spans of one shot, trimmed
by ``clips.cut_margin_s`` at each cut and split into pieces of at most ``clips.max_len_s``
(``pipeline.shots.make_clips``). Pieces shorter than ``clips.min_len_s`` stay candidates, so the
duration filter rejects them with their length on record (or keeps them in score-only mode).
"""
from __future__ import annotations

import time

from pipeline.clip import Clip
from pipeline.decode import DecodeError
from pipeline.faults import raise_if_transient
from pipeline.shots import make_clips, split_shots
from pipeline.stages.base import Stage, error_text


class ShotStage(Stage):
    name = "shots"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.shots_cfg = cfg["shots"]
        self.clips_cfg = cfg["clips"]

    def __call__(self, clips: list[Clip]) -> list[Clip]:
        out: list[Clip] = []
        for video in clips:
            if not video.kept:
                out.append(video)
                continue
            start = time.perf_counter()
            try:
                out.extend(self.candidates(video))
            except DecodeError as exc:
                self.media_rejection(video, exc)
                out.append(video)
            except Exception as exc:  # noqa: BLE001 - the video is rejected, the batch goes on
                raise_if_transient(exc)
                video.reject(self.name, "error", error_text(exc))
                out.append(video)
            video.add_time(self.name, time.perf_counter() - start)
        return out

    def candidates(self, video: Clip) -> list[Clip]:
        duration = float(video.info.duration_s)
        if self.shots_cfg["enabled"]:
            shots = split_shots(video.source, threshold=float(self.shots_cfg["threshold"]),
                                timeout_s=float(self.shots_cfg["timeout_s"]))
        else:
            shots = [(0.0, duration)]
        plan = make_clips(shots, duration, min_len_s=float(self.clips_cfg["min_len_s"]),
                          max_len_s=float(self.clips_cfg["max_len_s"]),
                          cut_margin_s=float(self.clips_cfg["cut_margin_s"]))
        spans = sorted({(s, e) for s, e in plan.clips} | {(s, e) for s, e, _ in plan.rejected})
        return [video.span_clip(s, e) for s, e in spans]
