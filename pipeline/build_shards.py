"""Build filtered, feature-cached WebDataset shards from raw talking-head videos, with Ray.

    python pipeline/build_shards.py --input VIDEOS --output OUT [--address ADDR] [--random-weights]
        [--weights-dir D] [--config configs/pipeline.yaml] [key=value ...]
    python pipeline/build_shards.py --demo --random-weights      # the sample clips, local Ray

``--input`` is a folder (searched recursively) or a .txt/.csv/.parquet list of paths or URIs
(``pipeline.inputs``); ``--output`` a local folder or a URI. Without ``--address`` (or
``RAY_ADDRESS``, which ``ray job submit`` sets) the job starts a local Ray itself. The same command
after a crash, or on a grown input set, processes only what is missing.

Exit status: 0 when every chunk is done; 2 for a configuration the job cannot run with (missing
weights, actors that fit no node, a cluster that does not answer); 3 when some chunks hold items
that failed for infrastructure reasons after their retries (``pipeline.incomplete``) or the run
stopped at ``run.error_budget``: the same command redoes them.

The driver is thin: it plans work units (``pipeline.plan``), starts the two actor pools
(``pipeline.workers``), lets ``pipeline.scheduler`` feed them, writes each finished chunk
(``pipeline.chunk_writer``), then gathers the manifests, the training statistics and ``run.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script (ray job submit runs it from the working dir)
    sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import asdict  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pipeline import fingerprint  # noqa: E402
from pipeline.chunk_writer import write_chunk  # noqa: E402
from pipeline.incomplete import (EXIT_INCOMPLETE, ErrorBudgetExceeded, Retryable, clear_incomplete,  # noqa: E402
                                 read_incomplete, rerun_command, summary_line, write_incomplete)
from configs import load_config, save_config, to_dict  # noqa: E402
from configs.ray_session import (ADDRESS_ENV, DEFAULT_CONNECT_TIMEOUT_S, RayAddressError,  # noqa: E402
                                 address_from_environment, join_cluster, start_local)
from pipeline.identity_guard import GroupShareError  # noqa: E402
from pipeline.inputs import InputError, endpoint_settings, list_inputs  # noqa: E402
from pipeline.speaker_pattern import label_speakers  # noqa: E402
from pipeline.manifest_writer import CLIPS_FILE, VIDEOS_FILE, RunMeta, consolidate  # noqa: E402
from manifests import thresholds  # noqa: E402
from pipeline import demo  # noqa: E402
from pipeline.media import media_dir  # noqa: E402
from pipeline.outdir import OutputDir, done_name  # noqa: E402
from pipeline.plan import Chunk, make_plan  # noqa: E402
from pipeline.progress import Progress, summary_lines  # noqa: E402
from pipeline.sizing import NodeCapacity, PoolSizes, SizingError, cluster_pool_sizes  # noqa: E402
from pipeline.spill import ClipSpill  # noqa: E402
from pipeline.stats import merged_stats  # noqa: E402
from shards.split import group_sizes  # noqa: E402
from shards.stats import STATS_FILE  # noqa: E402
from models.weights import MissingWeightsError, require, warn_random  # noqa: E402

log = logging.getLogger("build_shards")

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"  # the first run's settings
RUN_CONFIGS = "config.runs"  # each later run's effective config, one file per run
DEMO_OUTPUT = "out/demo"
WORKING_DIR_EXCLUDES = [".venv", ".git", "out", "runs", "weights", "bench/results", "**/__pycache__"]


# -------------------------------------------------------------------------------------------------
# Configuration and weights


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="build_shards", description=__doc__.split("\n")[0])
    parser.add_argument("--input", help="folder or .txt/.csv/.parquet list of videos (local or URI)")
    parser.add_argument("--output", help="output folder (local or URI)")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, "
                        "else a local Ray started here)")
    parser.add_argument("--config", default="pipeline", help="config name under configs/ or a path")
    parser.add_argument("--weights-dir", default=None, help="weights folder (default $TH_WEIGHTS_DIR or ./weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights of the official architectures: smoke runs only, never real data")
    parser.add_argument("--demo", action="store_true", help=f"build shards from the sample clips in "
                        f"{media_dir()} (synthesised clips when absent) into --output (default {DEMO_OUTPUT})")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_intermixed_args(argv)
    if args.demo:
        args.output = args.output or DEMO_OUTPUT
    elif not args.input or not args.output:
        parser.error("--input and --output are required (or use --demo)")
    return args


def build_config(args: argparse.Namespace) -> DictConfig:
    overrides = list(args.overrides)
    if args.demo:
        overrides = [*demo.OVERRIDES, *(demo.RANDOM_OVERRIDES if args.random_weights else ()), *overrides]
    cfg = load_config(args.config, overrides)
    if args.random_weights:
        cfg.weights.random = True
    if args.weights_dir:
        cfg.weights.dir = str(Path(args.weights_dir).resolve())
    cfg.ray.address = args.address or cfg.ray.address or None
    return cfg


def required_weights(cfg: DictConfig) -> list[str]:
    """Registry entries this config needs (none of the random-weight models)."""
    names = []
    if not cfg.weights.random:
        models = cfg.models
        if not models.motion_extractor.weights:
            names.append("liveportrait_motion_extractor")
        if not models.syncnet.weights:
            names.append("syncnet_v2")
        if not models.audio_encoder.weights:
            names.append(str(models.audio_encoder.name))
    if cfg.faces.backend == "insightface":
        names += ["insightface_det_10g", "insightface_2d106det"]
    if cfg.filters.quality.metric == "qalign" and not cfg.weights.random:
        names.append("qalign_one_align")
    return names


def check_weights(cfg: DictConfig) -> None:
    """Fail before starting anything when a model file is missing (one error naming them all)."""
    require(required_weights(cfg), cfg.weights.dir)
    if cfg.weights.random:
        for name in ("liveportrait_motion_extractor", "syncnet_v2", str(cfg.models.audio_encoder.name)):
            warn_random(name)
        if cfg.filters.quality.metric == "qalign":
            warn_random(f"qalign_one_align ({cfg.models.quality.random_config} size)")


# -------------------------------------------------------------------------------------------------
# Ray


def start_ray(cfg: DictConfig) -> bool:
    """Join the cluster named by --address or RAY_ADDRESS, or start a new local Ray (never the
    cluster the machine last recorded); returns whether this call connected (a process that
    already called ``ray.init`` keeps its own session). A cluster that does not answer within
    ``ray.connect_timeout_s`` is RayAddressError."""
    import ray

    if ray.is_initialized():
        return False
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    timeout_s = float(cfg.ray.get("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S))
    if cfg.ray.address:  # the cluster's workers get this process's object-store endpoints, not credentials
        join_cluster(cfg.ray.address, timeout_s, "--address / ray.address", log_to_driver=True,
                     runtime_env={"working_dir": str(REPO_ROOT), "excludes": WORKING_DIR_EXCLUDES,
                                  "env_vars": endpoint_settings()})
    elif address_from_environment():  # inside `ray job submit`: the job's working dir is already set
        join_cluster(None, timeout_s, ADDRESS_ENV, log_to_driver=True)
    else:
        start_local(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=False,
                    log_to_driver=True, _temp_dir=cfg.ray.temp_dir,
                    runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    return True


def cluster_info(cfg: DictConfig) -> dict[str, Any]:
    """The cluster's address and resources, and the actor pools sized for it (``pipeline.sizing``)."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local"
    resources = {k: float(v) for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU", "memory")}
    nodes = [NodeCapacity.of(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    sizes = cluster_pool_sizes(cfg.ray, nodes, local=address == "local")
    log.info("actors: %d CPU workers (%g CPU each), %d model workers (%g CPU, %g GPU each)", sizes.cpu_workers,
             sizes.cpu_worker_cpus, sizes.model_workers, sizes.model_worker_cpus, sizes.model_worker_gpus)
    return {"address": address, "resources": resources, "nodes": len(nodes), "pools": sizes.as_dict()}


def worker_classes(workers: tuple[type, type] | None) -> tuple[type, type]:
    """(CPU worker class, model worker class): ``pipeline.workers``' unless given (the fault tests
    give subclasses that fail on purpose)."""
    if workers is not None:
        return workers
    from pipeline.workers import CpuWorker, ModelWorker

    return CpuWorker, ModelWorker


def start_model_workers(cfg: DictConfig, sizes: PoolSizes, cls: type) -> tuple[list, list]:
    """The model actors and their ``describe`` calls, not waited for: they load their models (a
    large model takes a minute) while the CPU workers start and run the identity pass."""
    import ray

    plain = to_dict(cfg)
    actors = [ray.remote(cls).options(num_cpus=sizes.model_worker_cpus, num_gpus=sizes.model_worker_gpus,
                                              max_restarts=-1, max_task_retries=0)
              .remote(plain) for _ in range(sizes.model_workers)]
    return actors, [a.describe.remote() for a in actors]


def start_cpu_workers(cfg: DictConfig, sizes: PoolSizes, cls: type) -> list:
    """The CPU actors, waited for until Ray has placed them all (``ray.placement_timeout_s``)."""
    import ray

    from pipeline.scheduler import PlacementError

    plain = to_dict(cfg)
    actors = [ray.remote(cls).options(num_cpus=sizes.cpu_worker_cpus, max_restarts=-1, max_task_retries=0)
              .remote(plain) for _ in range(sizes.cpu_workers)]
    timeout_s = float(cfg.ray.placement_timeout_s)
    ready, pending = ray.wait([a.__ray_ready__.remote() for a in actors], num_returns=len(actors), timeout=timeout_s)
    if pending:
        for actor in actors:
            ray.kill(actor)
        raise PlacementError(f"{len(pending)} of {len(actors)} CPU actors ({sizes.cpu_worker_cpus:g} CPU each) "
                             f"were not up after {timeout_s:g} s (ray.placement_timeout_s): no node has room "
                             f"for that shape; lower ray.cpu_workers or ray.cpu_worker_cpus")
    return actors


def start_pools(cpu: list, model_actors: list, model_descriptions: list, sizes: PoolSizes):
    """The CPU and model actor pools and a call that returns {stage: model description}.

    The CPU workers are waited for; the model workers (:func:`start_model_workers`) get work once up.
    Building a worker loads its models: a bad file or config fails here, or (for the model
    workers) at their first use in the scheduler, which stops the run the same way.
    """
    import ray

    from pipeline.scheduler import ActorPool

    cpu_descriptions = ray.get([a.describe.remote() for a in cpu])

    def models() -> dict[str, dict[str, str]]:
        return {k: v for d in cpu_descriptions + ray.get(model_descriptions) for k, v in d.items()}

    return (ActorPool("cpu", cpu, shape={"CPU": sizes.cpu_worker_cpus}),
            ActorPool("model", model_actors, starting=model_descriptions,
                      shape={"CPU": sizes.model_worker_cpus, "GPU": sizes.model_worker_gpus}), models)


# -------------------------------------------------------------------------------------------------
# The run


def run_meta(cfg: DictConfig, models: dict[str, dict[str, str]]) -> RunMeta:
    return RunMeta(
        thresholds=thresholds.record(to_dict(cfg.filters), models.get("quality", {}).get("lower_better")),
        model_ids={stage: d["model_id"] for stage, d in sorted(models.items())},
        weight_hashes={stage: d["weight_id"] for stage, d in sorted(models.items())},
        random_weights=bool(cfg.weights.random),
    )


def ungrouped_chunks(chunks: list[Chunk], identities: dict[str, str], enabled: bool) -> dict[int, list[Retryable]]:
    """Chunks with a video the identity pass could not embed for infrastructure reasons: they
    cannot be split yet, so they wait for the next run."""
    if not enabled:
        return {}
    waiting: dict[int, list[Retryable]] = {}
    for chunk in chunks:
        for video in chunk.videos:
            if video.video_id not in identities:
                waiting.setdefault(chunk.index, []).append(Retryable(
                    "identity", video.source, None, None, "identity",
                    "its face embeddings failed for infrastructure reasons (see the log)", 1))
    return waiting


SPILL_FETCH_TIMEOUT_S = 120.0  # seconds a finished clip's record may take to reach the driver


def process_chunks(cfg: DictConfig, out: OutputDir, chunks: list[Chunk],
                   workers: tuple[type, type] | None = None,
                   done_hashes: dict[str, str] | None = None,
                   commit: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the pending chunks on Ray; returns the cluster's description and this run's timings
    (and ``stopped``, the reason, when the error budget stopped it). The weights the workers
    loaded are checked against the output's fingerprint before the first chunk is written
    (``done_hashes``: those an older output's done chunks recorded). ``commit`` writes the run's
    plan, fingerprint and config once the identity pass has passed its guard, before any chunk."""
    import ray

    from pipeline.scheduler import Scheduler

    started = time.monotonic()
    connected = start_ray(cfg)
    this_run: dict[str, Any] = {}
    try:
        this_run["cluster"] = cluster_info(cfg)
        from pipeline.identity import embed_on_workers, identity_groups

        sizes = PoolSizes(**this_run["cluster"]["pools"])
        cpu_class, model_class = worker_classes(workers)
        model_actors, model_descriptions = start_model_workers(cfg, sizes, model_class)
        cpu_actors: list = []
        try:
            cpu_actors = start_cpu_workers(cfg, sizes, cpu_class)
            # Before any clip is written (the split needs every face), on the CPU workers while
            # the model workers load.
            identities = identity_groups(cfg, out, [v for c in chunks for v in c.videos],
                                         embed_on_workers(cpu_actors, max(1, int(cfg.work.videos_per_chunk))))
            if commit is not None:
                commit()
            cpu, model, models = start_pools(cpu_actors, model_actors, model_descriptions, sizes)
        except BaseException:
            for actor in model_actors + cpu_actors:
                ray.kill(actor)
            raise
        waiting = ungrouped_chunks(chunks, identities.groups, cfg.identity.backend not in ("none", None))
        for index, items in waiting.items():
            write_incomplete(out, index, items)
        pending = [c.index for c in chunks]  # their journals stay (pipeline.spill)
        chunks = [c for c in chunks if c.index not in waiting]
        this_run["startup_s"] = time.monotonic() - started
        meta: list[RunMeta] = []  # filled once the model workers are up
        progress = Progress(sum(len(c.videos) for c in chunks), enabled=bool(cfg.progress.enabled))

        def finish(state) -> None:
            def fetch(clip):
                return spill.get(state.results[clip.clip_id])

            if state.retryable:  # no done file: the next run redoes what failed (pipeline.spill)
                write_incomplete(out, state.chunk.index, state.retryable)
                log.warning("chunk %d incomplete: %d items failed for infrastructure reasons",
                            state.chunk.index, len(state.retryable))
                return
            if not meta:
                first = run_meta(cfg, models())
                fingerprint.check_weights(out, first.weight_hashes, done_hashes)
                meta.append(first)
            done = write_chunk(out, state.chunk.index, state.videos, state.clips, fetch, meta[0], cfg,
                               identities.groups)
            clear_incomplete(out, state.chunk.index)
            spill.drop_chunk(state.chunk.index)
            log.info("chunk %d done: %d clips kept of %d", state.chunk.index, done["kept"], done["clips"])

        # A clip record lost with its node may never come back: a bounded wait turns it into a
        # timeout, which the chunk writer treats as lost (the chunk prepares it again).
        spill = ClipSpill(out, lambda ref: ray.get(ref, timeout=SPILL_FETCH_TIMEOUT_S), pending)
        scheduler = Scheduler(cfg, cpu, model, finish, progress, journal=spill, left_out=identities.left_out)
        try:
            scheduler.run(chunks)
            this_run["processing_s"] = time.monotonic() - started - this_run["startup_s"]
            this_run["resumed"] = scheduler.resumed
        except ErrorBudgetExceeded as exc:
            log.error("%s", exc)
            this_run["stopped"] = str(exc)
            for state in scheduler.unfinished():
                if state.retryable:
                    write_incomplete(out, state.chunk.index, state.retryable)
        finally:
            spill.close()
            progress.close()
            for actor in cpu.actors + model.actors:
                ray.kill(actor)
    finally:
        if connected:
            ray.shutdown()
    return this_run


def audio_encoder_record(cfg: DictConfig, model_id: str | None = None) -> dict[str, Any]:
    """Which encoder made the audio features, and with which input settings (in ``model_id``), so a
    checkpoint trained on them encodes new speech the same way."""
    enc = cfg.models.audio_encoder
    if cfg.weights.random:
        weights = "random" + (f":{enc.random_config}" if enc.random_config else "")
    else:
        weights = str(enc.weights) if enc.weights else None
    record = {"name": str(enc.name), "weights": weights}
    if model_id:
        record["model_id"] = model_id
    return record


def driver_usage() -> dict[str, float]:
    """This process's peak resident memory and CPU time so far (its threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def finalize(cfg: DictConfig, out: OutputDir, chunks: list[Chunk], wall_s: float,
             this_run: dict[str, Any]) -> dict[str, Any]:
    """Gather every done chunk into the manifests, stats.json and run.json (last)."""
    started = time.monotonic()
    done = {c.index: json.loads(out.read_bytes(done_name(c.index))) for c in chunks
            if out.exists(done_name(c.index))}
    videos, clips = consolidate(out, sorted(done))
    kept = clips.filter(clips.column("kept"))
    train_shards: dict[int, list[str]] = {}
    for shard, split, chunk in zip(kept.column("shard").to_pylist(), kept.column("split").to_pylist(),
                                   kept.column("chunk").to_pylist()):
        if split == "train":
            train_shards.setdefault(chunk, []).append(shard)
    stats = merged_stats(out, done, train_shards)
    first = next(iter(done.values()), {})
    stats["audio_feat"]["encoder"] = audio_encoder_record(cfg, first.get("model_ids", {}).get("audio_features"))
    out.write_bytes(STATS_FILE, json.dumps(stats).encode())

    seconds: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    rejections: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for d in done.values():
        seconds.update(d["stage_seconds"])
        frames.update(d["stage_frames"])
        rejections.update(d["clip_rejections"])
        failures.update(d["video_failures"])
    run = {
        "format_version": 1,
        "config": to_dict(cfg),
        "model_ids": first.get("model_ids", {}),
        "weight_hashes": first.get("weight_hashes", {}),
        "random_weights": bool(cfg.weights.random) or any(d.get("random_weights") for d in done.values()),
        "chunks": sorted(done),
        "counts": {
            "chunks": len(done), "shards": sum(len(d["shards"]) for d in done.values()),
            "videos": videos.num_rows, "videos_failed": sum(d["videos_failed"] for d in done.values()),
            "clips": clips.num_rows, "kept": kept.num_rows, "rejected": clips.num_rows - kept.num_rows,
            "kept_frames": sum(d["kept_frames"] for d in done.values()),
            "clip_rejections": dict(sorted(rejections.items())),
            "video_failures": dict(sorted(failures.items())),
        },
        "hours": {"input": sum(d["video_seconds"] for d in done.values()) / 3600,
                  "kept": sum(d["kept_seconds"] for d in done.values()) / 3600},
        "timings": {
            "total_s": wall_s,
            "startup_s": this_run.get("startup_s", 0.0),
            "processing_s": this_run.get("processing_s", 0.0),
            "planning_s": this_run.get("planning_s", 0.0),  # listing the inputs, the fingerprint, the plan
            "finalize_s": time.monotonic() - started,  # manifests and statistics merged from the chunks
            "stage_seconds": {k: round(v, 3) for k, v in sorted(seconds.items())},
            "stage_fps": {k: round(frames[k] / seconds[k], 3) for k in sorted(frames) if seconds[k] > 0},
        },
        "cluster": this_run.get("cluster"),
        # planned videos and final clips this run took back from the journal of unfinished chunks
        "resumed": this_run.get("resumed", {"videos": 0, "clips": 0}),
        "driver": driver_usage(),
        "split": {**split_figures(cfg, clips), "speaker_pattern": this_run.get("speaker_pattern")},
    }
    not_done = [c.index for c in chunks if c.index not in done]
    if not_done:
        records = {k: v for k, v in read_incomplete(out).items() if k in set(not_done)}
        kinds = Counter(i.kind for items in records.values() for i in items)
        run["incomplete"] = {"chunks": not_done, "retryable_items": sum(kinds.values()),
                             "kinds": dict(sorted(kinds.items())), "stopped": this_run.get("stopped"),
                             "summary": summary_line(records, len(not_done), rerun_command(this_run.get("argv")))}
    out.write_bytes(RUN_FILE, json.dumps(run, indent=1).encode())
    return run


def split_figures(cfg: DictConfig, clips) -> dict[str, Any]:
    """How the split came out: the asked validation share, the share of kept clips and of videos
    it reached, the split groups over the videos (count, the largest one's share, sizes), and
    the videos left out of both splits (``pipeline.identity``)."""
    kept = clips.filter(clips.column("kept"))
    video_ids = clips.column("video_id").to_pylist()
    left_out = {v for v, reason in zip(video_ids, clips.column("reason").to_pylist()) if reason == "ambiguous_identity"}
    group_of = dict(zip(video_ids, clips.column("split_group").to_pylist()))
    groups = group_sizes({v: g for v, g in group_of.items() if g}, float(cfg.split.val_fraction))
    val_clips = kept.column("split").to_pylist().count("val")
    return {"val_fraction": float(cfg.split.val_fraction),
            "val_share_clips": val_clips / kept.num_rows if kept.num_rows else 0.0,
            "val_share_videos": groups.pop("val_share"),
            "videos": groups.pop("members"), **groups,
            "left_out_videos": len(left_out)}


def up_to_date(out: OutputDir, chunks: list[Chunk]) -> bool:
    """True when run.json (written last) covers exactly these chunks: nothing left to gather."""
    if not all(out.exists(name) for name in (VIDEOS_FILE, CLIPS_FILE, STATS_FILE, RUN_FILE)):
        return False
    return json.loads(out.read_bytes(RUN_FILE)).get("chunks") == [c.index for c in chunks]


def stored_config(out: OutputDir) -> dict[str, Any] | None:
    """The config.yaml of an output made before fingerprints existed, as a plain mapping."""
    if out.exists(fingerprint.FINGERPRINT_FILE) or not out.exists(CONFIG_FILE):
        return None
    return to_dict(OmegaConf.create(out.read_bytes(CONFIG_FILE).decode()))


def record_config(out: OutputDir, cfg: DictConfig) -> None:
    """config.yaml on the first run; each later run's effective config beside it, named by its
    start time (UTC), so what every run was told stays on record."""
    rel = CONFIG_FILE
    if out.exists(CONFIG_FILE):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        rel = f"{RUN_CONFIGS}/run-{stamp}.yaml"
        n = 1
        while out.exists(rel):
            n += 1
            rel = f"{RUN_CONFIGS}/run-{stamp}-{n}.yaml"
    save_config(cfg, out.local_path(rel))
    out.publish(rel)


def done_weight_hashes(out: OutputDir, chunks: list[Chunk]) -> dict[str, str] | None:
    """The weight hashes the first done chunk recorded (adopted by an output without them)."""
    stored = fingerprint.read(out)
    if stored is not None and stored.get("weight_hashes") is not None:
        return None
    for chunk in chunks:
        if out.exists(done_name(chunk.index)):
            return json.loads(out.read_bytes(done_name(chunk.index))).get("weight_hashes")
    return None


def run(args: argparse.Namespace, workers: tuple[type, type] | None = None) -> dict[str, Any] | None:
    start = time.monotonic()
    cfg = build_config(args)
    check_weights(cfg)
    out = OutputDir(args.output)
    try:
        spec = (demo.demo_input(out.local_path(demo.LIST_NAME).parent, float(cfg.split.val_fraction))
                if args.demo else args.input)
        videos, speakers = label_speakers(list_inputs(spec), cfg.split.get("speaker_pattern"), str(spec))
        # Before anything is written: a changed setting would mix two datasets in one output.
        settings = fingerprint.check_settings(out, to_dict(cfg), stored_config(out), store=False)
        plan = make_plan(out, videos, int(cfg.work.videos_per_chunk))
        chunks = plan.chunks
        pending = [c for c in chunks if not out.exists(done_name(c.index))]
        planning_s = time.monotonic() - start
        if not pending and up_to_date(out, chunks):
            log.info("nothing to do: every chunk of %s is done and its manifests are written", args.output)
            return None

        def commit() -> None:
            """What a run that goes on to write chunks records first (after the identity guard)."""
            fingerprint.store_record(out, settings)
            record_config(out, cfg)  # a run that writes something keeps its config
            plan.write(out)

        log.info("%d chunks (%d videos) to process, %d already done", len(pending),
                 sum(len(c.videos) for c in pending), len(chunks) - len(pending))
        if pending:
            this_run = process_chunks(cfg, out, pending, workers, done_weight_hashes(out, chunks), commit)
        else:
            commit()
            this_run = {}
        this_run["argv"] = getattr(args, "argv", None)
        this_run["planning_s"] = planning_s
        this_run["speaker_pattern"] = asdict(speakers) if speakers else None
        result = finalize(cfg, out, chunks, time.monotonic() - start, this_run)
        for line in summary_lines(result):
            log.info("%s", line)
        return result
    finally:
        out.close()


def main(argv: Sequence[str] | None = None, workers: tuple[type, type] | None = None) -> int:
    """Run the job; ``workers``: (CPU, model) worker classes other than ``pipeline.workers``'."""
    from pipeline.scheduler import PlacementError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args, workers)
    except MissingWeightsError as exc:
        log.error("%s", exc)
        if "qalign_one_align" in exc.names:
            log.error("fetch Q-Align, or score quality with an offline pyiqa metric, e.g. "
                      "filters.quality.metric=piqe filters.quality.threshold=60 (--random-weights builds "
                      "Q-Align's architecture with random weights: speed runs only)")
        return 2
    except (InputError, SizingError, RayAddressError, PlacementError, fingerprint.FingerprintError,
            GroupShareError) as exc:
        log.error("%s", exc)
        return 2
    if result and result.get("incomplete"):
        if result["incomplete"]["stopped"]:
            log.error("%s", result["incomplete"]["stopped"])
        log.error("%s", result["incomplete"]["summary"])
        return EXIT_INCOMPLETE
    return 0


if __name__ == "__main__":
    sys.exit(main())
