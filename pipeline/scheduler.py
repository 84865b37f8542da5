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
writer thread, so the actors keep working while its shards are written. With a ``journal``
(``pipeline.spill``), every plan and final clip is written down as it arrives, and what an
earlier run wrote down for a chunk is taken back instead of being run again.

Each actor runs one call at a time, so when a worker process dies or hangs the call responsible
is known. Failures never stop the loop. An infrastructure failure (``pipeline.faults``: a worker
or node that died, a lost object, out of memory, a storage or network error, a call past
``ray.task_timeout_s``, whose actor is then killed and restarted) is retried after a backoff
(``ray.retry_backoff_s``, doubling) on another actor when there is one, ``ray.max_attempts`` in
all; an actor that is restarting gets no call until it answers again, so a restart costs no
attempt. A model call whose prepared crops were lost with their node, and a chunk whose finished
clips were, prepare those clips again. What still fails is recorded on its chunk as retryable
(``pipeline.incomplete``), never as a rejection; once more of the run's videos hold one than
``run.error_budget`` allows, the loop stops with ``ErrorBudgetExceeded``. Any other error a call
raises is a rejection with stage ``worker``.

Once the work is done the loop asks every actor how busy it was (``pipeline.activity``) and logs
it: busy fractions, the single-thread work, and the wall time over work / cores.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from pipeline.activity import LOG_MARKER, activity_report, summary_line
from pipeline.clip import Clip
from pipeline.faults import transient_kind
from pipeline.incomplete import ErrorBudgetExceeded, ResultsLost, Retryable
from pipeline.plan import Chunk
from pipeline.progress import Progress
from pipeline.spill import ChunkJournal, ClipSpill
from pipeline.stages.base import error_text

log = logging.getLogger(__name__)

WAIT_S = 1.0
ACTIVITY_WAIT_S = 10.0  # for the actors' activity counts at the end (an actor restarting may not answer)
RECHECK_S = 1.0         # how often to ask again whether a restarting actor is up
MAX_BACKOFF_S = 60.0


class PlacementError(RuntimeError):
    """Actors that Ray could not start within ``ray.placement_timeout_s``."""


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

    def __init__(self, name: str, actors: list[Any], starting: list[Any] | None = None,
                 shape: dict[str, float] | None = None):
        if not actors:
            raise ValueError(f"the {name} pool needs at least one actor")
        self.name = name
        self.actors = actors
        self.shape = shape or {}  # the resources each actor asks of Ray, for error messages
        self.busy = [False] * len(actors)
        self.starting: dict[int, Any] = dict(enumerate(starting or []))  # first start, must succeed
        self.restarting: dict[int, Any] = {}  # actor index -> its readiness reference after a crash
        self.recheck: dict[int, float] = {}   # actor index -> when to ask a restarting actor again
        now = time.monotonic()
        self.down_since: dict[int, float] = {i: now for i in self.starting}

    def waiting(self) -> list[Any]:
        """References of the actors still coming up, for the driver to wait on with its calls
        (an actor that is up is dropped here, so a finished reference never wakes the driver twice)."""
        for index, ready in list(self.starting.items()):
            if ray.wait([ready], timeout=0)[0]:
                del self.starting[index]
                try:
                    ray.get(ready)  # raises what its constructor raised
                    self.down_since.pop(index, None)
                except RayError as exc:
                    if transient_kind(exc) != "actor_unavailable":
                        raise
                    self.restarted(index)  # its node went away while it started
        now = time.monotonic()
        for index in [i for i, at in self.recheck.items() if at <= now]:
            del self.recheck[index]
            self.restarting[index] = self.actors[index].__ray_ready__.remote()
        for index, ready in list(self.restarting.items()):
            if ray.wait([ready], timeout=0)[0]:
                del self.restarting[index]
                try:
                    ray.get(ready)
                    self.down_since.pop(index, None)
                except RayError:  # still restarting, or waiting for a node with room: ask again soon
                    self.recheck[index] = now + RECHECK_S
        return [*self.starting.values(), *self.restarting.values()]

    def down(self) -> set[int]:
        return self.starting.keys() | self.restarting.keys() | self.recheck.keys()

    def check_placement(self, timeout_s: float) -> None:
        """Stop the run when no actor of the pool has been up for ``timeout_s``: Ray cannot place
        the pool's shape on any node (or the actors cannot start at all)."""
        if len(self.down()) < len(self.actors) or not self.down_since:
            return
        waited = time.monotonic() - min(self.down_since.values())
        if waited > timeout_s:
            shape = ", ".join(f"{k} {v:g}" for k, v in sorted(self.shape.items())) or "its resources"
            raise PlacementError(f"no {self.name} actor ({shape}) has been up for {waited:.0f} s "
                                 f"(ray.placement_timeout_s={timeout_s:g}): no node has room for it, "
                                 f"or it cannot start; see the actors' logs")

    def free_actor(self) -> int | None:
        """An idle actor that is up (one starting, or restarting after a crash, gets no work yet)."""
        self.waiting()  # notes the actors that came up since the last look
        down = self.down()
        return next((i for i, busy in enumerate(self.busy) if not busy and i not in down), None)

    def free_actor_avoiding(self, avoid: int | None) -> int | None:
        """A free actor other than ``avoid`` (where an item just failed) if there is one, else any."""
        index = self.free_actor()
        if index is None or index != avoid:
            return index
        down = self.down()
        other = next((i for i, busy in enumerate(self.busy) if not busy and i not in down and i != avoid), None)
        return index if other is None else other

    def restarted(self, index: int) -> None:
        """The actor died; Ray restarts it. Its next call waits until it is up again, so the time
        it takes to start (and load its models) never counts against that call's timeout."""
        self.recheck.pop(index, None)
        self.restarting[index] = self.actors[index].__ray_ready__.remote()
        self.down_since.setdefault(index, time.monotonic())

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
    candidates: dict[str, Clip] = field(default_factory=dict)  # clip id -> the clip as planned
    retryable: list[Retryable] = field(default_factory=list)   # what still failed: chunk not done
    restored: dict[str, Clip] = field(default_factory=dict)    # clip id -> final summary an earlier run journaled


class Scheduler:
    def __init__(self, cfg: Mapping[str, Any], cpu: ActorPool, model: ActorPool,
                 on_chunk: Callable[[ChunkState], None], progress: Progress,
                 journal: ClipSpill | None = None, left_out: Mapping[str, str] | None = None):
        """``journal``: each kept clip goes to ``journal.put`` as its model call returns, and what
        that returns is held for the chunk in place of the reference; plans and rejected clips
        are journaled too, and a chunk's earlier journal is taken back (``pipeline.spill``).
        ``left_out``: video id -> why it is in neither split (``pipeline.identity``): its clips
        are rejected once planned, before any is prepared."""
        ray_cfg = cfg["ray"]
        self.cpu, self.model = cpu, model
        self.on_chunk = on_chunk
        self.journal = journal
        self.left_out = dict(left_out or {})
        self.resumed = {"videos": 0, "clips": 0}  # taken back from an earlier run's journal
        self.progress = progress
        self.max_prepared = max_prepared_clips(ray_cfg["max_prepared_clips"], len(cpu.actors), len(model.actors))
        self.timeout_s = float(ray_cfg["task_timeout_s"])
        self.max_attempts = max(1, int(ray_cfg["max_attempts"]))
        self.backoff_s = float(ray_cfg.get("retry_backoff_s", 2.0))
        self.placement_timeout_s = float(ray_cfg.get("placement_timeout_s", 300.0))
        self.error_budget = float(cfg.get("run", {}).get("error_budget", 1.0))
        self.plan_ahead = 4 * len(cpu.actors)
        self.videos: deque[Clip] = deque()
        self.clips: deque[Clip] = deque()
        self.ready: deque[tuple[Clip, Any]] = deque()
        self.inflight: dict[Any, Task] = {}
        self.attempts: dict[str, int] = {}     # item name -> infrastructure failures so far
        self.avoid: dict[str, int] = {}        # item name -> the actor it last failed on
        self.delayed: list[tuple[float, int, str, Clip, Any]] = []  # heap of (due, seq, step, item, given)
        self.sequence = itertools.count()
        self.failed_videos: set[str] = set()
        self.total_videos = 0
        self.chunks: dict[int, ChunkState] = {}
        self.open_per_video: dict[str, int] = {}
        self.writes: dict[Future, ChunkState] = {}
        self.writer: ThreadPoolExecutor | None = None
        self.activity: dict[str, Any] | None = None  # pipeline.activity report, once run() is done

    # -- the loop ------------------------------------------------------------------------------

    def run(self, chunks: list[Chunk]) -> None:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-writer") as self.writer:
            self.total_videos = sum(len(chunk.videos) for chunk in chunks)
            for chunk in chunks:
                state = self.chunks[chunk.index] = ChunkState(chunk, unplanned=len(chunk.videos))
                earlier = self.journal.restored(chunk.index) if self.journal else ChunkJournal()
                state.restored = earlier.finals
                for v in chunk.videos:
                    if v.video_id in earlier.plans:
                        self.resumed["videos"] += 1
                        self._planned(*earlier.plans[v.video_id], journaled=True)
                    else:
                        self.videos.append(Clip(source=v.source, video_id=v.video_id, chunk=chunk.index,
                                                dataset=v.dataset, language=v.language, speaker=v.speaker))
                self._maybe_finish(state)
            if any(self.resumed.values()):
                log.info("taken back from an earlier run: %d planned videos, %d final clips",
                         self.resumed["videos"], self.resumed["clips"])
            while self.videos or self.clips or self.ready or self.inflight or self.delayed or self.writes:
                self._release_delayed()
                self._dispatch()
                waiting = [*self.inflight, *self.cpu.waiting(), *self.model.waiting()]
                wait_s = WAIT_S if not self.delayed else max(0.01, min(WAIT_S, self.delayed[0][0] - time.monotonic()))
                done: list[Any] = []
                if waiting:
                    done, _ = ray.wait(waiting, num_returns=1, timeout=wait_s)
                elif self.writes:
                    futures_wait(list(self.writes), timeout=wait_s, return_when=FIRST_COMPLETED)
                else:
                    time.sleep(wait_s)
                for ref in done:
                    if ref in self.inflight:  # else an actor came up: the next dispatch uses it
                        self._complete(ref, self.inflight.pop(ref))
                self._check_timeouts()
                self._check_writes()
                for pool in (self.cpu, self.model):
                    pool.check_placement(self.placement_timeout_s)
            self._report_activity(time.monotonic() - started)

    def unfinished(self) -> list[ChunkState]:
        """Chunks not handed to ``on_chunk`` (after a stop)."""
        return list(self.chunks.values())

    def _dispatch(self) -> None:
        while self.ready:
            summary, prepared = self.ready[0]
            if (index := self.model.free_actor_avoiding(self.avoid.get(_name(summary)))) is None:
                break
            self.ready.popleft()
            refs = self.model.actors[index].process.options(num_returns=2).remote("model", prepared)
            self._submit("model", summary, self.model, index, refs[0], refs[1], prepared)
        while True:
            preparing = sum(1 for t in self.inflight.values() if t.kind == "prepare")
            if self.clips and preparing + len(self.ready) < self.max_prepared:
                queue, kind = self.clips, "prepare"
            elif self.videos and len(self.clips) < self.plan_ahead:
                queue, kind = self.videos, "plan"
            else:
                break
            if (index := self.cpu.free_actor_avoiding(self.avoid.get(_name(queue[0])))) is None:
                break
            item = queue.popleft()
            actor = self.cpu.actors[index]
            if kind == "prepare":
                refs = actor.process.options(num_returns=2).remote("prepare", item)
                self._submit("prepare", item, self.cpu, index, refs[0], refs[1])
            else:
                self._submit("plan", item, self.cpu, index, actor.plan_video.remote(item))

    def _release_delayed(self) -> None:
        """Queue again, first in line, the retries whose backoff is over."""
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, step, item, given = heapq.heappop(self.delayed)
            if step == "plan":
                self.videos.appendleft(item)
            elif step == "prepare":
                self.clips.appendleft(item)
            else:
                self.ready.appendleft((item, given))

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
        """Chunks written: a chunk whose finished clips were lost prepares them again; one that
        failed for infrastructure reasons (storage) is retryable; any other error stops the run."""
        for write in [w for w in self.writes if w.done()]:
            state = self.writes.pop(write)
            try:
                write.result()
            except ResultsLost as exc:
                self._redo_lost(state, exc.clip_ids)
            except Exception as exc:  # noqa: BLE001 - sorted out below
                kind = transient_kind(exc)
                if kind is None:
                    raise
                log.warning("writing chunk %d failed (%s): %s", state.chunk.index, kind, error_text(exc))
                state.retryable.append(Retryable("write", f"chunk {state.chunk.index}", None, None, kind,
                                                 error_text(exc), 1))
                self.failed_videos.update(v.video_id for v in state.videos)
                self.writes[self.writer.submit(self.on_chunk, state)] = state  # records it incomplete
                self._check_budget()

    def _redo_lost(self, state: ChunkState, clip_ids: list[str]) -> None:
        """Reopen the chunk and prepare its lost clips again (their node is gone)."""
        log.warning("chunk %d: %d finished clips were lost with their node; preparing them again",
                    state.chunk.index, len(clip_ids))
        lost = set(clip_ids)
        state.clips = [c for c in state.clips if c.clip_id not in lost]
        self.chunks[state.chunk.index] = state
        for clip_id in clip_ids:
            state.results.pop(clip_id, None)
            if self.journal:
                self.journal.forget(state.chunk.index, clip_id)
            candidate = state.candidates[clip_id]
            state.open_clips += 1
            self.open_per_video[candidate.video_id] = self.open_per_video.get(candidate.video_id, 0) + 1
            name = _name(candidate)
            self.attempts[name] = self.attempts.get(name, 0) + 1
            if self.attempts[name] >= self.max_attempts:
                self._give_up("write", candidate, "object_lost", "the finished clip was lost with its node")
            else:
                self.clips.appendleft(candidate)

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
                held = self.journal.put(value, task.result) if self.journal else task.result
                self.chunks[value.chunk].results[value.clip_id] = held
            self._final(value, journaled=value.kept)

    def _failed(self, task: Task, exc: RayError) -> None:
        """A call failed: retry an infrastructure failure after a backoff, else reject the item."""
        item = task.item
        if task.timed_out or isinstance(exc, RayActorError) or not isinstance(exc, RayTaskError):
            task.pool.restarted(task.actor)
        kind = "timeout" if task.timed_out else transient_kind(exc)
        if kind is None:  # an error the stages did not turn into a verdict: the item's own
            item.reject("worker", "error", f"{task.kind}: {error_text(exc)}")
            if task.kind == "plan":
                self._planned(item, [])
            else:
                self._final(item)
            return
        name = _name(item)
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if self.attempts[name] >= self.max_attempts:
            self._give_up(task.kind, item, kind, f"{task.kind}: {error_text(exc)}")
            return
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (self.attempts[name] - 1))
        log.warning("%s of %s failed (%s, attempt %d of %d); retrying in %.1f s", task.kind, name, kind,
                    self.attempts[name], self.max_attempts, delay)
        step, given = task.kind, task.given
        if step == "model" and kind == "object_lost":  # its crops were on a node that is gone
            step, item, given = "prepare", self.chunks[item.chunk].candidates[item.clip_id], None
        self.avoid[name] = task.actor
        heapq.heappush(self.delayed, (time.monotonic() + delay, next(self.sequence), step, item, given))

    def _give_up(self, step: str, item: Clip, kind: str, error: str) -> None:
        """Record ``item`` as retryable on its chunk (which then gets no done file) and close it."""
        state = self.chunks[item.chunk]
        name = _name(item)
        log.warning("%s of %s still failing after %d attempts (%s): left for the next run", step, name,
                    self.attempts.get(name, 0), kind)
        state.retryable.append(Retryable(step, item.source, item.start_s, item.end_s, kind, error,
                                         self.attempts.get(name, 0)))
        self.failed_videos.add(item.video_id)
        if item.is_video:
            self._planned(item, [], record=False)
        else:
            self._final(item, record=False)
        self._check_budget()

    def _check_budget(self) -> None:
        allowed = self.error_budget * self.total_videos
        if len(self.failed_videos) > allowed:
            raise ErrorBudgetExceeded(
                f"stopping: {len(self.failed_videos)} of {self.total_videos} videos hold failures that "
                f"retries did not fix, over run.error_budget={self.error_budget:g} ({allowed:.1f} videos); "
                f"the infrastructure (GPU, storage, network) is failing, not the input")

    def _planned(self, video: Clip, clips: list[Clip], record: bool = True, journaled: bool = False) -> None:
        """A video's plan is in (``record``: False for one that failed for infrastructure reasons;
        ``journaled``: it came from the journal). Its candidate clips a journal holds as final
        are final at once; the others queue for preparing."""
        state = self.chunks[video.chunk]
        if video.video_id in self.left_out:
            for clip in clips:
                clip.reject("identity", "ambiguous_identity", self.left_out[video.video_id])
        if record:
            state.videos.append(video)
            if self.journal and not journaled:
                self.journal.put_plan(video, clips)
        state.unplanned -= 1
        self.progress.video_planned(video)
        self.open_per_video[video.video_id] = len(clips)
        state.open_clips += len(clips)
        if not clips:
            self.progress.video_done()
        for clip in clips:
            if not clip.kept:
                self._final(clip, journaled=True)  # the plan's entry holds it
                continue
            state.candidates[clip.clip_id] = clip
            final = state.restored.get(clip.clip_id)
            if final is None:
                self.clips.append(clip)
                continue
            self.resumed["clips"] += 1
            if final.kept:
                state.results[clip.clip_id] = self.journal.held(final.chunk, final.clip_id)
            self._final(final, journaled=True)
        self._maybe_finish(state)

    def _final(self, clip: Clip, record: bool = True, journaled: bool = False) -> None:
        """A clip is final (``record``: False for one left for the next run). A rejection not yet
        journaled is journaled here; a kept clip was, with its record (``ClipSpill.put``)."""
        state = self.chunks[clip.chunk]
        if record:
            state.clips.append(clip)
            self.progress.clip_done(clip)
            if self.journal and not journaled:
                self.journal.put_final(clip)
        state.open_clips -= 1
        self.open_per_video[clip.video_id] -= 1
        if self.open_per_video[clip.video_id] == 0:
            self.progress.video_done()
        self._maybe_finish(state)

    def _maybe_finish(self, state: ChunkState) -> None:
        if state.unplanned == 0 and state.open_clips == 0 and state.chunk.index in self.chunks:
            del self.chunks[state.chunk.index]
            self.writes[self.writer.submit(self.on_chunk, state)] = state


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
