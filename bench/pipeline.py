"""Speed and memory of the shard-building job against the naive way, on the same clips and weights.

    python bench/pipeline.py [--quick] [--gpu] [--sizing] [--out FILE]

Measures, on the real sample clips (synthesised ones when the media folder is absent):

* the pipeline, run as users run it (``python pipeline/build_shards.py``, a fresh process), with a
  local Ray of 2 CPUs and of 1 CPU (the whole command pinned to that many cores; one
  single-threaded model worker per core, see ``sizing``), its models on ONNX Runtime (the CPU
  default): video seconds per wall second (wall: the whole command, Python's start, Ray's
  start-up and model loading included; "processing" excludes start-up), frames per second of
  each stage, the share of the processing time spent inside model forward passes, and peak memory
  (summed PSS of the command's process tree: the driver and every Ray process);
* the pure model compute for the same frames: every model of the pipeline run back to back on
  prepared crops, with the model worker's thread count, in this process and split over as many
  processes as the 2-CPU run has model workers (what the models alone cost on these cores), and
  split the same way with the face detector too (the tracker on the decoded frames);
* the naive way (``bench/naive_prepare.py``, also a fresh process, timed the same way): decode the
  whole video into memory, crop, run the motion extractor (PyTorch eager, default threads) frame
  by frame at batch 1, then the audio encoder, as the public JoyVASA preparation does; and the
  same with the pipeline's filter models added (quality, SyncNet), for a comparison at equal work;
* the 2-CPU run again with SyncNet's lip tower on every 2nd window (``filters.sync.window_stride``);
* the 2-CPU run and the naive way on every input looped 3 times (the fixed start-up of Ray, its
  workers and their models spread over 3x the video; skipped with ``--quick``);
* peak memory of the pipeline and of the naive way on one video and on the same video ten times
  as long, with the peak broken down by process; and the memory of one model worker process
  after each of 8 rounds over two clips (skipped with ``--quick``);
* the job at its own default sizing on 2 cores against the old default (given explicitly), one
  after the other (``default_sizing``; skipped with ``--quick``, alone with ``--sizing``, which
  adds it to the existing result file): the single-thread work (CPU seconds of every actor's
  calls, ``pipeline.activity``), the cores, the wall time over work / cores (also with the
  actors' start-up, model loading included, counted as work), and how busy each actor was; then
  the default sizing on every input looped 5 times (``--sizing-loops``), where the fixed start
  weighs less.

With ``--memory-minutes 5 60`` (alone; added to the result file as ``memory_vs_hours``): peak memory
of the job on the longest real clip looped (stream copy, no re-encoding) to each length, one video and so
one chunk per run, clips of up to ``clips.max_len_s`` (60 s): a chunk's finished clips wait for
the chunk on disk (``pipeline.spill``), so the peak should not follow the hours of the chunk.
With ``--gpu`` the job runs on the whole machine with its own sizing. ``--head-only`` runs the job
of ``bench/stand_in_models.py`` instead: the models on each clip's first frames, their outputs
repeated to its full length (every array of its real size), so an hour of input takes minutes.

With ``--gpu`` (a machine with a CUDA GPU), instead: the job with its own sizing (every core; one
model actor per GPU, and four sharing it at 0.25 GPU each) against the naive way on the GPU (the
extractor at batch 1 under fp16 autocast, as LivePortrait runs it), on the inputs and on them
looped 3 times (``--loops``); written to bench/results/pipeline_gpu.json. ``--gpu --longer-only
--loops 10``: only the job and the naive way on every input looped 10 times (minutes of video).

Random weights of the official architectures throughout (speed does not depend on the values).
Writes bench/results/pipeline.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from configs import load_config, to_dict  # noqa: E402
from pipeline.activity import from_log  # noqa: E402
from pipeline.media import media_available, media_dir  # noqa: E402
from pipeline.probe import probe  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "pipeline.json"
RESULTS_GPU = ROOT / "bench" / "results" / "pipeline_gpu.json"
MODEL_STAGES = ("quality", "sync", "motion", "audio_features")
# One clip per video (no shot split), 3 to 3.5 s long, models in score-only mode so every clip
# runs every stage; an offline quality metric; the base-size audio encoder.
SETTINGS = ("shots.enabled=false", "clips.min_len_s=3", "clips.max_len_s=3.5", "clips.cut_margin_s=0",
            "filters.quality.metric=piqe", "filters.quality.threshold=60", "filters.quality.mode=score",
            "filters.sync.mode=score", "filters.head_motion.mode=score", "filters.faces.min_face_px=32",
            "ray.torch_threads=1", "progress.enabled=false")


class PeakMemory:
    """Samples the summed PSS of this process's descendants: the command under test and every
    process it starts (Ray's included), not this process, whose own memory varies. PSS splits
    shared pages (libraries, the object store) between the processes mapping them, so the sum is
    the memory the run really holds, where summed RSS would count torch once per process."""

    # Every 2 s: reading a process's PSS walks its page tables under its memory-map lock, and at
    # 0.5 s that slowed the model workers it watched by 5-7% (the peaks last many seconds).
    def __init__(self, interval_s: float = 2.0):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self.at_peak: dict[str, int] = {}  # process name -> PSS summed over processes of that name, at the peak
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            by_name: dict[str, int] = {}
            for proc in me.children(recursive=True):
                try:
                    # a Ray worker's title names its actor and the method it runs: keep the actor
                    name = proc.name().split(".")[0]
                    by_name[name] = by_name.get(name, 0) + proc.memory_full_info().pss
                except psutil.Error:
                    pass
            if sum(by_name.values()) > self.peak:
                self.peak, self.at_peak = sum(by_name.values()), by_name
            self._stop.wait(self.interval_s)

    def breakdown_mb(self) -> dict[str, float]:
        """PSS by process name at the peak (Ray names its workers ``ray::<class>``), largest first."""
        return {k: round(v / 2**20, 1) for k, v in sorted(self.at_peak.items(), key=lambda kv: -kv[1])}

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if media_available():
        return [media_dir() / "lp_d20.mp4", media_dir() / "lp_s13.mp4", media_dir() / "lp_d14.mp4"]
    from pipeline.media_kit import make_clip

    return [make_clip(folder / "a.mp4", duration=7.0, seed=1).path,
            make_clip(folder / "b.mp4", size=(480, 480), duration=4.0, seed=2).path]


def loop_video(src: Path, dst: Path, times: int) -> Path:
    """``src`` played ``times`` times in a row (re-encoded with PyAV: H.264 and AAC), for the runs
    on longer input; the frames and samples are renumbered so the copies follow each other."""
    import av

    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        video_in, audio_in = source.streams.video[0], source.streams.audio[0]
        video = out.add_stream("libx264", rate=video_in.average_rate, options={"preset": "veryfast"})
        video.width, video.height, video.pix_fmt = video_in.width, video_in.height, "yuv420p"
        audio = out.add_stream("aac", rate=audio_in.rate, layout=audio_in.layout.name)
        n_frames = n_samples = 0
        for _ in range(times):
            source.seek(0)
            for frame in source.decode(video_in, audio_in):
                if isinstance(frame, av.VideoFrame):
                    frame.pts, frame.time_base = n_frames, 1 / Fraction(video_in.average_rate)
                    n_frames += 1
                    out.mux(video.encode(frame.reformat(format="yuv420p")))
                else:
                    frame.pts, frame.time_base = n_samples, Fraction(1, audio_in.rate)
                    n_samples += frame.samples
                    out.mux(audio.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return dst


def sizing(cpus: int) -> tuple[str, ...]:
    """Actors for ``cpus`` cores: one CPU worker on half a core (decoding, faces and crops are about
    a fifth of the work), one single-threaded model worker per core sharing the rest."""
    return ("ray.cpu_workers=1", "ray.cpu_worker_cpus=0.5", f"ray.model_workers={cpus}",
            f"ray.model_worker_cpus={(cpus - 0.5) / cpus}")


def old_cpu_sizing(cpus: int) -> tuple[str, ...]:
    """The CPU-only default before ``ray.cpu_stage_share``, given explicitly: one CPU actor per 8
    cores (at least one) on a whole core, a single-threaded model actor on each core left."""
    cpu_workers = max(1, round(cpus / 8))
    return (f"ray.cpu_workers={cpu_workers}", "ray.cpu_worker_cpus=1",
            f"ray.model_workers={max(1, cpus - cpu_workers)}", "ray.model_worker_cpus=1")


def report(name: str, run: dict) -> dict:
    """Print one finished run's numbers as they come (a long bench shows its progress), return it."""
    keys = ("wall_s", "command_wall_s", "processing_s", "video_s", "video_s_per_wall_s",
            "video_s_per_command_wall_s", "model_workers", "peak_mb")
    print(name, {k: run[k] for k in keys if k in run}, flush=True)
    return run


def command(argv: list[str], log: Path) -> None:
    """Run a timed command, its output to ``log``; on failure stop with the log's end."""
    with log.open("wb") as sink:
        code = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(argv[1:3])} failed with exit code {code}:\n"
                         + log.read_text(errors="replace")[-3000:])


def run_pipeline(videos: list[Path], work: Path, name: str, cpus: int | None, extra: tuple[str, ...] = (),
                 job_sizing: bool = False, script: Path = ROOT / "pipeline" / "build_shards.py") -> dict:
    """One run of the job's command with a local Ray of ``cpus`` CPUs (pinned to that many cores;
    actors sized by ``sizing`` unless ``job_sizing``, then by the job's defaults and ``extra``),
    or, with ``cpus=None``, of the whole machine with the job's own sizing (GPU machines).
    ``script``: the job's command, or ``bench/stand_in_models.py`` (the job with its models cut short)."""
    listing = work / f"{name}.txt"
    listing.write_text("\n".join(str(v) for v in videos) + "\n")
    out = work / name
    me = psutil.Process()
    affinity = me.cpu_affinity()
    if cpus is not None:
        me.cpu_affinity(affinity[:cpus])  # the command and Ray's processes inherit it
        extra = (f"ray.num_cpus={cpus}", *(() if job_sizing else sizing(cpus)), *extra)
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            command([sys.executable, str(script), "--input", str(listing),
                     "--output", str(out), "--random-weights", *SETTINGS, *extra], work / f"{name}.log")
            wall = time.perf_counter() - start
    finally:
        me.cpu_affinity(affinity)
    run = json.loads((out / "run.json").read_text())
    clips = pq.read_table(out / "manifests" / "clips.parquet").to_pylist()
    kept = [c for c in clips if c["kept"]]
    timings = run["timings"]
    video_s = sum(c["end_s"] - c["start_s"] for c in kept)
    model_s = sum(timings["stage_seconds"].get(s, 0.0) for s in MODEL_STAGES)
    pools = run["cluster"]["pools"]
    activity = from_log((work / f"{name}.log").read_text(errors="replace"))
    return report(name, {
        "name": name, "ray_cpus": int(run["cluster"]["resources"]["CPU"]),
        "gpus": int(run["cluster"]["resources"].get("GPU", 0)), "model_workers": pools["model_workers"],
        "model_worker_gpus": pools["model_worker_gpus"], "clips": len(kept), "frames": sum(c["n_frames"] for c in kept),
        "video_s": round(video_s, 2), "wall_s": round(wall, 2),
        "startup_s": round(timings["startup_s"], 2), "processing_s": round(timings["processing_s"], 2),
        "video_s_per_wall_s": round(video_s / wall, 4),
        "video_s_per_processing_s": round(video_s / timings["processing_s"], 4),
        "model_share_of_processing": round(model_s / timings["processing_s"], 3),
        "stage_fps": timings["stage_fps"], "stage_seconds": timings["stage_seconds"],
        "peak_mb": round(memory.peak / 2**20, 1), "peak_mb_by_process": memory.breakdown_mb(),
        "pools": pools, "activity": activity,
        "spans": [(c["source"], c["start_s"], c["end_s"]) for c in kept],
    })


def loop_by_copy(src: Path, dst: Path, minutes: float) -> Path:
    """``src`` repeated to ``minutes`` long without re-encoding (ffmpeg's stream loop): an hour of
    input in seconds, every copy the same real footage."""
    times = int(minutes * 60 / probe(str(src)).duration_s) + 1
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(times - 1), "-i", str(src), "-c", "copy",
                    "-t", f"{minutes * 60:g}", str(dst)], check=True, timeout=600)
    return dst


# With the models cut short the CPU stages are the work: two CPU actors, one model actor.
HEAD_ONLY_SIZING = ("ray.cpu_workers=2", "ray.cpu_worker_cpus=0.75", "ray.model_workers=1",
                    "ray.model_worker_cpus=0.5")


def memory_vs_hours(source: Path, work: Path, minutes: list[float], gpu: bool, head_only: bool) -> dict:
    """Peak memory of the job on ``source`` looped to each length (one video: one chunk); with
    ``head_only``, the job of ``bench/stand_in_models.py`` (models on each clip's first frames,
    outputs repeated to full length)."""
    # Shots on: a loop's seam is a cut where the face jumps, and a clip across it loses its track.
    settings = ("shots.enabled=true", "clips.max_len_s=60", "clips.min_len_s=3",
                *(HEAD_ONLY_SIZING if head_only else ()))
    script = ROOT / ("bench/stand_in_models.py" if head_only else "pipeline/build_shards.py")
    rows = []
    for length in minutes:
        video = loop_by_copy(source, work / "inputs" / f"{source.stem}_{length:g}min.mp4", length)
        run = run_pipeline([video], work, f"memory_{length:g}min", None if gpu else 2, settings,
                           script=script)
        out = work / f"memory_{length:g}min"
        shard_mb = sum(p.stat().st_size for p in (out / "shards").glob("*.tar")) / 2**20
        rows.append({"input_min": round(probe(str(video)).duration_s / 60, 2), "video_s": run["video_s"],
                     "clips": run["clips"], "shards_mb": round(shard_mb, 1), "wall_s": run["wall_s"],
                     "peak_mb": run["peak_mb"], "peak_mb_by_process": run["peak_mb_by_process"],
                     "pools": run["pools"]})
        shutil.rmtree(out, ignore_errors=True)
        video.unlink()
    return {"source": str(source), "settings": [*SETTINGS, *settings], "runs": rows,
            "models": ("head only (bench/stand_in_models.py): SyncNet, the motion extractor and the audio "
                       "encoder on each clip's first frames, outputs repeated to its length") if head_only
            else "whole",
            "peak_ratio_longest_over_shortest": round(rows[-1]["peak_mb"] / rows[0]["peak_mb"], 3),
            "goal": "the longest input's peak within 20% of the shortest's"}


def prepared(spans: list[tuple[str, float, float]], cfg: dict) -> list:
    """The pipeline's own CPU stages on the same spans: clips with crops and audio."""
    from pipeline.clip import Clip
    from pipeline.inputs import video_id
    from pipeline.stages import GROUPS, build_stage

    stages = [build_stage(name, cfg) for name in ("probe", *GROUPS["prepare"])]
    clips = []
    for source, start, end in spans:
        (video,) = stages[0]([Clip(source=source, video_id=video_id(source), chunk=0)])
        clip = video.span_clip(start, end)
        for stage in stages[1:]:
            (clip,) = stage([clip])
        assert clip.kept, clip.rejection
        clips.append(clip)
    return clips


def tracking_frames(clips: list, cfg: dict) -> list[np.ndarray]:
    """Each prepared clip's frames at the face stage's working size, decoded once, untimed."""
    from pipeline.stages.faces import FaceStage

    stage = FaceStage(cfg)
    return [np.concatenate(list(stage.frames(clip))) for clip in clips]


def pure_model_compute(clips: list, cfg: dict, frames: list[np.ndarray] | None = None) -> dict:
    """Every model stage on the prepared clips, back to back in this process, timed; with
    ``frames``, also the face detector (the tracker on those frames, as the face stage runs it)."""
    from pipeline.stages import build_stage
    from pipeline.stages.faces import FaceStage

    torch.set_num_threads(int(cfg["ray"]["torch_threads"]))
    stages = [build_stage(name, cfg) for name in ("quality", "sync", "motion", "audio_features")]
    tracker = FaceStage(cfg).tracker if frames is not None else None
    seconds = dict.fromkeys(MODEL_STAGES, 0.0)
    for index, clip in enumerate(clips):
        if tracker is not None:
            start = time.perf_counter()
            tracker.track(frames[index])
            seconds["face_detector"] = seconds.get("face_detector", 0.0) + time.perf_counter() - start
        for stage in stages:
            start = time.perf_counter()
            stage.process(clip)
            seconds[stage.name] += time.perf_counter() - start
    n_frames = sum(c.n_frames for c in clips)
    total = sum(seconds.values())
    return {"frames": n_frames, "seconds": round(total, 2),
            "stage_fps": {k: round(n_frames / v, 2) for k, v in seconds.items() if v > 0},
            "threads": torch.get_num_threads()}


def pure_model_compute_parallel(clips: list, cfg: dict, workers: int,
                                frames: list[np.ndarray] | None = None) -> dict:
    """``pure_model_compute`` split over ``workers`` forked processes, clips dealt round robin."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def part(index: int) -> None:
        queue.put(pure_model_compute(clips[index::workers], cfg,
                                     None if frames is None else frames[index::workers])["seconds"])

    processes = [context.Process(target=part, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for process in processes:
        process.start()
    seconds = [queue.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join()
    return {"workers": workers, "wall_s": round(time.perf_counter() - start, 2), "seconds_per_worker": seconds}


def model_worker_memory(clips: list, cfg: dict, rounds: int) -> list[float]:
    """PSS (MB) of a fresh worker process after building the model stages and after each of
    ``rounds`` passes over ``clips``: flat once warm means nothing accumulates from clip to clip."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def worker() -> None:
        from pipeline.stages import build_stage

        torch.set_num_threads(int(cfg["ray"]["torch_threads"]))
        me = psutil.Process()
        stages = [build_stage(name, cfg) for name in MODEL_STAGES]
        pss = [me.memory_full_info().pss]
        for _ in range(rounds):
            for clip in copy.deepcopy(clips):
                for stage in stages:
                    stage.process(clip)
            pss.append(me.memory_full_info().pss)
        queue.put([round(p / 2**20, 1) for p in pss])

    process = context.Process(target=worker)
    process.start()
    pss = queue.get(timeout=3600)
    process.join()
    return pss


def run_naive(spans: list[tuple[str, float, float]], work: Path, name: str, cfg: dict,
              same_models: bool = False, device: str = "cpu") -> dict:
    """One run of ``bench/naive_prepare.py`` on the pipeline's kept spans, timed as a command."""
    listing, out = work / f"{name}_spans.json", work / f"{name}.json"
    listing.write_text(json.dumps(spans))
    with PeakMemory() as memory:
        start = time.perf_counter()
        command([sys.executable, str(ROOT / "bench" / "naive_prepare.py"), "--spans", str(listing), "--out", str(out),
                 "--max-side", str(cfg["decode"]["max_side"]), "--device", device,
                 *(["--same-models"] if same_models else [])], work / f"{name}.log")
        wall = time.perf_counter() - start
    result = json.loads(out.read_text())
    result.update(command_wall_s=round(wall, 2), video_s_per_command_wall_s=round(result["video_s"] / wall, 4),
                  peak_mb=round(memory.peak / 2**20, 1), peak_mb_by_process=memory.breakdown_mb())
    return report(name, result)


def ratios(result: dict) -> dict[str, float]:
    """The goals' ratios, all from runs of this one bench run."""
    two, stride2 = result["pipeline"][0], result["pipeline"][2]
    pure = result["pure_model_compute"]
    pure_parallel, with_faces = pure["parallel"], pure["parallel_with_face_detector"]
    baseline, equal_work = result["naive"], result["naive_same_models"]

    def over(run: dict, key: str, other: dict, other_key: str) -> float:
        return round(run[key] / other[other_key], 3)

    out = {
        # processing (after the CPU workers are up) against the models alone on the same cores,
        # and against the single-process compute divided by the model workers
        "processing_over_pure_compute_2cpus": round(two["processing_s"] / pure_parallel["wall_s"], 3),
        "processing_over_ideal_pure_compute_2cpus": round(two["processing_s"] / (pure["seconds"] / two["model_workers"]), 3),
        "wall_over_pure_compute_2cpus": round(two["wall_s"] / pure_parallel["wall_s"], 3),
        # the same with the face detector counted as a model (it is one: a Haar cascade here,
        # SCRFD with faces.backend=insightface), so what is left is the pipeline's own overhead:
        # decoding, crops, Ray, scheduling, start-up
        "processing_over_pure_compute_with_face_detector_2cpus": round(two["processing_s"] / with_faces["wall_s"], 3),
        "wall_over_pure_compute_with_face_detector_2cpus": round(two["wall_s"] / with_faces["wall_s"], 3),
        # end to end: both commands' wall time, from Python's start to exit
        "throughput_over_naive_2cpus": over(two, "video_s_per_wall_s", baseline, "video_s_per_command_wall_s"),
        "throughput_over_naive_same_models_2cpus": over(two, "video_s_per_wall_s", equal_work, "video_s_per_command_wall_s"),
        "sync_stride2_throughput_over_naive_2cpus": over(stride2, "video_s_per_wall_s", baseline, "video_s_per_command_wall_s"),
        # once running: the pipeline's processing time against the naive loop's work time
        "processing_throughput_over_naive_2cpus": over(two, "video_s_per_processing_s", baseline, "video_s_per_wall_s"),
        "processing_throughput_over_naive_same_models_2cpus":
            over(two, "video_s_per_processing_s", equal_work, "video_s_per_wall_s"),
    }
    if "longer_input" in result:
        longer, longer_naive = result["longer_input"]["pipeline"], result["longer_input"]["naive"]
        out["throughput_over_naive_3x_input_2cpus"] = \
            over(longer, "video_s_per_wall_s", longer_naive, "video_s_per_command_wall_s")
        # the pure compute of the 3x input taken as that of the 28 s input times the frame ratio
        # (the same content looped; not run again)
        pure_3x = with_faces["wall_s"] * longer["frames"] / two["frames"]
        out["wall_over_pure_compute_with_face_detector_3x_input_2cpus"] = round(longer["wall_s"] / pure_3x, 3)
        out["processing_over_pure_compute_with_face_detector_3x_input_2cpus"] = \
            round(longer["processing_s"] / pure_3x, 3)
    return out


def gpu_longer_input(videos: list[Path], work: Path, cfg: dict, loops: int, quarter_shares: bool) -> dict:
    """On a GPU machine, the job with its own sizing (and, with ``quarter_shares``, with four model
    actors at 0.25 GPU) against the naive way on the GPU, on every input looped ``loops`` times:
    how the ratio grows once the fixed start-up is spread over minutes of video."""
    looped = [loop_video(v, work / "inputs" / f"{v.stem}_x{loops}.mp4", loops) for v in videos]
    runs = {"pipeline": run_pipeline(looped, work, f"gpu_{loops}x_input", None)}
    if quarter_shares:
        runs["pipeline_quarter_shares"] = run_pipeline(looped, work, f"gpu_quarter_shares_{loops}x_input", None,
                                                       ("ray.model_worker_gpus=0.25",))
    naive = run_naive(runs["pipeline"]["spans"], work, f"naive_gpu_{loops}x_input", cfg, device="cuda")
    return {"loops": loops, "longer_input": {**runs, "naive": naive},
            "ratios": {f"throughput_over_naive_{r['name']}":
                       round(r["video_s_per_wall_s"] / naive["video_s_per_command_wall_s"], 3) for r in runs.values()}}


def gpu_bench(videos: list[Path], work: Path, cfg: dict, quick: bool, loops: int = 3) -> dict:
    """On a GPU machine: the job with its own sizing (every core; one model actor per GPU, and
    four sharing it at 0.25 GPU each) against the naive way on the GPU (the extractor at batch 1
    under fp16 autocast), on the inputs and, unless ``quick``, on them looped ``loops`` times."""
    runs = [run_pipeline(videos, work, "gpu", None),
            run_pipeline(videos, work, "gpu_quarter_shares", None, ("ray.model_worker_gpus=0.25",))]
    spans = runs[0]["spans"]
    baseline = run_naive(spans, work, "naive_gpu", cfg, device="cuda")
    equal_work = run_naive(spans, work, "naive_gpu_same_models", cfg, True, device="cuda")
    result = {"loops": loops, "pipeline": runs, "naive": baseline, "naive_same_models": equal_work,
              "ratios": {}}
    for r in runs:
        result["ratios"][f"throughput_over_naive_{r['name']}"] = \
            round(r["video_s_per_wall_s"] / baseline["video_s_per_command_wall_s"], 3)
        result["ratios"][f"throughput_over_naive_same_models_{r['name']}"] = \
            round(r["video_s_per_wall_s"] / equal_work["video_s_per_command_wall_s"], 3)
    if not quick:
        longer = gpu_longer_input(videos, work, cfg, loops, quarter_shares=True)
        result["longer_input"] = longer["longer_input"]
        result["ratios"].update(longer["ratios"])
    return result


def markdown(result: dict) -> str:
    runs = result.get("pipeline", [])  # absent with --longer-only
    lines = ["| run | video s | wall s | processing s | video s / wall s | video s / processing s | "
             "model share | motion fps | peak memory MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        where = f"{r['model_workers']} model actors on {r['gpus']} GPU, " if r.get("gpus") else ""
        lines.append(f"| pipeline, {where}{r['ray_cpus']} Ray CPU{'s' if r['ray_cpus'] > 1 else ''} ({r['name']}) | "
                     f"{r['video_s']} | {r['wall_s']} | {r['processing_s']} | {r['video_s_per_wall_s']} | "
                     f"{r['video_s_per_processing_s']} | {r['model_share_of_processing']} | "
                     f"{r['stage_fps'].get('motion', '')} | {r['peak_mb']} |")
    for key, label in (("naive", "naive: whole video in memory, extractor at batch 1, audio features"),
                       ("naive_same_models", "naive with the pipeline's filter models too (equal work)")):
        if key not in result:
            continue
        n = result[key]
        lines.append(f"| {label} | {n['video_s']} | {n['command_wall_s']} | {n['wall_s']} | "
                     f"{n['video_s_per_command_wall_s']} | {n['video_s_per_wall_s']} | | | {n['peak_mb']} |")
    p = result.get("pure_model_compute")
    if p is None:  # the GPU bench
        return "\n".join(lines + longer_rows(result))
    lines.append(f"| pure model compute, same frames, one process ({p['threads']} thread) | | {p['seconds']} | | | | "
                 f"1.0 | {p['stage_fps'].get('motion', '')} | |")
    q = p["parallel"]
    lines.append(f"| pure model compute, same frames, {q['workers']} processes | | {q['wall_s']} | | | | 1.0 | | |")
    q = p["parallel_with_face_detector"]
    lines.append(f"| the same with the face detector, {q['workers']} processes | | {q['wall_s']} | | | | 1.0 | | |")
    lines += longer_rows(result)
    for row in result.get("memory_vs_length", []):
        lines.append(f"| memory: {row['run']}, one {row['input_s']} s video | {row['video_s']} | | | | | | | "
                     f"{row['peak_mb']} |")
    return "\n".join(lines)


def longer_rows(result: dict) -> list[str]:
    if "longer_input" not in result:
        return []
    runs = [r for key, r in result["longer_input"].items() if key.startswith("pipeline")]
    n, loops = result["longer_input"]["naive"], result.get("loops", 3)
    return [f"| pipeline, {r['ray_cpus']} Ray CPUs, every input {loops}x as long ({r['name']}) | {r['video_s']} | "
            f"{r['wall_s']} | {r['processing_s']} | {r['video_s_per_wall_s']} | {r['video_s_per_processing_s']} | "
            f"{r['model_share_of_processing']} | {r['stage_fps'].get('motion', '')} | {r['peak_mb']} |"
            for r in runs] + [
            f"| naive, every input {loops}x as long | {n['video_s']} | {n['command_wall_s']} | "
            f"{n['wall_s']} | {n['video_s_per_command_wall_s']} | {n['video_s_per_wall_s']} | | | {n['peak_mb']} |"]


def against_limit(run: dict, cores: int) -> dict:
    """A run's wall time against the machine's limit, work / cores, where the work is the CPU
    seconds of every actor's calls (their busy time at one thread each: a time-shared actor's
    wall time stretches, its CPU time does not); busy fractions are of the scheduler's loop."""
    activity = run["activity"]
    work = activity["work_cpu_s"]
    return {
        "pools": run["pools"], "cores": cores, "clips": run["clips"], "frames": run["frames"],
        "video_s": run["video_s"], "work_cpu_s": work, "limit_s": round(work / cores, 2),
        "wall_s": run["wall_s"], "wall_over_limit": round(run["wall_s"] / (work / cores), 3),
        "startup_s": run["startup_s"], "processing_s": run["processing_s"],
        "scheduler_wall_s": activity["wall_s"], "scheduler_wall_over_limit": activity["wall_over_work_per_core"],
        # the model actors load their models inside the scheduler's loop (the CPU actors before it):
        # the loop against the cores' limit with that loading counted as work too
        "scheduler_wall_over_limit_with_model_loading": round(
            activity["wall_s"] / ((work + activity["model"]["startup_cpu_s"]) / cores), 3),
        # the whole run against the cores' limit with every actor's start-up (imports, model loading)
        # counted as work too: what is left is Ray's start, the Python start and the pipeline's tail
        "wall_over_limit_with_model_loading": round(run["wall_s"] / (
            (work + activity["model"]["startup_cpu_s"] + activity["cpu"]["startup_cpu_s"]) / cores), 3),
        "busy_fraction": {pool: activity[pool]["busy_fraction"] for pool in ("cpu", "model")},
        "busy_s": {pool: activity[pool]["busy_s"] for pool in ("cpu", "model")},
        "cpu_s": {pool: activity[pool]["cpu_s"] for pool in ("cpu", "model")},
        "actor_startup_cpu_s": {pool: activity[pool]["startup_cpu_s"] for pool in ("cpu", "model")},
        "cpu_stage_share": activity["cpu_stage_share"], "peak_mb": run["peak_mb"],
    }


def sizing_bench(videos: list[Path], work: Path, cpus: int, loops: int = 5) -> dict:
    """The old CPU-only default sizing (given explicitly) and the new one (the job's own ``auto``)
    on the same input, one after the other, then the new one on every input looped ``loops``
    times (the fixed start spread over more video): wall time over work / cores for each. The
    models' ONNX files are exported by a first, untimed run (a user's first run does it once)."""
    run_pipeline(videos[:1], work, "sizing_warm_up", cpus, job_sizing=True)
    before = run_pipeline(videos, work, "sizing_before", cpus, old_cpu_sizing(cpus), job_sizing=True)
    after = run_pipeline(videos, work, "sizing_after", cpus, job_sizing=True)
    looped = [loop_video(v, work / "inputs" / f"{v.stem}_x{loops}.mp4", loops) for v in videos]
    longer = run_pipeline(looped, work, f"sizing_after_{loops}x_input", cpus, job_sizing=True)
    return {"cores": cpus, "inputs": [str(v) for v in videos], "settings": list(SETTINGS),
            "goal": "wall_over_limit <= 1.15 at the default sizing",
            "before": {"sizing": "old default: " + " ".join(old_cpu_sizing(cpus)), **against_limit(before, cpus)},
            "after": {"sizing": "default (auto)", **against_limit(after, cpus)},
            "after_longer_input": {"sizing": f"default (auto), every input looped {loops}x",
                                   **against_limit(longer, cpus)}}


def sizing_markdown(result: dict) -> str:
    lines = ["| sizing | actors (CPU x share, model x share) | video s | work CPU-s | wall s | limit s | "
             "wall / limit | wall / limit, loading counted | loop / limit | busy CPU actors | busy model actors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for key in ("before", "after", "after_longer_input"):
        if key not in result:
            continue
        r = result[key]
        p = r["pools"]
        lines.append(f"| {key}: {r['sizing']} | {p['cpu_workers']} x {p['cpu_worker_cpus']:g}, {p['model_workers']} x "
                     f"{p['model_worker_cpus']:g} | {r['video_s']} | {r['work_cpu_s']} | {r['wall_s']} | {r['limit_s']} | "
                     f"{r['wall_over_limit']} | {r.get('wall_over_limit_with_model_loading', '')} | "
                     f"{r['scheduler_wall_over_limit']} | {r['busy_fraction']['cpu']} | {r['busy_fraction']['model']} |")
    return "\n".join(lines)


def cpu_bench(videos: list[Path], work: Path, cfg: dict, quick: bool) -> dict:
    """The CPU runs of the module docstring."""
    runs = [run_pipeline(videos, work, "two_cpus", 2), run_pipeline(videos, work, "one_cpu", 1),
            run_pipeline(videos, work, "two_cpus_sync_stride2", 2, ("filters.sync.window_stride=2",))]
    two = runs[0]
    spans = two["spans"]
    clips = prepared(spans, cfg)
    pure_parallel = pure_model_compute_parallel(clips, cfg, two["model_workers"])
    frames = tracking_frames(clips, cfg)
    with_faces = pure_model_compute_parallel(copy.deepcopy(clips), cfg, two["model_workers"], frames)
    pure = pure_model_compute(copy.deepcopy(clips), cfg)
    pure["parallel"] = pure_parallel
    pure["parallel_with_face_detector"] = with_faces
    del frames
    result = {"pipeline": runs, "pure_model_compute": pure, "naive": run_naive(spans, work, "naive", cfg),
              "naive_same_models": run_naive(spans, work, "naive_same_models", cfg, same_models=True)}
    if not quick:
        looped = [loop_video(v, work / "inputs" / f"{v.stem}_x3.mp4", 3) for v in videos]
        # Throughput with the fixed start-up (Ray, workers, models) spread over 3x the video.
        longer = run_pipeline(looped, work, "two_cpus_3x_input", 2)
        longer_naive = run_naive(longer["spans"], work, "naive_3x_input", cfg)
        result["longer_input"] = {"pipeline": longer, "naive": longer_naive}
        long_video = loop_video(videos[0], work / "inputs" / f"{videos[0].stem}_x10.mp4", 10)
        short_run = run_pipeline(videos[:1], work, "memory_short", 2)
        long_run = run_pipeline([long_video], work, "memory_long", 2)
        naive_short = run_naive(short_run["spans"], work, "naive_memory_short", cfg)
        naive_long = run_naive(long_run["spans"], work, "naive_memory_long", cfg)
        lengths = {"short": probe(str(videos[0])).duration_s, "long": probe(str(long_video)).duration_s}
        result["memory_vs_length"] = [
            {"run": run, "input_s": round(lengths[length], 2), "video_s": r["video_s"], "peak_mb": r["peak_mb"],
             "peak_mb_by_process": r.get("peak_mb_by_process")}
            for run, length, r in (("pipeline", "short", short_run), ("pipeline", "long", long_run),
                                   ("naive", "short", naive_short), ("naive", "long", naive_long))]
        # One model worker's memory over many clips: the pipeline's growth with length, if any,
        # would have to come from something kept from clip to clip.
        result["model_worker_pss_mb_over_clips"] = {
            "clips_per_round": 2, "after_build_then_each_round": model_worker_memory(clips[:2], cfg, rounds=8)}
        result["default_sizing"] = sizing_bench(videos, work, 2)
    result["ratios"] = ratios(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 3x-input and memory-versus-length runs")
    parser.add_argument("--gpu", action="store_true",
                        help="on a GPU machine: the job with its own sizing against the naive way on the GPU")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"result file (default {RESULTS.relative_to(ROOT)}, with --gpu {RESULTS_GPU.relative_to(ROOT)})")
    parser.add_argument("--loops", type=int, default=3, help="times every input is looped for the longer-input runs")
    parser.add_argument("--longer-only", action="store_true",
                        help="with --gpu: only the job and the naive way on the looped inputs")
    parser.add_argument("--sizing-loops", type=int, default=5,
                        help="with --sizing: times every input is looped for its longer-input run")
    parser.add_argument("--sizing", action="store_true",
                        help="only the old and the new default CPU sizing on 2 cores, added to the result "
                             "file as default_sizing (its other keys are kept)")
    parser.add_argument("--memory-minutes", type=float, nargs="+", default=None,
                        help="only the peak memory on one real clip looped to each of these lengths, added "
                             "to the result file as memory_vs_hours (its other keys are kept)")
    parser.add_argument("--head-only", action="store_true",
                        help="with --memory-minutes: the models on each clip's first frames only, their "
                             "outputs repeated to the clip's length (bench/stand_in_models.py)")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: PyTorch sees no CUDA device here")
    cfg = to_dict(load_config("pipeline", list(SETTINGS) + ["models.audio_encoder.random_config=null"]))
    # OpenCV on the model workers' thread count in this process: its thread pool does not survive
    # a fork, and the pure-compute runs fork (the naive command sets its own).
    cv2.setNumThreads(int(cfg["ray"]["torch_threads"]))
    cfg["weights"]["random"] = True
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        videos = inputs(work / "inputs")
        if args.memory_minutes:
            out = args.out or (RESULTS_GPU if args.gpu else RESULTS)
            kept = json.loads(out.read_text()) if out.exists() else {"bench": "pipeline"}
            kept["memory_vs_hours"] = {"machine": platform.platform(), "cpu_count": os.cpu_count(),
                                       "device": torch.cuda.get_device_name() if args.gpu else "cpu",
                                       **memory_vs_hours(max(videos, key=lambda v: probe(str(v)).duration_s),
                                                         work, sorted(args.memory_minutes), args.gpu,
                                                         args.head_only)}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(kept, indent=2) + "\n")
            print(json.dumps({k: v for k, v in kept["memory_vs_hours"].items() if k != "runs"}, indent=2))
            for row in kept["memory_vs_hours"]["runs"]:
                print(row)
            return
        if args.sizing:
            out = args.out or RESULTS
            kept = json.loads(out.read_text()) if out.exists() else {"bench": "pipeline"}
            kept["default_sizing"] = {"machine": platform.platform(), "cpu_count": os.cpu_count(),
                                      **sizing_bench(videos, work, 2, args.sizing_loops)}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(kept, indent=2) + "\n")
            print(sizing_markdown(kept["default_sizing"]))
            return
        result = {
            "bench": "pipeline", "machine": platform.platform(), "cpu_count": os.cpu_count(),
            "device": torch.cuda.get_device_name() if args.gpu else "cpu", "torch": torch.__version__,
            "weights": "random (official architectures)", "inputs": [str(v) for v in videos],
            "settings": list(SETTINGS),
            "memory": "peak summed PSS (proportional set size) of the command's processes (not the bench's), MB",
            **(gpu_longer_input(videos, work, cfg, args.loops, quarter_shares=False) if args.gpu and args.longer_only
               else gpu_bench(videos, work, cfg, args.quick, args.loops) if args.gpu
               else cpu_bench(videos, work, cfg, args.quick)),
        }
        out = args.out or (RESULTS_GPU if args.gpu else RESULTS)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(markdown(result))
        if "default_sizing" in result:
            print(sizing_markdown(result["default_sizing"]))
        print(json.dumps(result["ratios"], indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
