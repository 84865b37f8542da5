"""The train/validation split, by speaker when known, else by face identity (``shards.identity``),
else by source video, never by clip.

A group's split is a pure function of its name: the first 8 bytes of its sha256 as a fraction of
2**64, "val" when below ``val_fraction``. Every clip of a speaker (or video) lands on the same
side, in every run and every resume, whatever else is in the input.

A video whose face could be one of several groups' (``shards.identity.Grouping.rivals``) is in
neither split when those groups lie on both sides (``unsure_videos``): wherever it went, it could
be a validation person's video in training, or the reverse.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)


def split_group(speaker: str | None, video_id: str, identity: str | None = None) -> str:
    """The unit a split never divides: ``speaker:<name>`` when given, else the video's identity
    group (``face:<id>``, from ``shards.identity``) when known, else ``video:<id>``."""
    if speaker:
        return f"speaker:{speaker}"
    return identity if identity else f"video:{video_id}"


def split_value(group: str) -> float:
    """Where a group's name falls in [0, 1): the group is in validation below ``val_fraction``."""
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2.0**64


def assign_split(group: str, val_fraction: float) -> str:
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"split.val_fraction must be within [0, 1], got {val_fraction}")
    return VAL if split_value(group) < val_fraction else TRAIN


def split_of(speaker: str | None, video_id: str, val_fraction: float, identity: str | None = None) -> str:
    return assign_split(split_group(speaker, video_id, identity), val_fraction)


def unsure_videos(rivals: Mapping[str, frozenset[str] | None], group_of: Mapping[str, str],
                  val_fraction: float) -> dict[str, str]:
    """video id -> why it is in neither split, for the videos with rivals (video id -> the other
    groups it could belong to, or None when too many lie as near to tell) whose rivals' splits
    differ from its own group's (``group_of``). Nothing when the split puts every group on one side."""
    if val_fraction <= 0.0 or val_fraction >= 1.0:
        return {}
    unsure = {}
    for video, others in sorted(rivals.items()):
        if others is None:
            unsure[video] = "its face lies about as near to many other videos as to its nearest"
            continue
        split = assign_split(group_of[video], val_fraction)
        across = sorted(g for g in others if assign_split(g, val_fraction) != split)
        if across:
            unsure[video] = (f"its face lies about as near to {', '.join(across[:3])} ({'train' if split == VAL else 'val'})"
                             f" as to {group_of[video]} ({split})")
    return unsure


def size_buckets(sizes: Iterable[int]) -> dict[str, int]:
    """How many groups hold 1, 2-3, 4-7, 8-15, ... members (powers of two), smallest first."""
    counts: dict[int, int] = {}
    for size in sizes:
        low = 1 << (int(size).bit_length() - 1)
        counts[low] = counts.get(low, 0) + 1
    return {(f"{low}" if low == 1 else f"{low}-{2 * low - 1}"): n for low, n in sorted(counts.items())}


def group_sizes(group_of: Mapping[str, str], val_fraction: float | None = None) -> dict[str, Any]:
    """The distribution of split groups over members (video id -> group): how many groups, the
    largest group's share, and sizes bucketed by powers of two; with ``val_fraction``, the share
    of members the split sends to validation."""
    sizes = Counter(group_of.values())
    members = sum(sizes.values())
    largest, largest_size = max(sizes.items(), key=lambda kv: (kv[1], kv[0])) if sizes else (None, 0)
    summary: dict[str, Any] = {
        "members": members, "groups": len(sizes), "largest_group": largest,
        "largest_group_share": largest_size / members if members else 0.0,
        "sizes": size_buckets(sizes.values()),
    }
    if val_fraction is not None:
        val = sum(n for group, n in sizes.items() if assign_split(group, val_fraction) == VAL)
        summary["val_share"] = val / members if members else 0.0
    return summary
