"""How busy each actor was, and how far the run's wall time is from the machine's limit.

Every worker counts, per kind of call, the calls it served, their wall time ("busy") and the CPU
time its process spent in them. The CPU time is the call's single-thread work whether or not the
actor had a core to itself: when actors time-share the cores their wall time stretches, their
CPU time does not. Summed over every actor it gives the limit of the cores, work / cores, that the
wall time is compared with; and the CPU actors' part of it is the share that
``ray.cpu_stage_share`` sizes the CPU actors by on CPU-only machines (``pipeline.sizing``).

Counts live in the actor process: an actor that was restarted reports only its calls since then.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

LOG_MARKER = "actor activity: "  # the scheduler logs the report as this marker and one JSON object


@dataclass
class CallTotals:
    calls: int = 0
    busy_s: float = 0.0   # wall time inside the calls
    cpu_s: float = 0.0    # CPU time of the actor's process inside the calls


class CallRecorder:
    """One actor's totals per kind of call, and the CPU time it spent starting (imports, models)."""

    def __init__(self) -> None:
        self.totals: dict[str, CallTotals] = {}
        self.startup_cpu_s = 0.0

    def started(self) -> None:
        """Call at the end of the actor's constructor: the CPU time spent so far was its start."""
        self.startup_cpu_s = time.process_time()

    @contextmanager
    def call(self, kind: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            totals = self.totals.setdefault(kind, CallTotals())
            totals.calls += 1
            totals.busy_s += time.perf_counter() - wall
            totals.cpu_s += time.process_time() - cpu

    def as_dict(self) -> dict[str, Any]:
        return {"startup_cpu_s": self.startup_cpu_s,
                "calls": {kind: asdict(totals) for kind, totals in sorted(self.totals.items())}}


def pool_report(actors: Sequence[Mapping[str, Any] | None], wall_s: float) -> dict[str, Any]:
    """One pool's busy fraction per actor (of ``wall_s``) and its summed busy and CPU seconds;
    None stands for an actor that could not report (dead, or a worker class without counts)."""
    busy = [sum(c["busy_s"] for c in a["calls"].values()) if a else None for a in actors]
    cpu = [sum(c["cpu_s"] for c in a["calls"].values()) if a else None for a in actors]
    return {
        "actors": len(actors),
        "reported": sum(a is not None for a in actors),
        "busy_fraction": [None if b is None else round(b / max(wall_s, 1e-9), 3) for b in busy],
        "busy_s": round(sum(b for b in busy if b is not None), 3),
        "cpu_s": round(sum(c for c in cpu if c is not None), 3),
        "startup_cpu_s": round(sum(a["startup_cpu_s"] for a in actors if a), 3),
        "calls": sum(c["calls"] for a in actors if a for c in a["calls"].values()),
    }


def activity_report(pools: Mapping[str, Sequence[Mapping[str, Any] | None]], wall_s: float,
                    cores: float) -> dict[str, Any]:
    """Per pool (``pool_report``), and for the whole run: the single-thread work (CPU seconds of
    every call), the cores, ``wall_s`` over work / cores (1.0: every core busy with calls all
    along), and the CPU pool's share of the work."""
    report: dict[str, Any] = {name: pool_report(actors, wall_s) for name, actors in pools.items()}
    work = sum(p["cpu_s"] for p in report.values())
    report.update({
        "wall_s": round(wall_s, 3), "cores": cores, "work_cpu_s": round(work, 3),
        "wall_over_work_per_core": round(wall_s / (work / cores), 3) if work > 0 and cores > 0 else None,
        "cpu_stage_share": round(report["cpu"]["cpu_s"] / work, 3) if work > 0 and "cpu" in report else None,
    })
    return report


def summary_line(report: Mapping[str, Any]) -> str:
    """The report for a person: busy fractions, work, and wall against the cores' limit."""
    parts = []
    for name in ("cpu", "model"):
        pool = report.get(name)
        if pool:
            fractions = [f for f in pool["busy_fraction"] if f is not None]
            mean = sum(fractions) / len(fractions) if fractions else 0.0
            missing = f", {pool['actors'] - pool['reported']} not reporting" if pool["reported"] < pool["actors"] else ""
            parts.append(f"{pool['actors']} {name} actors{missing}: busy {mean:.0%} on average, {pool['cpu_s']:.1f} CPU-s")
    ratio = report.get("wall_over_work_per_core")
    share = report.get("cpu_stage_share")
    return (f"{'; '.join(parts)}; work {report['work_cpu_s']:.1f} CPU-s on {report['cores']:g} CPUs in "
            f"{report['wall_s']:.1f} s: wall {ratio if ratio is not None else '-'}x work / cores; "
            f"CPU stages {share if share is not None else '-'} of the work (ray.cpu_stage_share)")


def from_log(text: str) -> dict[str, Any] | None:
    """The last report a run logged (``LOG_MARKER`` and its JSON), None when it logged none."""
    for line in reversed(text.splitlines()):
        at = line.find(LOG_MARKER)
        if at >= 0:
            return json.loads(line[at + len(LOG_MARKER):])
    return None
