"""The driver loop on a two-node cluster whose second node is killed mid-run (run as a script by
``tests/test_ray_node_loss.py``): stand-in workers, one CPU and one model actor on each node, whose
clips carry a megabyte each, so crops and finished clips live in the object store of the node that
made them. Prints one JSON line: per chunk, the clips kept and rejected, and the items left retryable.

    python -m tests.lost_node_scheduler GCS_ADDRESS SIGNAL_FILE
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from configs import load_config
from pipeline.clip import Clip, VideoInfo
from pipeline.faults import transient_kind
from pipeline.incomplete import ResultsLost
from pipeline.inputs import InputVideo
from pipeline.plan import Chunk
from pipeline.progress import Progress
from pipeline.scheduler import ActorPool, Scheduler

INFO = VideoInfo(duration_s=2.0, fps=25.0, is_vfr=False, width=64, height=64, rotation=0,
                 has_video=True, has_audio=True)
VIDEOS = 8


class HeavyWorker:
    """Two clips per video; each step takes ``step_s`` and adds a megabyte to the clip."""

    def __init__(self, step_s: float):
        self.step_s = step_s

    def plan_video(self, video: Clip) -> tuple[Clip, list[Clip]]:
        video.info = INFO
        return video, [video.span_clip(0.0, 1.0), video.span_clip(1.0, 2.0)]

    def process(self, group: str, clip: Clip) -> tuple[Clip, Clip | None]:
        time.sleep(self.step_s)
        if group == "prepare":
            clip.audio = np.full(2**18, clip.start_s, np.float32)  # 1 MB: the object store holds it
        else:
            clip.audio_feat = clip.audio * 2
        clip.scores[group] = 1.0
        return clip.summary(), clip


def main(address: str, signal_file: str) -> None:
    ray.init(address=address, log_to_driver=False)
    cfg = load_config("pipeline", ["ray.retry_backoff_s=0.2", "ray.max_attempts=3", "run.error_budget=1.0",
                                   "ray.placement_timeout_s=120"])
    head = ray.get_runtime_context().get_node_id()
    second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)

    def actor(node: str):
        return ray.remote(HeavyWorker).options(
            num_cpus=0.2, max_restarts=-1, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(0.3)

    cpu = ActorPool("cpu", [actor(head), actor(second)])
    model = ActorPool("model", [actor(head), actor(second)])
    ray.get([a.__ray_ready__.remote() for a in cpu.actors + model.actors])
    chunks = [Chunk(i, (InputVideo(f"/videos/v{i}.mp4"),)) for i in range(VIDEOS)]
    finished: dict[int, dict] = {}

    def on_chunk(state) -> None:
        lost = []
        for clip in state.clips:
            if clip.kept:
                try:
                    full = ray.get(state.results[clip.clip_id])
                    assert float(full.audio_feat[0]) == 2 * clip.start_s
                except Exception as exc:  # noqa: BLE001 - as pipeline.chunk_writer sorts them
                    if transient_kind(exc) is None:
                        raise
                    lost.append(clip.clip_id)
        if lost:
            raise ResultsLost(state.chunk.index, lost)
        finished[state.chunk.index] = {"kept": sum(c.kept for c in state.clips),
                                       "rejected": sum(not c.kept for c in state.clips),
                                       "retryable": [r.kind for r in state.retryable]}
        Path(signal_file).touch()  # the test kills the second node now

    Scheduler(cfg, cpu, model, on_chunk, Progress(VIDEOS, enabled=False)).run(chunks)
    print(json.dumps({"chunks": finished}))
    for a in cpu.actors + model.actors:
        ray.kill(a)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
