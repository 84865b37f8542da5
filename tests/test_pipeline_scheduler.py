"""The driver loop under failure: a worker process that dies once is retried and its clip kept; one
that always dies, and a call that hangs, leave their items retryable on their chunk (never a
rejection); every other clip completes, and each chunk is finished exactly once.

The actors here are real Ray actors; their worker class misbehaves on purpose for named inputs
(the stages' own error handling is tested elsewhere: here it is the processes that fail).
"""
from __future__ import annotations

import logging
import os
import time

import pytest
import ray

from pipeline.activity import CallRecorder, from_log
from pipeline.clip import Clip, VideoInfo
from configs import load_config
from pipeline.inputs import InputVideo
from pipeline.plan import Chunk
from pipeline.progress import Progress
from pipeline.scheduler import ActorPool, Scheduler
from tests.pipeline_kit import ray_session  # noqa: F401

pytestmark = pytest.mark.slow

INFO = VideoInfo(duration_s=2.0, fps=25.0, is_vfr=False, width=64, height=64, rotation=0,
                 has_video=True, has_audio=True)


class MisbehavingWorker:
    """Two one-second clips per video; ``die_*`` sources kill the process, ``hang_*`` ones never
    return, ``once_*`` ones kill it the first time only (a marker file in ``marker_dir`` remembers)."""

    def __init__(self, marker_dir: str | None = None):
        self.marker_dir = marker_dir

    def first_time(self, name: str) -> bool:
        marker = os.path.join(self.marker_dir or "/nonexistent", name)
        if self.marker_dir is None or os.path.exists(marker):
            return False
        open(marker, "w").close()
        return True

    def plan_video(self, video: Clip) -> tuple[Clip, list[Clip]]:
        if "die_plan" in video.source:
            os._exit(1)
        video.info = INFO
        return video, [video.span_clip(0.0, 1.0), video.span_clip(1.0, 2.0)]

    def process(self, group: str, clip: Clip) -> tuple[Clip, Clip | None]:
        if clip.start_s == 1.0 and f"die_{group}" in clip.source:
            os._exit(1)
        if clip.start_s == 1.0 and f"once_{group}" in clip.source and self.first_time(f"{group}_{clip.clip_id}"):
            os._exit(1)
        if clip.start_s == 1.0 and f"hang_{group}" in clip.source:
            time.sleep(3600)
        clip.scores[group] = 1.0
        return clip.summary(), clip


def test_dead_and_hung_workers_are_retried_then_left_retryable(ray_session, tmp_path):  # noqa: F811
    cfg = load_config("pipeline", ["ray.task_timeout_s=5", "ray.max_attempts=2", "ray.retry_backoff_s=0.1",
                                   "run.error_budget=1.0"])
    worker = ray.remote(MisbehavingWorker).options(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
    cpu = ActorPool("cpu", [worker.remote(str(tmp_path)) for _ in range(2)])
    model = ActorPool("model", [worker.remote(str(tmp_path))])
    ray.get([a.__ray_ready__.remote() for a in cpu.actors + model.actors])
    names = ["ok_a", "die_plan", "die_prepare", "hang_model", "ok_b", "once_prepare", "once_model"]
    chunks = [Chunk(i, (InputVideo(f"/videos/{name}.mp4"),)) for i, name in enumerate(names)]
    finished = {}

    def on_chunk(state) -> None:
        assert state.chunk.index not in finished, "a chunk must be finished once"
        finished[state.chunk.index] = (state.videos, sorted(state.clips, key=lambda c: c.start_s),
                                       {k: ray.get(v) for k, v in state.results.items()},
                                       [(r.step, r.kind, r.start_s, r.attempts) for r in state.retryable])

    try:
        Scheduler(cfg, cpu, model, on_chunk, Progress(len(names), enabled=False)).run(chunks)
    finally:
        for actor in cpu.actors + model.actors:
            ray.kill(actor)

    assert sorted(finished) == list(range(len(names)))
    outcome = {}
    for index, name in enumerate(names):
        videos, clips, results, retryable = finished[index]
        assert all(c.kept for c in clips) and all(v.kept for v in videos)  # nothing rejected
        outcome[name] = (len(videos), len(clips), retryable)
        for clip in clips:  # kept clips went through both groups and their full record is fetchable
            assert clip.scores == {"prepare": 1.0, "model": 1.0}
            assert results[clip.clip_id].scores == clip.scores
    assert outcome["ok_a"] == outcome["ok_b"] == (1, 2, [])
    assert outcome["once_prepare"] == outcome["once_model"] == (1, 2, [])  # died once, retried, kept
    # a process that exits under a call reads as a dead worker, or as an actor Ray is restarting
    died = {"worker_died", "actor_unavailable"}
    assert outcome["die_plan"][:2] == (0, 0) and len(outcome["die_plan"][2]) == 1
    assert outcome["die_plan"][2][0][0::2] == ("plan", None) and outcome["die_plan"][2][0][1] in died
    assert outcome["die_plan"][2][0][3] == 2
    assert outcome["die_prepare"][:2] == (1, 1) and outcome["die_prepare"][2][0][0] == "prepare"
    assert outcome["die_prepare"][2][0][1] in died and outcome["die_prepare"][2][0][2:] == (1.0, 2)
    assert outcome["hang_model"] == (1, 1, [("model", "timeout", 1.0, 2)])


class SlowStartingWorker(MisbehavingWorker):
    """Takes a while to load its models, or fails to (``fail=True``), as a model worker might."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False):
        time.sleep(delay_s)
        if fail:
            raise RuntimeError("cannot read the model file")
        self.up_at = time.time()

    def process(self, group: str, clip: Clip) -> tuple[Clip, Clip | None]:
        clip.scores[group] = time.time()
        return clip.summary(), clip

    def started(self) -> float:
        return self.up_at


def test_cpu_work_starts_while_model_workers_load(ray_session):  # noqa: F811
    """Clips are prepared before the model worker is up; none is sent to it before then."""
    cfg = load_config("pipeline", ["ray.max_prepared_clips=4"])
    fast = ray.remote(SlowStartingWorker).options(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
    cpu = ActorPool("cpu", [fast.remote()])
    ray.get(cpu.actors[0].__ray_ready__.remote())
    slow = fast.remote(delay_s=3.0)
    model = ActorPool("model", [slow], starting=[slow.started.remote()])
    chunks = [Chunk(0, (InputVideo("/videos/a.mp4"), InputVideo("/videos/b.mp4")))]
    finished = []
    try:
        Scheduler(cfg, cpu, model, finished.append, Progress(2, enabled=False)).run(chunks)
        up_at = ray.get(slow.started.remote())
    finally:
        ray.kill(cpu.actors[0])
        ray.kill(slow)
    (state,) = finished
    assert len(state.clips) == 4 and all(c.kept for c in state.clips)
    assert min(c.scores["prepare"] for c in state.clips) < up_at  # prepared while the model loaded
    assert min(c.scores["model"] for c in state.clips) >= up_at


def test_a_model_worker_that_cannot_start_stops_the_run(ray_session):  # noqa: F811
    cfg = load_config("pipeline", [])
    worker = ray.remote(SlowStartingWorker).options(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
    cpu = ActorPool("cpu", [worker.remote()])
    broken = worker.remote(fail=True)
    model = ActorPool("model", [broken], starting=[broken.started.remote()])
    chunks = [Chunk(0, (InputVideo("/videos/a.mp4"),))]
    try:
        with pytest.raises(ray.exceptions.RayError, match="cannot read the model file"):
            Scheduler(cfg, cpu, model, lambda state: None, Progress(1, enabled=False)).run(chunks)
    finally:
        ray.kill(cpu.actors[0])
        ray.kill(broken)


class OneClipWorker(SlowStartingWorker):
    """One clip per video, and model calls that take ``work_s``."""

    def __init__(self, delay_s: float = 0.0, work_s: float = 0.0):
        super().__init__(delay_s)
        self.work_s = work_s

    def plan_video(self, video: Clip) -> tuple[Clip, list[Clip]]:
        video.info = INFO
        return video, [video.span_clip(0.0, 1.0)]

    def process(self, group: str, clip: Clip) -> tuple[Clip, Clip | None]:
        time.sleep(self.work_s if group == "model" else 0.0)
        return super().process(group, clip)


def test_a_model_worker_coming_up_with_nothing_to_do_does_not_spin_the_driver(ray_session):  # noqa: F811
    """The second model actor comes up while the only clip runs on the first: the driver must go
    on waiting (about no CPU), not wake again and again on the finished start-up reference."""
    cfg = load_config("pipeline", [])
    worker = ray.remote(OneClipWorker).options(num_cpus=0.25, max_restarts=-1, max_task_retries=0)
    cpu = ActorPool("cpu", [worker.remote()])
    ray.get(cpu.actors[0].__ray_ready__.remote())
    model_actors = [worker.remote(work_s=4.0), worker.remote(delay_s=1.0)]
    model = ActorPool("model", model_actors, starting=[a.started.remote() for a in model_actors])
    chunks = [Chunk(0, (InputVideo("/videos/a.mp4"),))]
    finished = []
    try:
        cpu_before = time.process_time()
        Scheduler(cfg, cpu, model, finished.append, Progress(1, enabled=False)).run(chunks)
        driver_cpu_s = time.process_time() - cpu_before
    finally:
        for actor in cpu.actors + model_actors:
            ray.kill(actor)
    assert len(finished) == 1 and finished[0].clips[0].kept
    assert model.waiting() == []
    assert driver_cpu_s < 1.0, f"the driver used {driver_cpu_s:.1f} s of CPU in a 4 s run"


class TimedPrepareWorker(MisbehavingWorker):
    """Records when each prepare call ran; preparing takes ``prepare_s``, the models almost nothing."""

    def __init__(self, prepare_s: float = 0.0):
        self.prepare_s = prepare_s

    def process(self, group: str, clip: Clip) -> tuple[Clip, Clip | None]:
        start = time.time()
        time.sleep(self.prepare_s if group == "prepare" else 0.0)
        clip.scores[f"{group}_start"], clip.scores[f"{group}_end"] = start, time.time()
        return clip.summary(), clip


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("setting, expected", [("auto", 3), ("2", 2)])
def test_prepared_clips_bound_how_many_cpu_actors_crop_at_once(ray_session, setting, expected):  # noqa: F811
    """``auto`` lets every CPU actor prepare a clip while fast models wait for them (a GPU's
    case); a fixed count caps the clips being prepared, idling the other CPU actors."""
    cfg = load_config("pipeline", [f"ray.max_prepared_clips={setting}"])
    worker = ray.remote(TimedPrepareWorker).options(num_cpus=0.25, max_restarts=-1, max_task_retries=0)
    cpu = ActorPool("cpu", [worker.remote(prepare_s=0.5) for _ in range(3)])
    model = ActorPool("model", [worker.remote()])
    ray.get([a.__ray_ready__.remote() for a in cpu.actors + model.actors])
    chunks = [Chunk(0, tuple(InputVideo(f"/videos/{i}.mp4") for i in range(3)))]
    finished = []
    try:
        Scheduler(cfg, cpu, model, finished.append, Progress(3, enabled=False)).run(chunks)
    finally:
        for actor in cpu.actors + model.actors:
            ray.kill(actor)
    (state,) = finished
    clips = [ray.get(ref) for ref in state.results.values()]
    assert len(clips) == 6
    assert most_at_once([(c.scores["prepare_start"], c.scores["prepare_end"]) for c in clips]) == expected


class CountedWorker(MisbehavingWorker):
    """Counts its calls as the real workers do (``pipeline.activity``): model calls burn ``spin_s``
    of CPU, prepare calls sleep ``sleep_s`` (busy, yet almost no CPU)."""

    def __init__(self, spin_s: float = 0.0, sleep_s: float = 0.0):
        self.spin_s, self.sleep_s = spin_s, sleep_s
        self.recorder = CallRecorder()
        self.recorder.started()

    def plan_video(self, video: Clip) -> tuple[Clip, list[Clip]]:
        with self.recorder.call("plan"):
            return super().plan_video(video)

    def process(self, group: str, clip: Clip) -> tuple[Clip, Clip | None]:
        with self.recorder.call(group):
            if group == "model":
                start = time.process_time()
                while time.process_time() - start < self.spin_s:
                    pass
            else:
                time.sleep(self.sleep_s)
            return super().process(group, clip)

    def activity(self) -> dict:
        return self.recorder.as_dict()


def test_the_scheduler_reports_how_busy_each_actor_was(ray_session, caplog):  # noqa: F811
    """Busy fractions, CPU seconds and wall over work / cores from the actors' own counts, logged
    in the form bench/pipeline.py reads; an actor without counts is reported as missing."""
    cfg = load_config("pipeline", [])
    counted = ray.remote(CountedWorker).options(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
    silent = ray.remote(MisbehavingWorker).options(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
    cpu = ActorPool("cpu", [counted.remote(sleep_s=0.3), silent.remote()])
    model = ActorPool("model", [counted.remote(spin_s=0.4)])
    ray.get([a.__ray_ready__.remote() for a in cpu.actors + model.actors])
    chunks = [Chunk(0, (InputVideo("/videos/a.mp4"), InputVideo("/videos/b.mp4")))]
    scheduler = Scheduler(cfg, cpu, model, lambda state: None, Progress(2, enabled=False))
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.scheduler"):
            scheduler.run(chunks)
    finally:
        for actor in cpu.actors + model.actors:
            ray.kill(actor)
    report = scheduler.activity
    assert report == from_log(caplog.text)
    model_pool, cpu_pool = report["model"], report["cpu"]
    assert model_pool["calls"] == 4 and 1.6 <= model_pool["cpu_s"] < 2.4  # 4 clips x 0.4 s spun
    assert model_pool["busy_s"] >= model_pool["cpu_s"] - 0.05
    assert 0 < model_pool["busy_fraction"][0] <= 1
    assert cpu_pool["reported"] == 1 and cpu_pool["busy_fraction"][1] is None
    assert cpu_pool["cpu_s"] < 0.5 * cpu_pool["busy_s"]  # sleeping is busy, not work
    assert report["cores"] == 2.0
    assert report["work_cpu_s"] == pytest.approx(model_pool["cpu_s"] + cpu_pool["cpu_s"], abs=2e-3)
    assert report["wall_over_work_per_core"] == pytest.approx(
        report["wall_s"] / (report["work_cpu_s"] / 2.0), abs=2e-3)


class DyingEmbedder:
    """Identity calls for the pass on workers: ``die_once_*`` sources kill the process the first
    time (a marker file remembers), ``die_always_*`` ones every time; others get one embedding."""

    def __init__(self, marker_dir: str):
        self.marker_dir = marker_dir

    def identity_embeddings(self, sources: list[str]) -> list:
        import numpy as np

        for source in sources:
            marker = os.path.join(self.marker_dir, os.path.basename(source))
            if "die_always" in source or ("die_once" in source and not os.path.exists(marker)):
                open(marker, "w").close()
                os._exit(1)
        return [(np.ones((1, 4), np.float32), None) for _ in sources]


def test_identity_pass_on_workers_retries_a_dead_worker_once(ray_session, tmp_path):  # noqa: F811
    from pipeline.identity import embed_on_workers

    workers = [ray.remote(DyingEmbedder).options(max_restarts=-1, max_task_retries=0, num_cpus=0).remote(str(tmp_path))
               for _ in range(2)]
    embed = embed_on_workers(workers, per_call=1)
    results = embed(["a.mp4", "die_once_b.mp4", "die_always_c.mp4", "d.mp4"])
    assert [len(emb) for emb, _ in results] == [1, 1, 0, 1]
    assert [error for _, error in results[:2]] == [None, None]
    assert results[2][1].startswith("retryable: worker_died")
    for worker in workers:
        ray.kill(worker)


def test_actors_that_no_node_can_hold_stop_the_run_naming_their_shape(ray_session):  # noqa: F811
    """The tests' Ray has 2 CPUs: an actor asking for 4 is never placed. Starting CPU workers and
    running with a model pool of such actors both stop after ray.placement_timeout_s, in one line."""
    from pipeline.build_shards import start_cpu_workers
    from pipeline.scheduler import PlacementError
    from pipeline.sizing import PoolSizes

    cfg = load_config("pipeline", ["ray.placement_timeout_s=3"])
    sizes = PoolSizes(cpu_workers=1, cpu_worker_cpus=4.0, model_workers=1, model_worker_cpus=1.0, model_worker_gpus=0.0)
    started = time.monotonic()
    with pytest.raises(PlacementError, match=r"1 of 1 CPU actors \(4 CPU each\) were not up after 3 s") as info:
        start_cpu_workers(cfg, sizes, MisbehavingWorker)
    assert "\n" not in str(info.value) and time.monotonic() - started < 30

    worker = ray.remote(MisbehavingWorker).options(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
    cpu = ActorPool("cpu", [worker.remote()])
    huge = ray.remote(SlowStartingWorker).options(num_cpus=4, max_restarts=-1, max_task_retries=0).remote()
    model = ActorPool("model", [huge], starting=[huge.started.remote()], shape={"CPU": 4.0, "GPU": 0.0})
    chunks = [Chunk(0, (InputVideo("/videos/a.mp4"),))]
    try:
        with pytest.raises(PlacementError, match=r"no model actor \(CPU 4, GPU 0\) has been up"):
            Scheduler(cfg, cpu, model, lambda state: None, Progress(1, enabled=False)).run(chunks)
    finally:
        ray.kill(cpu.actors[0])
        ray.kill(huge)
