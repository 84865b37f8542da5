"""Head-motion filter: drop clips whose pose or translation moves too far or too fast."""
from __future__ import annotations

from filters.head_motion import check_head_motion, head_motion_scores
from pipeline.clip import Clip
from pipeline.stages.base import Filter


class HeadMotionStage(Filter):
    name = "head_motion"
    sections = ("head_motion",)

    def process(self, clip: Clip) -> None:
        scores = head_motion_scores(clip.motion)
        clip.scores.update(scores)
        limits = self.settings("head_motion")
        reason = check_head_motion(scores, float(limits["max_pose_range_deg"]),
                                   float(limits["max_pose_speed_deg_s"]), float(limits["max_t_range"]),
                                   float(limits["max_t_speed"]))
        self.verdict(clip, "head_motion", reason)
