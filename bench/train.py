"""Trainer throughput on this machine, at the paper's sizes (width 512, 6 layers, 8 heads, batch 16,
W_pre 25 + W_cur 100 frames, 768-wide audio features).

    python bench/train.py [--threads 2] [--steps 2] [--loader-batches 200] [--work DIR]

Measures, on shards written with the real ShardWriter (motion from the real LivePortrait templates,
10-30 s clips, real speech as the clip audio, random 768-wide features):

* the loader alone: training windows per second through the DataLoader (goal >= 2,000);
* peak memory of a loader process streaming the same number of windows from 1x and 10x the shards
  (the stream never holds the dataset, so it should be flat);
* one optimiser step with cached features (loader batches -> loss -> AdamW): steps/s, samples/s;
* model step speed at the paper's config (width 512, 6 layers) and the public trainer's effective
  one (width 256, 8 layers, 8 heads), batch 16, W_pre 25 + W_cur 100, 768-wide features: windows/s
  and step time of the reference computation (masked cross-attention over all audio frames, as
  ``nn.TransformerDecoder`` computes it, torch's dropout, torch's AdamW loop), of the exact
  single-key cross-attention of ``audio_radius=0`` (the default) with torch's dropout, and with the
  cheaper CPU dropout mask of ``training.cpu_dropout`` and fused AdamW (the defaults), and of that
  plus bf16 autocast (not exact; timed on CUDA and on CPUs with AMX, where it is the default);
  at the public trainer's config also the public code's own step (wav2vec2-base trained in the
  loop, reference kernels, fp32): the baseline of the speed goal (>= 20x). All measured
  interleaved in one run so their ratios hold on a shared machine; on ``--device cuda`` also
  ``torch.compile``;
* time to the first training step (``training.run``, a fresh process per run, the paper's model,
  2 loader workers, 64 validation windows) on an output of 1x and 20x the shards, written as the
  job writes them (a training and a validation shard per chunk, a manifest): fresh runs, which
  choose and read the validation set, and resumed ones, which reuse it (goal: 20x within 10% of 1x);
  beside it, what streaming the whole validation split once (the way the set was built before)
  costs at each size;
* the baseline, as the public code trains: the same step with a wav2vec2-base encoder (random
  weights, transformers' base config) run on each window's raw audio inside every step, its
  transformer layers 2-11 trained with the model as the public code does; and, for reference, the
  same encoder frozen (forward only), as the paper describes it.

Writes bench/results/train.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_description  # noqa: E402
from configs import load_config  # noqa: E402
from pipeline.media import media_dir  # noqa: E402
from shards.format import SAMPLES_PER_FRAME  # noqa: E402
from shards.writer import ShardWriter  # noqa: E402
from tests.motion_fixtures import SPEECH, TEMPLATES, compute_stats, speech, template_motion  # noqa: E402
from training.data import ModelBatch, WindowStream, find_inputs, make_loader, to_model_inputs  # noqa: E402
from training.diffusion import Diffusion  # noqa: E402
from training.losses import LossWeights  # noqa: E402
from training.model import ModelConfig, MotionDenoiser  # noqa: E402
from training.normalize import Normalizer, load_stats  # noqa: E402
from training import cpu_dropout  # noqa: E402
from training.run import autocast_for, cpu_has_amx, make_optimizer, step_loss  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "train.json"
PAPER = ModelConfig(audio_dim=768)  # width 512, 6 layers, 8 heads, w_pre 25, w_cur 100, audio_dim 768
BATCH = 16
CLIPS_PER_SHARD = 8


def bench_clip(rng: np.random.Generator, motions: list[dict], media: Path, index: int,
               j: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One clip of 10-30 s: template motion looped to length, random 768-wide features, real speech."""
    n = int(rng.integers(250, 750))
    source = motions[(index + j) % len(motions)]
    reps = -(-n // source["exp"].shape[0])
    motion = {k: np.concatenate([v] * reps)[:n] for k, v in source.items()}
    feat = rng.normal(size=(n, PAPER.audio_dim)).astype(np.float16)
    return motion, feat, speech(media / SPEECH[j % len(SPEECH)], n)


def write_shards(out: Path, n_shards: int, seed: int = 0) -> None:
    """Clips of 10-30 s: template motion looped to length, real speech, random 768-wide features."""
    if (out / "stats.json").is_file():
        return
    rng = np.random.default_rng(seed)
    media = media_dir()
    motions = [template_motion(media / f"lp_template_{name}.pkl") for name in TEMPLATES]
    stats_clips = []
    for index in range(n_shards):
        with ShardWriter(out / "shards", index) as writer:
            for j in range(CLIPS_PER_SHARD):
                motion, feat, audio = bench_clip(rng, motions, media, index, j)
                meta = {"split": "train", "dataset": "bench", "clip_id": f"{index}-{j}"}
                writer.write(f"clip-{index:04d}-{j}", motion, feat, audio, meta)
                if len(stats_clips) < 8:
                    stats_clips.append({"motion": motion, "audio_feat": feat, "meta": meta})
    (out / "stats.json").write_text(json.dumps(compute_stats(stats_clips)))


STARTUP_CHUNKS_1X = 4
STARTUP_VAL_CLIPS = 4  # per chunk, beside CLIPS_PER_SHARD training clips


def write_output(out: Path, n_chunks: int, seed: int = 0) -> None:
    """An output as the job lays it out: per chunk a training and a validation shard named for
    their split, ``manifests/clips.parquet`` naming each kept clip's shard and key, ``stats.json``."""
    if (out / "stats.json").is_file():
        return
    import pandas as pd

    rng = np.random.default_rng(seed)
    media = media_dir()
    motions = [template_motion(media / f"lp_template_{name}.pkl") for name in TEMPLATES]
    rows, stats_clips = [], []
    for chunk in range(n_chunks):
        for split, count in (("train", CLIPS_PER_SHARD), ("val", STARTUP_VAL_CLIPS)):
            with ShardWriter(out / "shards", chunk, split=split) as writer:
                for j in range(count):
                    motion, feat, audio = bench_clip(rng, motions, media, chunk, j)
                    key = f"clip-{chunk:05d}-{split}-{j}"
                    meta = {"split": split, "dataset": "bench", "clip_id": key}
                    shard, _ = writer.write(key, motion, feat, audio, meta)
                    rows.append({"clip_id": key, "key": key, "shard": shard, "split": split, "kept": True,
                                 "n_frames": len(feat), "dataset": "bench"})
                    if split == "train" and len(stats_clips) < 8:
                        stats_clips.append({"motion": motion, "audio_feat": feat, "meta": meta})
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "manifests" / "clips.parquet")
    (out / "stats.json").write_text(json.dumps(compute_stats(stats_clips)))


def first_step_seconds(root: Path, run_dir: Path, threads: int, resume: bool) -> dict:
    """One ``training.run`` process to its first step: the run's own clock from the start of
    ``train()`` (``first_step_s``) and the whole process's wall time (imports included)."""
    steps = 2 if resume else 1
    cmd = [sys.executable, "-m", "training.run", "--shards", str(root), "--out", str(run_dir),
           f"train.max_steps={steps}", "train.val_batches=4", "train.val_every=1000", "train.ckpt_every=1000",
           "train.progress=false", f"train.threads={threads}", "data.num_workers=2"]
    cmd += ["--resume"] if resume else ["--overwrite"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"first_step_s": round(summary["first_step_s"], 2), "process_s": round(wall, 2)}


def full_validation_pass_s(root: Path) -> dict:
    """The former way to build the validation set: stream every validation shard once."""
    from training.data import validation_batches

    cfg = load_config("train")
    inputs = find_inputs(root)
    normalizer = Normalizer(load_stats(inputs.stats_path))
    started = time.perf_counter()
    batches = validation_batches(inputs.shards["val"], normalizer, PAPER, cfg.data, 0, 4, BATCH)
    return {"seconds": round(time.perf_counter() - started, 2), "val_shards": len(inputs.shards["val"]),
            "windows": sum(len(b["keys"]) for b in batches)}


def bench_startup(work: Path, threads: int, repeats: int = 3) -> dict:
    """Fresh and resumed starts on 1x and 20x the shards, interleaved so load falls on both alike;
    the median of ``repeats`` of each."""
    sizes = {"1x": STARTUP_CHUNKS_1X, "20x": 20 * STARTUP_CHUNKS_1X}
    roots = {}
    for name, chunks in sizes.items():
        roots[name] = work / f"output_{name}"
        write_output(roots[name], chunks, seed=chunks)
    runs: dict[str, dict[str, list[dict]]] = {name: {"fresh": [], "resumed": []} for name in sizes}
    for _ in range(repeats):
        for name, root in roots.items():
            run_dir = work / f"run_{name}"
            runs[name]["fresh"].append(first_step_seconds(root, run_dir, threads, resume=False))
            runs[name]["resumed"].append(first_step_seconds(root, run_dir, threads, resume=True))
    out: dict = {"settings": "paper model (width 512, 6 layers, 768-wide features), batch 16, 2 loader "
                             "workers, train.val_batches=4 (64 windows), fp32 on CPU; median of "
                             f"{repeats} fresh processes each, interleaved"}
    for name, root in roots.items():
        shards = sorted((root / "shards").glob("*.tar"))
        row = {"chunks": sizes[name], "shards": len(shards),
               "shard_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 1)}
        for kind in ("fresh", "resumed"):
            for field in ("first_step_s", "process_s"):
                values = [r[field] for r in runs[name][kind]]
                row[f"{kind}_{field}"] = float(np.median(values))
                row[f"{kind}_{field}_all"] = values
        row["full_validation_pass"] = full_validation_pass_s(root)
        out[name] = row
    for kind in ("fresh", "resumed"):
        out[f"{kind}_ratio_20x_to_1x"] = round(out["20x"][f"{kind}_first_step_s"] / out["1x"][f"{kind}_first_step_s"], 3)
    return out


def train_stream(root: Path, consumed: int = 0) -> tuple[WindowStream, Normalizer]:
    cfg = load_config("train")
    inputs = find_inputs(root)
    normalizer = Normalizer(load_stats(inputs.stats_path))
    stream = WindowStream(inputs.shards["train"], normalizer, PAPER, cfg.data, "train", 0, BATCH,
                          consumed_batches=consumed)
    return stream, normalizer


def bench_loader(root: Path, n_batches: int, num_workers: int) -> dict:
    stream, _ = train_stream(root)
    loader = iter(make_loader(stream, num_workers))
    for _ in range(10):  # worker start-up and pool fill
        next(loader)
    rates = []
    for _ in range(3):  # best of three stretches: the machine is shared
        start = time.perf_counter()
        for _ in range(n_batches):
            next(loader)
        rates.append(n_batches * BATCH / (time.perf_counter() - start))
    del loader
    return {"num_workers": num_workers, "batches": n_batches, "windows_per_s": round(max(rates), 1),
            "windows_per_s_all": [round(r, 1) for r in rates]}


def _anonymous_mb(pid: int | str) -> float:
    """Anonymous (heap) memory of a process: what it allocated, without the shared library pages
    whose residency makes RSS wander by ~100 MB from run to run."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_probe(root: Path, n_batches: int, num_workers: int) -> dict:
    """Run in a fresh process: stream windows, sampling the anonymous memory of it and its workers."""
    stream, _ = train_stream(root)
    loader = iter(make_loader(stream, num_workers))
    main_peak, worker_peak = 0.0, [0.0] * num_workers
    for index in range(n_batches):
        next(loader)
        if index % 10 == 0 or index == n_batches - 1:
            main_peak = max(main_peak, _anonymous_mb("self"))
            worker_peak = [max(p, _anonymous_mb(w.pid)) for p, w in zip(worker_peak, loader._workers)]
    return {"main_peak_mb": round(main_peak, 1), "worker_peak_mb": [round(w, 1) for w in worker_peak]}


def bench_memory(root: Path, n_batches: int, num_workers: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-probe", str(root), "--loader-batches", str(n_batches),
           "--loader-workers", str(num_workers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    shards = sorted((root / "shards").glob("*.tar"))
    probe.update(shards=len(shards), shard_mb=round(sum(p.stat().st_size for p in shards) / 2**20, 1),
                 windows=n_batches * BATCH)
    return probe


class RawAudioEncoder(torch.nn.Module):
    """wav2vec2-base (transformers' base config, random weights) on raw audio, inside every step.

    ``trained_layers``: the public JoyVASA code freezes the convolutional feature extractor, the
    feature projection and transformer layers 0-1 and trains layers 2-11 with the motion model;
    ``trained_layers=False`` is the paper's description (a frozen encoder, forward only).
    """

    def __init__(self, trained_layers: bool, config=None):
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        self.encoder = Wav2Vec2Model(config or Wav2Vec2Config())  # default base: 12 layers, 768 wide
        self.trained_layers = trained_layers
        for name, p in self.encoder.named_parameters():
            trained = trained_layers and name.startswith("encoder.layers.") and int(name.split(".")[2]) >= 2
            p.requires_grad_(trained)
        self.encoder.train(trained_layers)

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        with torch.set_grad_enabled(self.trained_layers):
            hidden = self.encoder(audio).last_hidden_state  # (B, ~2 per frame, 768)
            return torch.nn.functional.interpolate(hidden.transpose(1, 2), size=n_frames, mode="linear",
                                                   align_corners=False).transpose(1, 2)


class TrainStep:
    """One optimiser step on loader batches; with ``encoder``, raw audio is re-encoded in the step."""

    def __init__(self, root: Path, encoder: RawAudioEncoder | None = None):
        torch.manual_seed(0)
        self.model = MotionDenoiser(PAPER)
        self.encoder = encoder
        self.trained = torch.nn.ModuleList([self.model] + ([encoder] if encoder is not None else []))
        # The raw-audio baselines step as the public code does: torch's AdamW loop, not the fused kernels.
        fused = "auto" if encoder is None else "false"
        self.optimizer = make_optimizer(self.trained, load_config("train", [f"optim.fused={fused}"]))
        self.diffusion, self.weights = Diffusion(), LossWeights()
        self.generator = torch.Generator().manual_seed(0)
        stream, self.normalizer = train_stream(root)
        self.batches = iter(make_loader(stream, 1))
        self.raw_audio = torch.randn(BATCH, PAPER.window * SAMPLES_PER_FRAME) * 0.1  # 5 s per window
        self.times: list[float] = []

    def __call__(self, timed: bool = True) -> None:
        start = time.perf_counter()
        mb = to_model_inputs(next(self.batches), self.normalizer, "cpu")
        if self.encoder is not None:
            mb.audio = self.encoder(self.raw_audio, PAPER.window)
        loss, _ = step_loss(self.model, self.diffusion, mb, self.weights, PAPER.w_pre, 0.1,
                            self.generator, contextlib.nullcontext())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trained.parameters(), 2.0)
        self.optimizer.step()
        if timed:
            self.times.append(time.perf_counter() - start)

    def result(self) -> dict:
        seconds = min(self.times)  # the machine is shared: the least disturbed step is the best estimate
        return {"step_s_best": round(seconds, 3), "step_s_all": [round(t, 3) for t in self.times],
                "steps_per_s": round(1 / seconds, 4), "samples_per_s": round(BATCH / seconds, 2),
                "trained_params_m": round(sum(p.numel() for p in self.trained.parameters()
                                              if p.requires_grad) / 1e6, 2)}


def bench_steps(root: Path, n_steps: int) -> dict[str, dict]:
    """Cached features against the two raw-audio baselines, interleaved step by step so that the
    load other users put on this shared machine falls on all three alike."""
    variants = {"cached_features": TrainStep(root),
                "wav2vec2_public_code": TrainStep(root, RawAudioEncoder(trained_layers=True)),
                "wav2vec2_frozen": TrainStep(root, RawAudioEncoder(trained_layers=False))}
    for step in variants.values():
        step(timed=False)  # warm-up
    for _ in range(n_steps):
        for step in variants.values():
            step()
    return {name: step.result() for name, step in variants.items()}


PUBLIC = ModelConfig(audio_dim=768, width=256, layers=8, heads=8)  # JoyVASA's public trainer, effectively


class ModelStep:
    """One optimiser step of the denoiser alone on fixed random windows (no loader), one variant.

    ``encoder``: raw audio is re-encoded inside the step (the public code's baseline);
    ``fused``: the optimiser's ``optim.fused`` (auto: torch's fused kernels on CPU and CUDA);
    ``compile_backend``: torch.compile's backend with ``compile_model`` (``aot_eager`` traces
    forward and backward without generating kernels: the code path, cheaply, on a CPU).
    """

    def __init__(self, model_cfg: ModelConfig, device: str, single_key: bool, precision: str,
                 fused: bool | str = "auto", compile_model: bool = False, torch_dropout: bool = False,
                 encoder: RawAudioEncoder | None = None, batch: int = BATCH, compile_backend: str = "inductor"):
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.model = MotionDenoiser(model_cfg).to(self.device).train()
        self.model.single_key_cross_attention = single_key
        self.encoder = encoder.to(self.device) if encoder is not None else None
        self.trained = torch.nn.ModuleList([self.model] + ([self.encoder] if encoder is not None else []))
        cfg = load_config("train", [f"optim.fused={str(fused).lower()}", f"train.precision={precision}",
                                    "train.cpu_autocast=true"])
        self.optimizer = make_optimizer(self.trained, cfg, self.device)
        self.autocast, _ = autocast_for(cfg, self.device)
        self.call = torch.compile(self.model, backend=compile_backend) if compile_model else self.model
        self.diffusion, self.weights = Diffusion(), LossWeights()
        self.generator = torch.Generator().manual_seed(0)
        g = torch.Generator().manual_seed(1)
        w = model_cfg.window
        x0 = torch.randn(batch, w, model_cfg.motion_dim, generator=g).to(self.device)
        self.mb = ModelBatch(x0=x0, audio=torch.randn(batch, w, model_cfg.audio_dim, generator=g).to(self.device),
                             valid=torch.ones(batch, w, dtype=torch.bool, device=self.device),
                             first=torch.zeros(batch, dtype=torch.bool, device=self.device))
        self.raw_audio = (0.1 * torch.randn(batch, w * SAMPLES_PER_FRAME, generator=g)).to(self.device)
        self.batch = batch
        self.w_pre, self.window = model_cfg.w_pre, w
        self.kernels = cpu_dropout.torch_kernels if torch_dropout else contextlib.nullcontext
        self.times: list[float] = []

    def __call__(self, timed: bool = True) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with self.kernels():
            mb = self.mb
            if self.encoder is not None:
                mb = dataclasses.replace(mb, audio=self.encoder(self.raw_audio, self.window))
            loss, _ = step_loss(self.call, self.diffusion, mb, self.weights, self.w_pre, 0.1,
                                self.generator, self.autocast)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trained.parameters(), 2.0)
        self.optimizer.step()
        sync()
        if timed:
            self.times.append(time.perf_counter() - start)

    def result(self) -> dict:
        seconds = min(self.times)
        return {"step_s_best": round(seconds, 4), "step_s_median": round(float(np.median(self.times)), 4),
                "windows_per_s": round(self.batch / seconds, 2)}


def step_flops(model_cfg: ModelConfig) -> int:
    """Floating-point operations of one step's forward and backward (torch's FlopCounterMode:
    matrix products and attention; the elementwise rest is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = ModelStep(model_cfg, "cpu", True, "fp32")
    with FlopCounterMode(display=False) as counter:
        step(timed=False)
    return int(counter.get_total_flops())


def gemm_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """This machine's best matrix-product rate (GFLOP/s) at the current thread count."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(timeit(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timeit(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model_speed(device: str, n_steps: int, cpu_bf16: bool = False) -> dict:
    """Reference vs the exact fast path (vs bf16 autocast, and on CUDA torch.compile),
    at both configs, interleaved step by step; at the public trainer's config also the public code's
    own step (wav2vec2-base trained in the loop, masked cross-attention, torch's dropout and AdamW
    loop, fp32), the baseline of the speed goal. On CPU also the matrix-product bound: the step's
    FLOPs at this machine's best fp32 GEMM rate, the most windows/s any exact fp32 step could reach.
    bf16 autocast on CPU where the CPU has AMX (the trainer's default there) or with ``cpu_bf16``:
    on CPUs without native bf16 (AVX2 only) its matrix products fall back to a slow generic kernel."""
    out: dict = {}
    time_bf16 = device == "cuda" or cpu_bf16 or cpu_has_amx()
    if device == "cpu":
        out["gemm_gflops_fp32"] = round(gemm_gflops(), 1)
        if time_bf16:
            out["gemm_gflops_bf16"] = round(gemm_gflops(dtype=torch.bfloat16), 1)
    for name, model_cfg in (("paper", PAPER), ("public_trainer", PUBLIC)):
        variants = {}
        if model_cfg == PUBLIC:
            variants["public_code_wav2vec2_fp32"] = ModelStep(model_cfg, device, False, "fp32", fused=False,
                                                              torch_dropout=True,
                                                              encoder=RawAudioEncoder(trained_layers=True))
        variants.update({
            "reference_fp32": ModelStep(model_cfg, device, False, "fp32", fused=False, torch_dropout=True),
            "single_key_fp32_torch_dropout": ModelStep(model_cfg, device, True, "fp32", fused=False,
                                                       torch_dropout=True),
            "single_key_fp32": ModelStep(model_cfg, device, True, "fp32")})
        if time_bf16:
            variants["single_key_bf16_autocast"] = ModelStep(model_cfg, device, True, "bf16")
        if device == "cuda":
            variants["single_key_bf16_compiled"] = ModelStep(model_cfg, device, True, "bf16", compile_model=True)
        for step in variants.values():
            step(timed=False)  # warm-up (and compilation)
            step(timed=False)
        for _ in range(n_steps):
            for step in variants.values():
                step()
        results = {k: v.result() for k, v in variants.items()}
        ref = results["reference_fp32"]["windows_per_s"]
        public = results.get("public_code_wav2vec2_fp32", {}).get("windows_per_s")
        for r in results.values():
            r["speedup_vs_reference"] = round(r["windows_per_s"] / ref, 3)
            if public:
                r["speedup_vs_public_code"] = round(r["windows_per_s"] / public, 2)
        out[name] = {"model": model_cfg.to_dict(), "batch": BATCH, **results}
        if device == "cpu":
            flops = step_flops(model_cfg)
            out[name]["gflop_per_step"] = round(flops / 1e9, 1)
            out[name]["matmul_bound_windows_per_s"] = round(BATCH / (flops / 1e9 / out["gemm_gflops_fp32"]), 2)
        del variants
    return out


def markdown(r: dict) -> str:
    steps = r["steps"]
    m1, m10 = r["memory"]["1x"], r["memory"]["10x"]
    names = {"cached_features": "train step, cached features",
             "wav2vec2_public_code": "baseline: wav2vec2-base in the step, layers 2-11 trained (public code)",
             "wav2vec2_frozen": "baseline: wav2vec2-base in the step, frozen (paper's wording)"}
    lines = [
        "| measurement | value |", "| --- | ---: |",
        f"| loader alone, {r['loader']['num_workers']} workers (windows/s, goal >= 2000) | "
        f"{r['loader']['windows_per_s']:.0f} |",
        f"| loader alone, 1 worker (windows/s) | {r['loader_1_worker']['windows_per_s']:.0f} |",
    ]
    for key, label in names.items():
        lines.append(f"| {label} (s/step; samples/s) | {steps[key]['step_s_best']:.2f}; "
                     f"{steps[key]['samples_per_s']:.2f} |")
    lines += [
        f"| speed-up of cached features vs public-code baseline (goal >= 8x) | "
        f"{r['speedup']['vs_public_code']:.1f}x |",
        f"| speed-up of cached features vs frozen encoder | {r['speedup']['vs_frozen']:.1f}x |",
        f"| loader peak anonymous memory, 1x shards ({m1['shards']} shards, {m1['shard_mb']} MB): "
        f"main / worker MB | "
        f"{m1['main_peak_mb']:.0f} / {max(m1['worker_peak_mb']):.0f} |",
        f"| loader peak anonymous memory, 10x shards ({m10['shards']} shards, {m10['shard_mb']} MB): "
        f"main / worker MB | "
        f"{m10['main_peak_mb']:.0f} / {max(m10['worker_peak_mb']):.0f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed optimiser steps per variant")
    parser.add_argument("--loader-batches", type=int, default=200)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--shards-1x", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_train"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--memory-probe", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (model step speed only on cuda)")
    parser.add_argument("--model-steps", type=int, default=3, help="timed model steps per variant")
    parser.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on CPU (slow without "
                        "native bf16 support)")
    parser.add_argument("--only-model-speed", action="store_true",
                        help="measure the model step speed only and merge it into --out")
    parser.add_argument("--only-startup", action="store_true",
                        help="measure the time to the first training step only and merge it into --out")
    parser.add_argument("--startup-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only_startup:
        return write_startup(args)
    if args.only_model_speed or args.device == "cuda":
        return write_model_speed(args)
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.memory_probe, args.loader_batches, args.loader_workers)))
        return 0

    load_before = os.getloadavg()[0]
    small, large = args.work / "shards_1x", args.work / "shards_10x"
    started = time.perf_counter()
    write_shards(small, args.shards_1x, seed=0)
    write_shards(large, 10 * args.shards_1x, seed=1)
    write_s = time.perf_counter() - started

    report: dict = {"bench": "train", "model": PAPER.to_dict(), "batch": BATCH}
    report["loader"] = bench_loader(small, args.loader_batches, args.loader_workers)
    report["loader_1_worker"] = bench_loader(small, args.loader_batches // 2, 1)
    report["memory"] = {"1x": bench_memory(small, args.loader_batches, args.loader_workers),
                        "10x": bench_memory(large, args.loader_batches, args.loader_workers)}
    report["model_speed"] = {"cpu": bench_model_speed("cpu", args.model_steps, args.cpu_bf16)}
    report["startup"] = bench_startup(args.work, args.threads, args.startup_repeats)
    steps = report["steps"] = bench_steps(small, args.steps)
    cached = steps["cached_features"]["step_s_best"]
    report["speedup"] = {"vs_public_code": round(steps["wav2vec2_public_code"]["step_s_best"] / cached, 2),
                         "vs_frozen": round(steps["wav2vec2_frozen"]["step_s_best"] / cached, 2)}
    report.update({
        "device": "cpu", "torch_threads": args.threads, "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "cpu": cpu_description(), "shard_write_s": round(write_s, 1),
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "notes": "step = loader batch -> diffusion loss -> backward -> clip -> AdamW, fp32 on CPU, "
                 "best of the timed steps (interleaved across variants) after one warm-up each; "
                 "the raw-audio baselines add "
                 "wav2vec2-base on the window's 5 s of audio per sample; memory = peak anonymous memory over "
                 f"{args.loader_batches * BATCH} windows in a fresh process",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(markdown(report))
    print(startup_markdown(report["startup"]))
    print(f"\nwrote {args.out}")
    return 0


def startup_markdown(startup: dict) -> str:
    lines = ["| time to the first training step | 1x shards | 20x shards | 20x / 1x (goal <= 1.10) |",
             "| --- | ---: | ---: | ---: |"]
    one, twenty = startup["1x"], startup["20x"]
    lines.append(f"| shards (MB) | {one['shards']} ({one['shard_mb']:.0f}) | {twenty['shards']} "
                 f"({twenty['shard_mb']:.0f}) | |")
    for kind in ("fresh", "resumed"):
        lines.append(f"| {kind} run: first step, s after train() starts (whole process) | "
                     f"{one[f'{kind}_first_step_s']:.1f} ({one[f'{kind}_process_s']:.1f}) | "
                     f"{twenty[f'{kind}_first_step_s']:.1f} ({twenty[f'{kind}_process_s']:.1f}) | "
                     f"{startup[f'{kind}_ratio_20x_to_1x']:.2f} |")
    lines.append(f"| for comparison: one pass over the whole validation split, s | "
                 f"{one['full_validation_pass']['seconds']:.1f} | {twenty['full_validation_pass']['seconds']:.1f} | "
                 f"{twenty['full_validation_pass']['seconds'] / max(one['full_validation_pass']['seconds'], 1e-9):.2f} |")
    return "\n".join(lines)


def write_startup(args: argparse.Namespace) -> int:
    """Only the start-up rows, merged into an existing results file."""
    report = json.loads(args.out.read_text()) if args.out.is_file() else {"bench": "train"}
    load_before = os.getloadavg()[0]
    startup = bench_startup(args.work, args.threads, args.startup_repeats)
    startup.update(threads=args.threads, cpu=cpu_description(), date=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   load_avg_1min={"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)})
    report["startup"] = startup
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(startup_markdown(startup))
    print(f"\nwrote {args.out}")
    return 0


def write_model_speed(args: argparse.Namespace) -> int:
    """Only the model step speed on ``args.device``, merged into an existing results file."""
    report = json.loads(args.out.read_text()) if args.out.is_file() else {"bench": "train"}
    speed = bench_model_speed(args.device, args.model_steps, args.cpu_bf16)
    speed["threads"] = args.threads
    speed["load_avg_1min"] = round(os.getloadavg()[0], 2)
    speed["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    speed["cpu"] = cpu_description()
    if args.device == "cuda":
        speed["gpu"] = torch.cuda.get_device_name()
    report.setdefault("model_speed", {})[args.device] = speed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    for name in ("paper", "public_trainer"):
        for variant, r in speed[name].items():
            if isinstance(r, dict) and "windows_per_s" in r:
                print(f"{args.device} {name} {variant}: {r['windows_per_s']} windows/s, "
                      f"{r['step_s_best']} s/step, {r['speedup_vs_reference']}x the reference"
                      + (f", {r['speedup_vs_public_code']}x the public code" if "speedup_vs_public_code" in r else ""))
        if "matmul_bound_windows_per_s" in speed[name]:
            print(f"{name}: {speed[name]['gflop_per_step']} GFLOP/step; at {speed['gemm_gflops_fp32']} GFLOP/s "
                  f"(best fp32 GEMM here) at most {speed[name]['matmul_bound_windows_per_s']} windows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
