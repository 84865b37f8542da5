"""Benchmark of identity grouping (``shards.identity.assign_groups``) on synthetic worlds calibrated
to published verification figures (``bench/identity_world.py``): people with 1-8 videos of 4
frames each, for the dlib and ArcFace backends at 100 to 100,000 people.

Per world it reports the largest group's share of the videos, the people whose videos landed in
two or more groups, the people with videos in both splits, the validation share reached against
the one asked, the grouping time and its peak memory (resident memory sampled during the call,
above what the process held before it). Each world runs in its own process.

Goals: dlib at 1,000 people and ArcFace at 100,000 people: largest group <= 1 % of the videos,
nobody in both splits, validation share within 2 points of the asked 10 %; 100,000 videos grouped
in <= 2 minutes.

Usage: ``python bench/identity.py [--worlds dlib:100,dlib:1000 ...] [--threshold dlib=0.6]
[--out bench/results/identity.json]``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.identity_world import PUBLISHED, WORLDS, calibration, make_world  # noqa: E402
from models.face_identity import BACKEND_MODELS, identity_threshold  # noqa: E402
from shards.identity import assign_groups  # noqa: E402
from shards.split import VAL, assign_split  # noqa: E402

BACKENDS = {"dlib": "dlib", "arcface": "insightface"}
# 22,000 people hold about 100,000 videos: the size of the time goal.
DEFAULT_WORLDS = [*(f"dlib:{n}" for n in (100, 1_000, 10_000, 22_000)),
                  *(f"arcface:{n}" for n in (100, 1_000, 10_000, 22_000)), "dlib:100000", "arcface:100000"]
VAL_FRACTION = 0.1


class PeakMemory:
    """Peak resident memory of this process while in the ``with`` block, above its level at entry."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()

    def _watch(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            time.sleep(self.every_s)

    def __enter__(self) -> "PeakMemory":
        self.start = psutil.Process().memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def added_mb(self) -> float:
        return max(self.peak - self.start, 0) / 2**20


def score(person: np.ndarray, groups: list[str], val_fraction: float) -> dict[str, float | int]:
    """The figures of one grouping of videos whose true person is ``person``."""
    _, group_index, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    in_val = np.asarray([assign_split(g, val_fraction) == VAL for g in groups])
    people_groups = np.unique(np.stack([person, group_index], axis=1), axis=0)
    groups_per_person = np.bincount(people_groups[:, 0])
    val_per_person = np.bincount(person, weights=in_val)
    videos_per_person = np.bincount(person)
    both = (val_per_person > 0) & (val_per_person < videos_per_person)
    sorted_sizes = np.sort(sizes)[::-1]
    return {
        "videos": len(person), "people": int(person.max()) + 1, "groups": int(len(sizes)),
        "largest_group_share": float(sorted_sizes[0] / len(person)),
        "largest_groups": [int(s) for s in sorted_sizes[:5]],
        "people_in_two_groups": int((groups_per_person > 1).sum()),
        "people_in_both_splits": int(both.sum()),
        "val_share": float(in_val.mean()), "val_share_asked": val_fraction,
    }


def run_world(spec: str, threshold: float | None, seed: int) -> dict:
    name, n_people = spec.split(":")
    backend = BACKENDS[name]
    threshold = identity_threshold(backend, threshold)
    world = make_world(name, int(n_people), seed)
    ids = [f"v{i:07d}" for i in range(len(world.person))]
    new = dict(zip(ids, world.frames))
    with PeakMemory() as memory:
        started = time.perf_counter()
        groups = assign_groups(new, {}, threshold)
        seconds = time.perf_counter() - started
    result = {"world": spec, "backend": BACKEND_MODELS[backend], "threshold": threshold, "seed": seed,
              "frames_per_video": int(world.frames.shape[1]), "dim": int(world.frames.shape[2]),
              **score(world.person, [groups[i] for i in ids], VAL_FRACTION),
              "seconds": round(seconds, 2), "peak_memory_mb": round(memory.added_mb, 1),
              "input_mb": round(world.frames.nbytes / 2**20, 1)}
    result["goals"] = {"largest_group_share_le_1pct": result["largest_group_share"] <= 0.01,
                       "nobody_in_both_splits": result["people_in_both_splits"] == 0,
                       "val_share_within_2_points": abs(result["val_share"] - VAL_FRACTION) <= 0.02}
    return result


def _child(spec: str, threshold: float | None, seed: int, queue) -> None:
    queue.put(run_world(spec, threshold, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", default=",".join(DEFAULT_WORLDS), help="backend:people, comma separated")
    parser.add_argument("--threshold", action="append", default=[], help="backend=value (default: the backend's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench/results/identity.json"))
    args = parser.parse_args(argv)
    thresholds = {k: float(v) for k, v in (t.split("=") for t in args.threshold)}
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "calibration": {name: {"measured": calibration(name),
                                      "published": {k: {f"{t:g}": v for t, v in d.items()}
                                                    for k, d in PUBLISHED[name].items()}}
                               for name in WORLDS},
               "worlds": []}
    context = multiprocessing.get_context("spawn")
    for spec in args.worlds.split(","):
        queue = context.Queue()
        child = context.Process(target=_child, args=(spec, thresholds.get(spec.split(":")[0]), args.seed, queue))
        child.start()
        result = queue.get()
        child.join()
        print(json.dumps(result), flush=True)
        results["worlds"].append(result)
        Path(args.out).write_text(json.dumps(results, indent=1))  # after each world: long runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
