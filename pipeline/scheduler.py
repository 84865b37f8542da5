"""The driver loop: feed two actor pools, collect results, and finish chunks as they complete.

Work flows video -> candidate clips -> prepared clip (face crops, audio) -> model outputs:

* ``plan``: a CPU actor probes a video and cuts it into candidate clips (small results);
* ``prepare``: a CPU actor decodes a clip's audio, runs the cheap filters and crops the face;
* ``model``: a model actor runs quality, SyncNet, the motion extractor and the audio encoder.

Each call returns a small summary and, separately, an object reference to the clip's arrays; the
driver only ever reads summaries, and hands references on (prepared crops go from the CPU actor
to the model actor through the object store, never through the driver). Backpressure keeps at
most ``ray.max_prepared_clips`` clips being prepared or waiting, so memory stays bounded whatever
the input's length. A chunk whose videos and clips are all final is handed to ``on_chunk`` on a
writer thread, so the actors keep working while its shards are written.

Each actor runs one call at a time, so when a worker process dies or hangs the call responsible
is known. Failures never stop the loop: a call whose worker dies is retried on the restarted
actor (``ray.max_attempts`` in all), a call running past ``ray.task_timeout_s`` has its actor
killed and restarted, and whatever still fails becomes a rejection with stage ``worker``.

Once the work is done the loop asks every actor how busy it was (``pipeline.activity``) and logs
it: busy fractions, the single-thread work, and the wall time over work / cores.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from pipeline.activity import LOG_MARKER, activity_report, summary_line
from pipeline.clip import Clip
from pipeline.plan import Chunk
from pipeline.progress import Progress
from pipeline.stages.base import error_text

log = logging.getLogger(__name__)

WAIT_S = 1.0
ACTIVITY_WAIT_S = 10.0  # for the actors' activity counts at the end (an actor restarting may not answer)


def max_prepared_clips(setting: int | str, cpu_actors: int, model_actors: int) -> int:
    """``ray.max_prepared_clips``; ``auto``: every CPU actor preparing one clip and one clip
    waiting per model actor. A fixed count below the CPU actors leaves some of them idle whenever
    the models outrun them (a GPU does): with 15 CPU actors and a limit of 2, only 2 crop faces."""
    if str(setting) == "auto":
        return cpu_actors + model_actors
    return max(1, int(setting))


class ActorPool:
    """Actors of one kind (created with ``max_restarts=-1``), each running one call at a time.

    ``starting``: one reference per actor that resolves once it is up (its models loaded). The
    pool hands such an actor no work before then, so the driver can start the other pool's work
    while models load; an actor that fails its first start (a bad file, too little memory) stops
    the run, as a configuration error should, rather than failing every clip one by one.
    """

    def __init__(self, name: str, actors: list[Any], starting: list[Any] | None = None):
        if not actors:
            raise ValueError(f"the {name} pool needs at least one actor")
        self.name = name
        self.actors = actors
        self.busy = [False] * len(actors)
        self.starting: dict[int, Any] = dict(enumerate(starting or []))  # first start, must succeed
        self.restarting: dict[int, Any] = {}  # actor index -> its readiness reference after a crash

    def waiting(self) -> list[Any]:
        """References of the actors still coming up, for the driver to wait on with its calls
        (an actor that is up is dropped here, so a finished reference never wakes the driver twice)."""
        for index, ready in list(self.starting.items()):
            if ray.wait([ready], timeout=0)[0]:
                ray.get(ready)  # raises what its constructor raised
                del self.starting[index]
        for index, ready in list(self.restarting.items()):
            if ray.wait([ready], timeout=0)[0]:
                del self.restarting[index]
        return [*self.starting.values(), *self.restarting.values()]

    def free_actor(self) -> int | None:
        """An idle actor that is up (one starting, or restarting after a crash, gets no work yet)."""
        self.waiting()  # notes the actors that came up since the last look
        down = self.starting.keys() | self.restarting.keys()
        return next((i for i, busy in enumerate(self.busy) if not busy and i not in down), None)

    def restarted(self, index: int) -> None:
        """The actor died; Ray restarts it. Its next call waits until it is up again, so the time
        it takes to start (and load its models) never counts against that call's timeout."""
        self.restarting[index] = self.actors[index].__ray_ready__.remote()

    def kill(self, index: int) -> None:
        ray.kill(self.actors[index], no_restart=False)


@dataclass
class Task:
    kind: str                 # "plan" | "prepare" | "model"
    item: Clip                # the video record or clip summary the call works on
    pool: ActorPool
    actor: int
    started: float
    result: Any = None        # reference to the full clip (prepare, model)
    given: Any = None         # the prepared clip's reference a model call received (for retries)
    timed_out: bool = False


@dataclass
class ChunkState:
    chunk: Chunk
    unplanned: int
    videos: list[Clip] = field(default_factory=list)
    clips: list[Clip] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)  # clip id -> the full clip's reference, or what `keep` made of it
    open_clips: int = 0


class Scheduler:
    def __init__(self, cfg: Mapping[str, Any], cpu: ActorPool, model: ActorPool,
                 on_chunk: Callable[[ChunkState], None], progress: Progress,
                 keep: Callable[[Clip, Any], Any] | None = None):
        """``keep(summary, reference)``: called with each kept clip as its model call returns;
        what it returns is held for the chunk in place of the reference (``pipeline.spill``)."""
        ray_cfg = cfg["ray"]
        self.cpu, self.model = cpu, model
        self.on_chunk = on_chunk
        self.keep = keep
        self.progress = progress
        self.max_prepared = max_prepared_clips(ray_cfg["max_prepared_clips"], len(cpu.actors), len(model.actors))
        self.timeout_s = float(ray_cfg["task_timeout_s"])
        self.max_attempts = max(1, int(ray_cfg["max_attempts"]))
        self.plan_ahead = 4 * len(cpu.actors)
        self.videos: deque[Clip] = deque()
        self.clips: deque[Clip] = deque()
        self.ready: deque[tuple[Clip, Any]] = deque()
        self.inflight: dict[Any, Task] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        self.chunks: dict[int, ChunkState] = {}
        self.open_per_video: dict[str, int] = {}
        self.writes: list[Future] = []
        self.writer: ThreadPoolExecutor | None = None
        self.activity: dict[str, Any] | None = None  # pipeline.activity report, once run() is done

    # -- the loop ------------------------------------------------------------------------------

    def run(self, chunks: list[Chunk]) -> None:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-writer") as self.writer:
            for chunk in chunks:
                self.chunks[chunk.index] = ChunkState(chunk, unplanned=len(chunk.videos))
                for v in chunk.videos:
                    self.videos.append(Clip(source=v.source, video_id=v.video_id, chunk=chunk.index,
                                            dataset=v.dataset, language=v.language, speaker=v.speaker))
                self._maybe_finish(self.chunks[chunk.index])
            while self.videos or self.clips or self.ready or self.inflight:
                self._dispatch()
                waiting = [*self.inflight, *self.cpu.waiting(), *self.model.waiting()]
                done, _ = ray.wait(waiting, num_returns=1, timeout=WAIT_S) if waiting else ([], [])
                for ref in done:
                    if ref in self.inflight:  # else an actor came up: the next dispatch uses it
                        self._complete(ref, self.inflight.pop(ref))
                self._check_timeouts()
                self._check_writes()
            self._report_activity(time.monotonic() - started)
        for write in self.writes:
            write.result()  # a chunk that could not be written stops the run here

    def _dispatch(self) -> None:
        while self.ready and (index := self.model.free_actor()) is not None:
            summary, prepared = self.ready.popleft()
            refs = self.model.actors[index].process.options(num_returns=2).remote("model", prepared)
            self._submit("model", summary, self.model, index, refs[0], refs[1], prepared)
        while (index := self.cpu.free_actor()) is not None:
            preparing = sum(1 for t in self.inflight.values() if t.kind == "prepare")
            if self.clips and preparing + len(self.ready) < self.max_prepared:
                clip = self.clips.popleft()
                refs = self.cpu.actors[index].process.options(num_returns=2).remote("prepare", clip)
                self._submit("prepare", clip, self.cpu, index, refs[0], refs[1])
            elif self.videos and len(self.clips) < self.plan_ahead:
                video = self.videos.popleft()
                self._submit("plan", video, self.cpu, index, self.cpu.actors[index].plan_video.remote(video))
            else:
                break

    def _submit(self, kind: str, item: Clip, pool: ActorPool, actor: int, ref: Any, result: Any = None,
                given: Any = None) -> None:
        """Record a call: ``ref`` is the summary the driver waits for, ``result`` the full clip."""
        pool.busy[actor] = True
        self.inflight[ref] = Task(kind, item, pool, actor, time.monotonic(), result, given)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for task in self.inflight.values():
            if not task.timed_out and now - task.started > self.timeout_s:
                task.timed_out = True
                log.warning("%s of %s ran past %.0f s: restarting its worker", task.kind,
                            _name(task.item), self.timeout_s)
                task.pool.kill(task.actor)

    def _report_activity(self, wall_s: float) -> None:
        """Log how busy the actors were over the ``wall_s`` the loop ran (never fails the run)."""
        try:
            pools = {pool.name: actor_activity(pool) for pool in (self.cpu, self.model)}
            cores = float(ray.cluster_resources().get("CPU", 0.0))
            self.activity = activity_report(pools, wall_s, cores)
        except (RayError, KeyError, TypeError) as exc:
            log.warning("could not gather the actors' activity: %s", error_text(exc))
            return
        log.info("%s", summary_line(self.activity))
        log.info("%s%s", LOG_MARKER, json.dumps(self.activity))

    def _check_writes(self) -> None:
        for write in [w for w in self.writes if w.done()]:
            write.result()  # raises what the writer raised
            self.writes.remove(write)

    # -- results -------------------------------------------------------------------------------

    def _complete(self, ref: Any, task: Task) -> None:
        task.pool.busy[task.actor] = False
        try:
            value = ray.get(ref)
        except RayError as exc:
            self._failed(task, exc)
            return
        if task.kind == "plan":
            video, clips = value
            self._planned(video, clips)
        elif task.kind == "prepare":
            if value.kept:
                self.ready.append((value, task.result))
            else:
                self._final(value)
        else:
            if value.kept:
                held = self.keep(value, task.result) if self.keep else task.result
                self.chunks[value.chunk].results[value.clip_id] = held
            self._final(value)

    def _failed(self, task: Task, exc: RayError) -> None:
        """A worker died, timed out or raised: retry on the restarted worker, or record a rejection."""
        item = task.item
        crashed = isinstance(exc, RayActorError) or not isinstance(exc, RayTaskError)
        if crashed:
            task.pool.restarted(task.actor)
        key = (task.kind, _name(item))
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if crashed and not task.timed_out and self.attempts[key] < self.max_attempts:
            log.warning("worker died during %s of %s (attempt %d of %d); retrying", task.kind,
                        _name(item), self.attempts[key], self.max_attempts)
            if task.kind == "plan":
                self.videos.appendleft(item)
            elif task.kind == "prepare":
                self.clips.appendleft(item)
            else:
                self.ready.appendleft((item, task.given))
            return
        reason = "timeout" if task.timed_out else ("worker_died" if crashed else "error")
        item.reject("worker", reason, f"{task.kind}: {error_text(exc)}")
        if task.kind == "plan":
            self._planned(item, [])
        else:
            self._final(item)

    def _planned(self, video: Clip, clips: list[Clip]) -> None:
        state = self.chunks[video.chunk]
        state.videos.append(video)
        state.unplanned -= 1
        self.progress.video_planned(video)
        self.open_per_video[video.video_id] = len(clips)
        state.open_clips += len(clips)
        if not clips:
            self.progress.video_done()
        for clip in clips:
            if clip.kept:
                self.clips.append(clip)
            else:
                self._final(clip)
        self._maybe_finish(state)

    def _final(self, clip: Clip) -> None:
        state = self.chunks[clip.chunk]
        state.clips.append(clip)
        state.open_clips -= 1
        self.progress.clip_done(clip)
        self.open_per_video[clip.video_id] -= 1
        if self.open_per_video[clip.video_id] == 0:
            self.progress.video_done()
        self._maybe_finish(state)

    def _maybe_finish(self, state: ChunkState) -> None:
        if state.unplanned == 0 and state.open_clips == 0 and state.chunk.index in self.chunks:
            del self.chunks[state.chunk.index]
            self.writes.append(self.writer.submit(self.on_chunk, state))


def actor_activity(pool: ActorPool) -> list[dict[str, Any] | None]:
    """Each actor's ``activity()`` counts; None for one that does not answer in time or has none."""
    refs: list[Any] = []
    for actor in pool.actors:
        try:
            refs.append(actor.activity.remote())
        except AttributeError:  # a worker class without counts (the tests' stand-ins)
            refs.append(None)
    pending = [r for r in refs if r is not None]
    ready = set(ray.wait(pending, num_returns=len(pending), timeout=ACTIVITY_WAIT_S)[0]) if pending else set()
    counts: list[dict[str, Any] | None] = []
    for ref in refs:
        try:
            counts.append(ray.get(ref) if ref in ready else None)
        except RayError:
            counts.append(None)
    return counts


def _name(item: Clip) -> str:
    return item.source if item.is_video else f"{item.source} [{item.start_s:.2f}-{item.end_s:.2f}]"
