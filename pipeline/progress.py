"""The live progress line of a run (videos done, clips kept and rejected, hours, ETA) and its summary."""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from tqdm import tqdm

from pipeline.clip import Clip


class Progress:
    """Counts what the driver reports and shows it on one tqdm line (ETA over videos)."""

    def __init__(self, total_videos: int, enabled: bool = True):
        self.start = time.monotonic()
        self.videos = 0
        self.kept = 0
        self.rejected = 0
        self.video_seconds = 0.0
        self.kept_seconds = 0.0
        self.reasons: Counter[str] = Counter()
        self.bar = tqdm(total=total_videos, unit="video", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)

    def video_planned(self, video: Clip) -> None:
        if video.info is not None:
            self.video_seconds += video.info.duration_s

    def video_done(self) -> None:
        self.videos += 1
        self.bar.update(1)
        self._refresh()

    def clip_done(self, clip: Clip) -> None:
        if clip.kept:
            self.kept += 1
            self.kept_seconds += clip.duration_s
        else:
            self.rejected += 1
            self.reasons[f"{clip.rejection.stage}/{clip.rejection.reason}"] += 1
        self._refresh()

    def _refresh(self) -> None:
        self.bar.set_postfix_str(
            f"clips kept {self.kept} rejected {self.rejected} | "
            f"{self.video_seconds / 3600:.2f} h in, {self.kept_seconds / 3600:.2f} h kept", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def snapshot(self) -> dict[str, Any]:
        return {"videos": self.videos, "kept": self.kept, "rejected": self.rejected,
                "video_hours": self.video_seconds / 3600, "kept_hours": self.kept_seconds / 3600,
                "wall_s": time.monotonic() - self.start}


def summary_lines(run: dict[str, Any]) -> list[str]:
    """A short human summary of run.json: counts, hours, rejections, per-stage time."""
    counts, hours = run["counts"], run["hours"]
    lines = [
        f"videos {counts['videos']} ({counts['videos_failed']} failed), clips {counts['clips']}: "
        f"kept {counts['kept']}, rejected {counts['rejected']}",
        f"hours: {hours['input']:.3f} in, {hours['kept']:.3f} kept; wall time this run "
        f"{run['timings']['total_s']:.1f} s",
    ]
    if counts.get("clip_rejections"):
        lines.append("rejections: " + ", ".join(f"{k} {v}" for k, v in counts["clip_rejections"].items()))
    stage = run["timings"].get("stage_seconds", {})
    if stage:
        lines.append("stage time (s, all workers): " + ", ".join(f"{k} {v:.1f}" for k, v in stage.items()))
    if run.get("random_weights"):
        lines.append("RANDOM WEIGHTS: every model ran with random weights; these shards are not real data")
    return lines
