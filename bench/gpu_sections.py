"""The three measurements of ``bench/gpu.py``: the trainer's step, the renderer, the job with every
model filter. Each takes the run's ``Sizes`` (the GPU's, or the dry run's tiny ones on the CPU: the
same code path), a deadline, and ``save``, called with the results so far after every measurement,
so that a section stopped at its time limit still leaves what it measured.
"""
from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from training.model import ModelConfig

Save = Callable[[dict], None]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures; ``FULL`` on one GPU, ``DRY`` the same code on the CPU in seconds."""

    dry_run: bool
    device: str
    # trainer: both configurations, batch, timed steps per variant, torch.compile's backend
    paper: ModelConfig
    public: ModelConfig
    batch: int
    train_steps: int
    compile_backend: str
    wav2vec2: dict[str, Any] | None  # transformers Wav2Vec2Config overrides; None: the base config
    # renderer: feature side (64 = a 512x512 frame), frames per measurement, batches, precisions
    side: int
    frames: int
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    # training.animate end to end
    speech_s: float
    animate_model: ModelConfig
    animate_encoder: str
    animate_diffusion_steps: int
    animate_args: tuple[str, ...]
    # the job: inputs used, times each is looped, Q-Align's random size, extra settings
    job_videos: int
    job_loops: int
    qalign: str
    job_settings: tuple[str, ...]


TINY_TRAIN = ModelConfig(audio_dim=32, width=32, layers=2, heads=2, w_pre=5, w_cur=20)
TINY_WAV2VEC2 = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
                 "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}
TINY_ANIMATE = ModelConfig(audio_dim=64, width=48, layers=2, heads=4, w_pre=5, w_cur=20, dropout=0.0)
# Q-Align at 1..5 with its drop threshold, every filter scoring (random weights judge nothing)
JOB_SETTINGS = ("filters.quality.metric=qalign", "filters.quality.threshold=3.0")

FULL = Sizes(dry_run=False, device="cuda", paper=ModelConfig(audio_dim=768),
             public=ModelConfig(audio_dim=768, width=256, layers=8, heads=8), batch=16, train_steps=30,
             compile_backend="inductor", wav2vec2=None, side=64, frames=64, batches=(1, 8, 32),
             precisions=("fp32", "fp16", "bf16"), speech_s=10.0,
             animate_model=ModelConfig(audio_dim=768), animate_encoder="random:base", animate_diffusion_steps=50,
             animate_args=("--sampler", "ddpm"), job_videos=3, job_loops=6, qalign="full", job_settings=JOB_SETTINGS)
DRY = Sizes(dry_run=True, device="cpu", paper=TINY_TRAIN,
            public=ModelConfig(audio_dim=32, width=16, layers=2, heads=2, w_pre=5, w_cur=20), batch=2, train_steps=2,
            compile_backend="aot_eager", wav2vec2=TINY_WAV2VEC2, side=32, frames=1, batches=(1,),
            precisions=("fp32",), speech_s=0.04,
            animate_model=TINY_ANIMATE, animate_encoder="random:small", animate_diffusion_steps=10,
            animate_args=("--sampler", "ddim", "--steps", "2"), job_videos=1, job_loops=1, qalign="tiny",
            job_settings=JOB_SETTINGS)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- trainer

def phase_seconds(step, repeats: int = 3) -> dict[str, float]:
    """One ``bench.train.ModelStep`` split into forward (loss, with the raw-audio encoder when it has
    one), backward, and optimiser (clipping and AdamW), synchronised between; best of ``repeats``."""
    from training.run import step_loss

    device = step.device.type
    best = {"forward": float("inf"), "backward": float("inf"), "optimizer": float("inf")}
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        with step.kernels():
            mb = step.mb
            if step.encoder is not None:
                mb = dataclasses.replace(mb, audio=step.encoder(step.raw_audio, step.window))
            loss, _ = step_loss(step.call, step.diffusion, mb, step.weights, step.w_pre, 0.1, step.generator,
                                step.autocast)
            sync(device)
            t1 = time.perf_counter()
            step.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sync(device)
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(step.trained.parameters(), 2.0)
        step.optimizer.step()
        sync(device)
        t3 = time.perf_counter()
        for name, seconds in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
            best[name] = min(best[name], seconds)
    return {k: round(v, 5) for k, v in best.items()}


def trainer(sizes: Sizes, deadline: float, save: Save) -> dict:
    """Windows/s and step time at the paper's and the public trainer's configurations, fp32, bf16
    autocast and bf16 + torch.compile (the trainer's exact single-key path, fused AdamW), and
    JoyVASA's public step (wav2vec2-base trained in the loop, masked cross-attention, torch's AdamW
    loop, fp32) at the public configuration: the speed goal's baseline."""
    from transformers import Wav2Vec2Config

    from bench.train import ModelStep, RawAudioEncoder

    device = sizes.device
    configs = {"paper": sizes.paper, "public_trainer": sizes.public}
    out: dict = {name: {"model": cfg.to_dict(), "batch": sizes.batch} for name, cfg in configs.items()}

    def public_step(cfg: ModelConfig):
        config = Wav2Vec2Config(**(sizes.wav2vec2 or {}))
        return ModelStep(cfg, device, False, "fp32", fused=False, torch_dropout=True, batch=sizes.batch,
                         encoder=RawAudioEncoder(trained_layers=True, config=config))

    variants: dict[str, Callable[[ModelConfig], Any]] = {
        "public_code_wav2vec2_fp32": public_step,
        "fp32": lambda cfg: ModelStep(cfg, device, True, "fp32", batch=sizes.batch),
        "bf16_autocast": lambda cfg: ModelStep(cfg, device, True, "bf16", batch=sizes.batch),
        "bf16_compiled": lambda cfg: ModelStep(cfg, device, True, "bf16", compile_model=True,
                                               compile_backend=sizes.compile_backend, batch=sizes.batch)}
    # The goals' figures first, the compilations (tens of seconds each on a GPU) last.
    order = [("public_trainer", "public_code_wav2vec2_fp32"), ("paper", "fp32"), ("paper", "bf16_autocast"),
             ("public_trainer", "fp32"), ("public_trainer", "bf16_autocast"), ("paper", "bf16_compiled"),
             ("public_trainer", "bf16_compiled")]
    for name, variant in order:
        started = time.perf_counter()
        step = variants[variant](configs[name])
        step(timed=False)  # warm-up (and compilation)
        step(timed=False)
        warm_up_s = time.perf_counter() - started
        while len(step.times) < sizes.train_steps and (not step.times or time.perf_counter() < deadline):
            step()
        out[name][variant] = {**step.result(), "steps_timed": len(step.times), "warm_up_s": round(warm_up_s, 2),
                              "phases_s": phase_seconds(step)}
        out["summary"] = trainer_summary(out)
        save(out)
        del step
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def trainer_summary(out: dict) -> dict:
    """The fastest variant at the paper's configuration, its ratio to the public step and its
    largest phase, from what is measured so far (None where a figure is missing yet)."""
    paper = {k: v for k, v in out.get("paper", {}).items() if isinstance(v, dict) and "windows_per_s" in v}
    best = max(paper, key=lambda k: paper[k]["windows_per_s"]) if paper else None
    public = out.get("public_trainer", {}).get("public_code_wav2vec2_fp32", {}).get("windows_per_s")
    best_wps = paper[best]["windows_per_s"] if best else None
    return {"paper_best_variant": best, "paper_best_windows_per_s": best_wps, "public_step_windows_per_s": public,
            "paper_best_over_public_step": round(best_wps / public, 2) if best and public else None,
            "paper_best_bound_by": max(paper[best]["phases_s"], key=paper[best]["phases_s"].get) if best else None}


# ----------------------------------------------------------------------------- renderer

def renderer(sizes: Sizes, deadline: float, save: Save) -> dict:
    """W + G frames/s at each batch in fp32, fp16 and bf16 autocast (difference from fp32 at batch
    1), then ``training.animate`` end to end on speech. The dry run times fp32 alone: without
    native half precision a CPU takes minutes for one small W + G forward under autocast."""
    from bench.render import inputs, render, timed
    from models.liveportrait.spade_generator import load_spade_generator
    from models.liveportrait.warping_network import load_warping_network

    device = sizes.device
    warp = load_warping_network("random", device=device)
    decode = load_spade_generator("random", device=device)
    feature, x_d, x_s = inputs(sizes.frames, device, sizes.side)
    with torch.inference_mode():
        reference = render(warp, decode, feature, x_d, x_s, 1)
    out: dict = {"frame_px": sizes.side * 8, "frames": sizes.frames, "rows": []}
    amps = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    for precision in sizes.precisions:
        amp = amps[precision]
        for batch in sizes.batches:
            if out["rows"] and time.perf_counter() > deadline:
                break
            wall, _, result = timed(lambda b=batch, a=amp: render(warp, decode, feature, x_d, x_s, b, a), device)
            out["rows"].append({"precision": precision, "batch": batch, "seconds": round(wall, 4),
                                "frames_per_s": round(sizes.frames / wall, 2),
                                "max_abs_diff_vs_fp32": float(f"{(result - reference).abs().max().item():.3g}")})
            save(out)
    del warp, decode, feature, reference
    out["animate"] = animate_end_to_end(sizes)
    return out


def animate_end_to_end(sizes: Sizes) -> dict:
    """``training.animate`` on ``speech_s`` of real speech and the real portrait (random weights at
    the given sizes): models loaded once (timed), then two calls; the first pays the first-call
    costs (kernel selection, allocator growth), the second is what a server rendering many items
    sees. Real-time factor: wall seconds over audio seconds."""
    import soundfile as sf

    from pipeline.media import media_dir
    from tests.test_sample import random_model, template_stats, write_checkpoint
    from training.animate import animate, build_parser, load_renderer, load_speech_models

    media = media_dir()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp) / "checkpoint.pt", random_model(sizes.animate_model, 0),
                                template_stats(media, sizes.animate_model.audio_dim, sizes.animate_encoder),
                                diffusion_steps=sizes.animate_diffusion_steps)
        audio, rate = sf.read(media / "joyvasa_001.wav", dtype="float32")
        need = int(round(sizes.speech_s * rate))
        start = int(2.0 * rate)  # inside an utterance
        speech = np.tile(audio, need // len(audio) + 2)[start:start + need]
        sf.write(Path(tmp) / "speech.wav", speech, rate)
        args = build_parser().parse_args([
            "--checkpoint", str(ckpt), "--audio", f"{tmp}/speech.wav", "--image", str(media / "lp_portrait_s12.jpg"),
            "--out", f"{tmp}/out.mp4", "--random-weights", "--no-progress", "--device", sizes.device,
            *sizes.animate_args])
        args.batch_size = 16 if sizes.device == "cuda" else 1  # animate's own default
        sync(sizes.device)
        started = time.perf_counter()
        renderer_models = load_renderer(False, True, None, sizes.device, args.precision)
        speech_models = load_speech_models(args)
        sync(sizes.device)
        load_s = time.perf_counter() - started
        calls = []
        for _ in range(2):
            started = time.perf_counter()
            result = animate(args, renderer_models, speech_models)
            sync(sizes.device)
            calls.append((time.perf_counter() - started, result))
    (first_s, _), (warm_s, warm) = calls
    seconds = warm["seconds"]
    parts = {"crop_and_speech_to_motion": round(warm["load_s"], 3),
             "render_paste_back_and_encode": round(warm["render_s"], 3)}
    return {"audio_s": round(seconds, 3), "frames": warm["n_frames"], "batch": args.batch_size,
            "precision": args.precision, "model_load_s": round(load_s, 2), "first_call_s": round(first_s, 2),
            "warm_call_s": round(warm_s, 2), "rtf_with_model_loading": round((load_s + first_s) / seconds, 4),
            "rtf_models_loaded": round(warm_s / seconds, 4), "warm_call_parts_s": parts,
            "bound_by": max(parts, key=parts.get)}


# ----------------------------------------------------------------------------- the job

class GpuBusy:
    """Samples the GPU's utilisation every ``interval_s`` (NVML through ``torch.cuda.utilization``:
    the share of the last sample period in which a kernel ran) and the memory in use; nothing
    without a GPU."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.samples, self.memory_mb = interval_s, [], []
        self.available = torch.cuda.is_available()
        self.error: str | None = None if self.available else "no CUDA device"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(float(torch.cuda.utilization(0)))
            except Exception as exc:  # no NVML bindings: the fraction stays unknown, the run goes on
                self.error = f"{type(exc).__name__}: {exc}"
                return
            try:
                self.memory_mb.append(torch.cuda.device_memory_used(0) / 2**20)
            except Exception:  # older torch: the busy fraction alone
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "GpuBusy":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def report(self) -> dict:
        samples = self.samples
        return {"gpu_busy_fraction": round(float(np.mean(samples)) / 100, 3) if samples else None,
                "gpu_busy_samples": len(samples),
                "gpu_memory_peak_mb": round(max(self.memory_mb), 1) if self.memory_mb else None,
                "gpu_busy_error": self.error}


def bounding(run: dict) -> dict:
    """The busier actor pool (mean busy fraction) and, inside it, the stage with the most seconds."""
    from pipeline.stages import GROUPS

    activity = run.get("activity") or {}
    busy = {}
    for pool in ("cpu", "model"):
        fractions = [f for f in (activity.get(pool) or {}).get("busy_fraction", []) if f is not None]
        busy[pool] = round(float(np.mean(fractions)), 3) if fractions else None
    pool = max(busy, key=lambda p: busy[p] if busy[p] is not None else -1.0)
    stages = GROUPS["model"] if pool == "model" else GROUPS["video"] + GROUPS["prepare"]
    seconds = {s: run["stage_seconds"].get(s, 0.0) for s in stages}
    return {"pool_busy_fraction": busy, "bounding_pool": pool, "bounding_stage": max(seconds, key=seconds.get)}


def job(sizes: Sizes, deadline: float, save: Save) -> dict:
    """``pipeline/build_shards.py`` as users run it (``bench.pipeline.run_pipeline``: a fresh process,
    the job's own sizing on every core and the GPU) with every model filter on, Q-Align at
    ``sizes.qalign`` with random weights, on the real clips looped ``job_loops`` times."""
    from bench import pipeline as bench_pipeline
    from models.qalign_random import describe
    from pipeline.probe import probe

    out: dict = {"qalign": describe(sizes.qalign)}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_job_") as tmp:
        work = Path(tmp)
        videos = bench_pipeline.inputs(work / "inputs")
        videos = sorted(videos, key=lambda v: probe(str(v)).duration_s)[: sizes.job_videos]  # shortest first
        if sizes.job_loops > 1:
            videos = [bench_pipeline.loop_video(v, work / "inputs" / f"{v.stem}_x{sizes.job_loops}.mp4", sizes.job_loops)
                      for v in videos]
        settings = (*sizes.job_settings, f"models.quality.random_config={sizes.qalign}")
        out.update(inputs=[v.name for v in videos], loops=sizes.job_loops,
                   settings=[*bench_pipeline.SETTINGS, *settings])
        save(out)
        with GpuBusy() as busy:
            run = bench_pipeline.run_pipeline(videos, work, "gpu_job", None, settings)
    gpus = max(run["gpus"], 1)  # per GPU-hour; the dry run's CPU counts as one device
    out.update({
        "clips": run["clips"], "frames": run["frames"], "video_s": run["video_s"], "wall_s": run["wall_s"],
        "startup_s": run["startup_s"], "processing_s": run["processing_s"], "gpus": run["gpus"],
        "model_workers": run["model_workers"], "ray_cpus": run["ray_cpus"],
        "hours_video_per_gpu_hour_running": round(run["video_s"] / run["processing_s"] / gpus, 2),
        "hours_video_per_gpu_hour_end_to_end": round(run["video_s"] / run["wall_s"] / gpus, 2),
        **busy.report(), "stage_seconds": run["stage_seconds"], **bounding(run), "peak_mb": run["peak_mb"]})
    return out


SECTIONS: dict[str, Callable[[Sizes, float, Save], dict]] = {"trainer": trainer, "renderer": renderer, "job": job}
