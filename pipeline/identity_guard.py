"""The guard of the identity pass: one face group must not hold most of the videos.

Faces chained into one group (look-alikes linked pair by pair) send nearly every video to the
same side of the split, and nothing downstream notices: nothing leaks when everything is in one
group. So before anything is stored the pass logs the group size distribution and, on inputs
large enough for a share to mean something, stops the run with one line naming the remedies.
Kept apart from ``pipeline.identity`` so the driver can catch the error without importing models.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from shards.split import group_sizes

log = logging.getLogger("pipeline.identity")


class GroupShareError(ValueError):
    """One face group holds too large a share of the videos (the message names the remedies)."""


def check_group_share(cfg: Mapping[str, Any], groups: Mapping[str, str]) -> dict[str, Any]:
    """The group size distribution of ``groups`` (video id -> split group), logged; raises
    ``GroupShareError`` when a face group holds more than ``identity.max_group_share`` of at least
    ``identity.guard_min_videos`` videos. Speaker groups are the user's labels and never stop a run."""
    identity = cfg["identity"]
    sizes = group_sizes(groups)
    log.info("identity pass: %d videos in %d groups, the largest %s holds %.1f%%; videos per group: %s",
             sizes["members"], sizes["groups"], sizes["largest_group"], 100 * sizes["largest_group_share"],
             ", ".join(f"{k}: {v}" for k, v in sizes["sizes"].items()))
    limit, minimum = float(identity.get("max_group_share", 0.05)), int(identity.get("guard_min_videos", 200))
    largest_face = max(Counter(g for g in groups.values() if g.startswith("face:")).values(), default=0)
    share = largest_face / sizes["members"] if sizes["members"] else 0.0
    if sizes["members"] >= minimum and share > limit:
        raise GroupShareError(
            f"identity: one face group holds {100 * share:.1f}% of {sizes['members']} videos "
            f"(identity.max_group_share={limit:g}): faces of different people were chained into one "
            f"group, which would put nearly every video on the same side of the split; nothing was "
            f"written. Use identity.backend=insightface (ArcFace), a stricter identity.threshold, "
            f"speaker labels (a speaker column in the input list, or split.speaker_pattern to read them "
            f"from the paths), or identity.backend=none; if the footage really is a "
            f"few people, raise identity.max_group_share")
    return sizes
