"""Busy and CPU time per actor (pipeline.activity): the counts, the report's arithmetic, and a real
worker counting its calls."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from configs import load_config, to_dict
from pipeline.activity import LOG_MARKER, CallRecorder, activity_report, from_log, summary_line
from pipeline.clip import Clip
from pipeline.inputs import video_id
from pipeline.workers import StageWorker


def spin(seconds: float) -> None:
    """Burn ``seconds`` of this process's CPU time."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_a_call_counts_its_wall_time_as_busy_and_only_the_work_as_cpu():
    recorder = CallRecorder()
    recorder.started()
    with recorder.call("prepare"):
        time.sleep(0.3)  # waiting: busy, yet no CPU
    with recorder.call("prepare"):
        spin(0.3)
    with pytest.raises(RuntimeError), recorder.call("model"):
        raise RuntimeError("a failed call still counts")
    counts = recorder.as_dict()
    prepare = counts["calls"]["prepare"]
    assert prepare["calls"] == 2 and counts["calls"]["model"]["calls"] == 1
    assert prepare["busy_s"] >= 0.6
    assert 0.3 <= prepare["cpu_s"] < 0.45  # the spin, not the sleep
    assert counts["startup_cpu_s"] > 0


def actor(busy_s: float, cpu_s: float, kind: str = "model") -> dict:
    return {"startup_cpu_s": 5.0, "calls": {kind: {"calls": 5, "busy_s": busy_s, "cpu_s": cpu_s}}}


def test_the_report_puts_the_wall_time_against_the_work_over_the_cores():
    """The issue's run: a CPU actor busy 21% and a model actor 91% of 152.5 s on 2 cores."""
    report = activity_report({"cpu": [actor(32.0, 32.0, "prepare")], "model": [actor(138.6, 138.6)]},
                             wall_s=152.5, cores=2.0)
    assert report["cpu"]["busy_fraction"] == [0.21] and report["model"]["busy_fraction"] == [0.909]
    assert report["work_cpu_s"] == 170.6
    assert report["wall_over_work_per_core"] == round(152.5 / (170.6 / 2), 3) == 1.788
    assert report["cpu_stage_share"] == round(32.0 / 170.6, 3)
    # an actor that could not report is counted as an actor, not as work
    partial = activity_report({"cpu": [actor(10.0, 9.0, "prepare"), None], "model": [actor(50.0, 40.0)]},
                              wall_s=60.0, cores=2.0)
    assert partial["cpu"]["actors"] == 2 and partial["cpu"]["reported"] == 1
    assert partial["cpu"]["busy_fraction"] == [0.167, None] and partial["work_cpu_s"] == 49.0
    line = summary_line(partial)
    assert "2 cpu actors, 1 not reporting: busy 17%" in line and "wall 2.449x work / cores" in line
    assert from_log(f"noise\nINFO pipeline.scheduler: {LOG_MARKER}{{\"wall_s\": 1}}\nmore") == {"wall_s": 1}
    assert from_log("no report here") is None


def test_a_worker_counts_the_calls_it_serves(media: Path):
    cfg = to_dict(load_config("pipeline", ["shots.enabled=false"]))
    worker = StageWorker(("video",), cfg)
    source = str(media / "lp_d20.mp4")
    video, clips = worker.plan_video(Clip(source=source, video_id=video_id(source), chunk=0))
    assert video.kept and clips
    counts = worker.activity()
    plan = counts["calls"]["plan"]
    assert plan["calls"] == 1 and plan["busy_s"] > 0 and 0 < plan["cpu_s"]
    assert counts["startup_cpu_s"] > 0
