"""Does ``training.run`` learn to move a face with speech? Train on the synthetic world and measure.

    .venv/bin/python bench/learn.py [--minutes 18 | --paper-steps N] [--skip-paper] [--work DIR] [--out bench/results/learn.json]
    .venv/bin/python bench/learn.py --resample ddpm:50   # the last paper run, another sampler
    .venv/bin/python bench/learn.py --resample ddim:10 --no-ema   # ... its raw weights
    .venv/bin/python bench/learn.py --rescore            # the last paper run, scored again by today's measures
    .venv/bin/python bench/learn.py --by-step            # the last paper run, denoised at each noise level
    .venv/bin/python bench/learn.py --study              # the reduced model: world size x steps
    .venv/bin/python bench/learn.py --pose-study         # pose normalisation x pose loss term

Builds the world of ``tests/synthetic_world.py`` (real speech, known mouth mapping), trains with the
real ``training.run`` code path (the small model the test suite trains, then, unless
``--skip-paper``, the paper model of configs/train.yaml), then generates motion for held-out speech through
``training.sample``'s real path (checkpoint -> EMA model -> sliding windows, CFG, cross-fade ->
denormalised 70-dim motion) and measures:

* ``mouth_corr``: Pearson correlation of the generated lip dims with the world's true ones at the
  default CFG scale (2), and per scale 1, 2, 4; ``null_corr``: the same for the audio-dropped
  (null-token) prediction, which must be near 0;
* no collapse: per-dim temporal std of generated motion over the world's (goal 0.5x-2x),
  averaged over ``STD_SEEDS`` samples of the held-out speech, and head pose that differs between
  seeds;
* no flicker: the same ratio for the fast part of the motion (what a 6-frame Gaussian does not
  keep, ``training.motion_metrics.band_std``), ``fast_std_ratio`` its median over dims (goal <= 2),
  and for the slow part;
* ``boundary_velocity_ratio``: frame-to-frame velocity where sliding windows join over the median
  velocity inside windows, with the cross-fade (and without, ``..._no_blend``);
* train and validation loss curves read back from the run's TensorBoard log.

Writes bench/results/learn.json (or --out) and PNG plots beside it, named after it. ``--study``
trains the reduced model on worlds of 24 and 96 training clips for 400 to 6,400 steps (``STUDY``):
whether motion that does not depend on the audio collapses towards the mean because the world is
small (memorised) or the run short, rather than because of the sampler.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_description  # noqa: E402
from pipeline.media import media_dir  # noqa: E402
from shards.vector import ANGLE_DIMS, EXP_DIMS, POSE_DIMS  # noqa: E402
from tests.synthetic_world import MOUTH_DIMS, World, WorldClip, build_world, world_std  # noqa: E402
from training.diffusion import window_joins  # noqa: E402
from training.motion_metrics import BAND_SIGMA, band_std  # noqa: E402
from training.run import run_from_args  # noqa: E402
from training.sample import MotionGenerator, load_generator  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "learn.json"
DEFAULT_CFG_SCALE = 2.0  # training.sample's --cfg-scale default
CFG_SCALES = (1.0, 2.0, 4.0)
# Sampling seeds the std ratios average over. One sample of the 101 s of held-out speech is a noisy
# estimate: a dim's ratio moves by about 0.15 (std) from seed to seed, so one seed's count of dims
# in range moved from 62 to 69 of 70 for one checkpoint.
STD_SEEDS = 4
HEADLINE = ("mouth_corr", "null_corr", "boundary_velocity_ratio")  # top-level keys of the report

# The small model and short schedule the test suite trains (a few minutes on 2 CPU cores).
REDUCED = ["model.width=64", "model.layers=2", "model.heads=4", "model.w_pre=10", "model.w_cur=40",
           "optim.lr=2e-3", "optim.warmup_steps=30", "optim.ema_beta=0.98", "optim.ema_update_after=20",
           "data.batch_size=16", "data.num_workers=0", "train.val_every=100", "train.val_batches=4",
           "train.log_every=10", "train.threads=1", "train.progress=false"]
# The paper model at its defaults, with a schedule that fits a CPU bench of minutes.
# Both cores compute (the loader, in the main process, costs milliseconds a batch).
PAPER = ["optim.lr=5e-4", "optim.warmup_steps=20", "optim.ema_beta=0.995", "optim.ema_update_after=20",
         "data.num_workers=0", "train.val_every=50", "train.val_batches=4", "train.log_every=10",
         "train.threads=2", "train.progress=false"]


# ----------------------------------------------------------------------------- training

def train_on_world(world: World, run_dir: Path, overrides: list[str], max_steps: int,
                   max_seconds: float | None = None) -> dict[str, Any]:
    """Train with ``training.run`` exactly as its command line does; returns the run's summary.

    With ``max_seconds``, a short probe run times a step first and ``max_steps`` is cut to fit.
    """
    args = ["--shards", str(world.root), "--out", str(run_dir), f"model.audio_dim={world.feature_dim}"]
    steps = max_steps
    if max_seconds is not None:
        probe = run_from_args(args[:3] + [str(run_dir.with_name(run_dir.name + "_probe"))] + args[4:]
                              + overrides + ["train.max_steps=6", "train.val_batches=0"])
        step_s = probe["elapsed_s"] / max(1, probe["steps_run"])
        steps = max(20, min(max_steps, int(max_seconds / step_s)))
    return run_from_args(args + overrides + [f"train.max_steps={steps}", f"train.ckpt_every={steps}"])


def loss_curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """Every scalar the run logged under train/loss and val/*, from its TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t == "train/loss" or t.startswith("val/")]
    # One point per step (the last written), should a log hold a step twice.
    curves = {tag: {e.step: round(e.value, 5) for e in acc.Scalars(tag)} for tag in tags}
    return {tag: [[step, value] for step, value in sorted(points.items())] for tag, points in curves.items()}


# ----------------------------------------------------------------------------- metrics

def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


GROUPS = {"expression": EXP_DIMS, "mouth": list(MOUTH_DIMS), "pose": POSE_DIMS}


def by_group(ratio: np.ndarray) -> dict[str, dict[str, float]]:
    """Min, median and max of a per-dim (70,) ratio over each of ``GROUPS``."""
    return {name: {"min": round(float(ratio[idx].min()), 3), "median": round(float(np.median(ratio[idx])), 3),
                   "max": round(float(ratio[idx].max()), 3)} for name, idx in GROUPS.items()}


def mouth_correlation(generated: list[np.ndarray], clips: list[WorldClip]) -> float:
    """Mean over the lip dims of the correlation, over all held-out frames, with the known mapping."""
    gen = np.concatenate([g[:, list(MOUTH_DIMS)] for g in generated])
    true = np.concatenate([c.mouth for c in clips])
    return float(np.mean([pearson(gen[:, j], true[:, j]) for j in range(len(MOUTH_DIMS))]))


def boundary_velocity(motion: np.ndarray, scale: np.ndarray, w_pre: int, w_cur: int,
                      blend: bool) -> tuple[list[float], list[float]]:
    """Per-frame velocity (RMS over dims of the step, in units of the world's std) at the steps where
    the output passes from one window to the next (``training.diffusion.window_joins``: with the
    cross-fade, into and out of each fade), and everywhere else."""
    velocity = np.sqrt(np.mean((np.diff(motion, axis=0) / scale) ** 2, axis=1))  # velocity[i]: i -> i+1
    joins = set(window_joins(len(motion), w_pre, w_cur, blend))
    inside = [v for i, v in enumerate(velocity) if i not in joins]
    return [float(velocity[i]) for i in sorted(joins)], inside


def std_ratio(by_seed: list[list[np.ndarray]], truth_std: np.ndarray) -> np.ndarray:
    """(70,) temporal std of generated motion over the world's: each generated clip's std per dim,
    averaged over the clips and the sampling seeds (``by_seed[seed][clip]``, (T, 70) each)."""
    return np.mean([g.std(0) for motions in by_seed for g in motions], axis=0) / np.maximum(truth_std, 1e-8)


def in_range(ratio: np.ndarray, low: float = 0.5, high: float = 2.0) -> float:
    """The share of dims whose ratio lies within [low, high] (the no-collapse goal)."""
    return round(float(np.mean((ratio >= low) & (ratio <= high))), 3)


def generate_all(generator: MotionGenerator, clips: list[WorldClip], sample: dict[str, Any],
                 cfg_scale: float, seed: int = 0, blend: bool = True) -> list[np.ndarray]:
    return [generator.motion(c.features, cfg_scale=cfg_scale, seed=seed, blend=blend, **sample)
            for c in clips]


def evaluate(checkpoint: Path, world: World, sample: dict[str, Any],
             scales: tuple[float, ...] = CFG_SCALES, full: bool = True, use_ema: bool = True) -> dict[str, Any]:
    """Generate held-out motion through training.sample's path and score it against the world."""
    generator = load_generator(checkpoint, use_ema=use_ema)
    clips = world.held_out
    cfg = generator.model.cfg
    result: dict[str, Any] = {"sampler": sample, "held_out_seconds": round(sum(len(c.mouth) for c in clips) / 25, 1)}
    started = time.perf_counter()
    by_scale = {s: generate_all(generator, clips, sample, s) for s in scales}
    null = generate_all(generator, clips, sample, 0.0)  # scale 0: the audio-dropped prediction alone
    result["mouth_corr_by_cfg_scale"] = {str(s): round(mouth_correlation(g, clips), 4) for s, g in by_scale.items()}
    result["mouth_corr"] = result["mouth_corr_by_cfg_scale"][str(DEFAULT_CFG_SCALE)]
    result["null_corr"] = round(mouth_correlation(null, clips), 4)
    if not full:
        result["generate_s"] = round(time.perf_counter() - started, 1)
        return result

    default = by_scale[DEFAULT_CFG_SCALE]
    by_seed = [default] + [generate_all(generator, clips, sample, DEFAULT_CFG_SCALE, seed=seed)
                           for seed in range(1, STD_SEEDS)]
    truth_std = world_std(clips)
    ratio = std_ratio(by_seed, truth_std)
    result["std_seeds"] = STD_SEEDS
    result["std_ratio"] = by_group(ratio)
    result["std_ratio_in_0.5_2"] = in_range(ratio)
    result["std_ratio_per_dim"] = [round(float(r), 3) for r in ratio]
    # What one sample would have said: the share in range per seed, and how far a dim's ratio
    # moves between seeds (the median over dims of its std across them).
    per_seed = np.array([std_ratio([motions], truth_std) for motions in by_seed])
    result["std_ratio_in_0.5_2_by_seed"] = [in_range(r) for r in per_seed]
    result["std_ratio_seed_spread"] = round(float(np.median(per_seed.std(0))), 3)
    # The same ratio for the slow and the fast part of the motion: a total std in range can hide
    # motion that is too still and flickers at once (the fast part several times the world's).
    truth_bands = np.mean([band_std(c.vector) for c in clips], axis=0)
    gen_bands = np.mean([band_std(g) for motions in by_seed for g in motions], axis=0)
    bands = gen_bands / np.maximum(truth_bands, 1e-8)
    result["band_std_ratio"] = {"slow": by_group(bands[0]), "fast": by_group(bands[1]),
                                "sigma_frames": BAND_SIGMA}
    result["fast_std_ratio"] = round(float(np.median(bands[1])), 3)
    # Does guidance decide how far the pose moves? Its median ratio per scale, 0 the null prediction.
    result["pose_std_ratio_by_cfg_scale"] = {
        str(scale): round(float(np.median(std_ratio([motions], truth_std)[POSE_DIMS])), 3)
        for scale, motions in {0.0: null, **by_scale}.items()}

    other_seed = by_seed[1]
    pose_a = np.concatenate([g[:, ANGLE_DIMS] for g in default])
    pose_b = np.concatenate([g[:, ANGLE_DIMS] for g in other_seed])
    result["pose_across_seeds"] = {
        "mean_abs_diff_deg": round(float(np.abs(pose_a - pose_b).mean()), 3),
        "world_pose_std_deg": round(float(truth_std[ANGLE_DIMS].mean()), 3),
        "corr_between_seeds": [round(pearson(pose_a[:, j], pose_b[:, j]), 3) for j in range(3)]}

    no_blend = generate_all(generator, clips, sample, DEFAULT_CFG_SCALE, blend=False)
    for name, motions, blend in (("boundary_velocity_ratio", default, True),
                                 ("boundary_velocity_ratio_no_blend", no_blend, False)):
        joins, inside = [], []
        for motion in motions:
            j, i = boundary_velocity(motion, truth_std, cfg.w_pre, cfg.w_cur, blend)
            joins += j
            inside += i
        result[name] = round(float(np.median(joins) / np.median(inside)), 3)
    result["generate_s"] = round(time.perf_counter() - started, 1)
    result["examples"] = {"generated": default[0], "null": null[0], "truth": clips[0].mouth,
                          "no_blend": no_blend[0], "true_vector": clips[0].vector}
    return result


# ----------------------------------------------------------------------------- plots and the command

def plot(result: dict[str, Any], curves: dict[str, list], prefix: Path, tag: str) -> list[str]:
    """The run's motion and loss plots, ``{prefix}_{tag}_motion.png`` and ``..._loss.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = result["examples"]
    paths = []
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    frames = np.arange(len(ex["truth"])) / 25
    axes[0].plot(frames, ex["truth"][:, 0], label="world (true)", color="k")
    axes[0].plot(frames, ex["generated"][:, MOUTH_DIMS[0]], label=f"generated, CFG {DEFAULT_CFG_SCALE}")
    axes[0].plot(frames, ex["null"][:, MOUTH_DIMS[0]], label="null (audio dropped)", alpha=0.7)
    axes[0].set_ylabel("lip kp 14 y offset")
    axes[0].legend(loc="upper right")
    axes[1].plot(frames, ex["true_vector"][:, 68], label="world yaw", color="k")
    axes[1].plot(frames, ex["generated"][:, 68], label="generated yaw")
    axes[1].set_xlabel("held-out clip time (s)")
    axes[1].set_ylabel("degrees")
    axes[1].legend(loc="upper right")
    fig.suptitle(f"{tag}: mouth_corr {result['mouth_corr']}, null_corr {result['null_corr']}")
    fig.tight_layout()
    paths.append(prefix.with_name(f"{prefix.name}_{tag}_motion.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    paths.append(prefix.with_name(f"{prefix.name}_{tag}_loss.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths]


def run_variant(tag: str, world: World, work: Path, overrides: list[str], max_steps: int,
                max_seconds: float | None, sample: dict[str, Any], plots: Path | None) -> dict[str, Any]:
    run_dir = work / f"run_{tag}"
    for old in (run_dir, run_dir.with_name(run_dir.name + "_probe")):  # a fresh run, never a resumed one
        shutil.rmtree(old, ignore_errors=True)
    started = time.perf_counter()
    summary = train_on_world(world, run_dir, overrides, max_steps, max_seconds)
    train_s = time.perf_counter() - started
    result = evaluate(run_dir / "checkpoint.pt", world, sample)
    curves = loss_curves(run_dir)
    result.update(steps=summary["step"], train_s=round(train_s, 1),
                  step_s=round(summary["elapsed_s"] / max(1, summary["steps_run"]), 3),
                  overrides=overrides, loss_curves=curves)
    result["plots"] = plot(result, curves, plots, tag) if plots is not None else []
    result.pop("examples")
    return result


def write_report(report: dict[str, Any], out: Path) -> None:
    """Replace ``out`` in one step, so an interrupted run never leaves half a file."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)


def paper_world(args: argparse.Namespace, report: dict[str, Any] | None = None) -> World:
    """The paper model's world. Scoring a finished run (``report`` its results) needs the world it
    trained on: the held-out clips are drawn after the training clips, so another
    ``--train-clips`` would silently score other clips."""
    trained = (report or {}).get("paper", {}).get("train_clips", args.train_clips)
    if trained != args.train_clips:
        raise SystemExit(f"{args.out} was trained on a world of {trained} training clips; "
                         f"pass --train-clips {trained} (got {args.train_clips})")
    return build_world(args.work / "world768", media_dir(), feature_dim=768, n_train=args.train_clips, n_val=3,
                       n_held_out=args.paper_held_out, seconds=(10.0, 60.0))


def score_last_run(args: argparse.Namespace, report: dict[str, Any], sample: dict[str, Any],
                   **options: Any) -> dict[str, Any]:
    """The last paper run's checkpoint (in --work) evaluated on its world, without the examples."""
    result = evaluate(args.work / "run_paper" / "checkpoint.pt", paper_world(args, report), sample, **options)
    result.pop("examples")
    print(json.dumps({k: v for k, v in result.items() if k != "std_ratio_per_dim"}, indent=1))
    return result


def resample(args: argparse.Namespace) -> int:
    """The last paper run's checkpoint scored again: with another sampler (does the sampler, not
    the model, decide how much the audio-independent motion moves?) or with its raw weights
    instead of the EMA ones (``--no-ema``); added under ``paper.other_samplers``."""
    sampler, steps = args.resample.split(":")
    report = json.loads(args.out.read_text())
    result = score_last_run(args, report, {"sampler": sampler, "steps": int(steps)},
                            scales=(DEFAULT_CFG_SCALE,), use_ema=not args.no_ema)
    key = args.resample + (" no-ema" if args.no_ema else "")
    report["paper"].setdefault("other_samplers", {})[key] = result
    write_report(report, args.out)
    return 0


def rescore(args: argparse.Namespace) -> int:
    """The last paper run's checkpoint scored again with its own sampler by the current measures:
    the evaluation figures of ``paper`` in --out and the headline are replaced, the training
    figures (steps, times, loss curves, plots) and every other key kept."""
    report = json.loads(args.out.read_text())
    result = score_last_run(args, report, report["paper"]["sampler"])
    report["paper"].update(result)
    report["paper"]["rescored"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    report.update({key: result[key] for key in HEADLINE})
    write_report(report, args.out)
    return 0


BY_STEP = (0, 5, 10, 20, 30, 40, 44, 47, 49)
FREE_DIMS = [d for d in range(63) if d not in MOUTH_DIMS]  # expression dims that ignore the audio


def free_corr(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over ``FREE_DIMS`` of the correlation, pooled over windows and frames, of (N, T, 70) arrays."""
    return float(np.mean([pearson(pred[..., d].ravel(), true[..., d].ravel()) for d in FREE_DIMS]))


def by_step(args: argparse.Namespace) -> int:
    """How well the last paper run's network denoises held-out windows at each noise level: the true
    window (true context, its own audio) diffused to step t, denoised once (conditional, EMA
    weights); x0 squared error per frame and dim in normalised units (all dims, the lip dims),
    and the temporal std of the prediction's expression dims over the truth's. Where the network
    cannot pass a nearly clean input through, the error stays high at step 0 and the ratio below 1.
    In the audio-independent expression dims, the correlation of the prediction with the truth
    against that of the noisy input smoothed by a Gaussian of ``BAND_SIGMA`` frames, a linear
    estimate any denoiser can match: where the network falls below it, it ignores what ``x_t``
    holds of the slow motion, and its samples then follow their context's mean rather than a new
    path. Added to --out under ``paper.by_step``."""
    generator = load_generator(args.work / "run_paper" / "checkpoint.pt")
    cfg, norm = generator.model.cfg, generator.normalizer
    windows, audio = [], []
    report = json.loads(args.out.read_text())
    for clip in paper_world(args, report).held_out:
        motion, feats = norm.normalize(clip.vector), norm.normalize_audio(clip.features)
        for start in range(cfg.w_pre, len(motion) - cfg.w_cur, cfg.w_cur):
            windows.append(motion[start - cfg.w_pre:start + cfg.w_cur])
            audio.append(feats[start - cfg.w_pre:start + cfg.w_cur])
    x0, feats = torch.tensor(np.array(windows)).float(), torch.tensor(np.array(audio)).float()
    n, noise = len(x0), torch.Generator().manual_seed(0)
    no = torch.zeros(n, dtype=torch.bool)
    true = x0[:, cfg.w_pre:]
    rows = []
    for t in BY_STEP:
        steps = torch.full((n,), t)
        x_t = generator.diffusion.q_sample(x0, steps, torch.randn(x0.shape, generator=noise))
        with torch.no_grad():
            pred = generator.diffusion.denoise(generator.model, x_t, steps, x0[:, :cfg.w_pre], feats, no, no)
        err = ((pred[:, cfg.w_pre:] - true) ** 2).mean(dim=(0, 1))
        ratio = pred[:, cfg.w_pre:, EXP_DIMS].std(1).mean() / true[..., EXP_DIMS].std(1).mean()
        smoothed = gaussian_filter1d(x_t[:, cfg.w_pre:].numpy(), BAND_SIGMA, axis=1, mode="nearest")
        rows.append({"step": t, "alpha_bar": round(float(generator.diffusion.alphas_cumprod[t]), 4),
                     "x0_mse": round(float(err.mean()), 4), "x0_mse_lips": round(float(err[list(MOUTH_DIMS)].mean()), 4),
                     "expression_std_ratio": round(float(ratio), 3),
                     "free_expression_corr": round(free_corr(pred[:, cfg.w_pre:].numpy(), true.numpy()), 3),
                     "smoothed_input_corr": round(free_corr(smoothed, true.numpy()), 3)})
        print(json.dumps(rows[-1]), flush=True)
    report["paper"]["by_step"] = {"windows": n, "rows": rows}
    write_report(report, args.out)
    return 0


# (training clips, steps, extra overrides) of the collapse study: the same reduced model on a world
# 4x larger, for 4x and 16x the steps, with pose z-scored, without the velocity and smoothness
# losses, without dropout, at a lower learning rate and with more first windows (does the
# audio-independent motion come back with data, training, scaling, losses or regularisation?)
STUDY = ((24, 400, ()), (24, 1600, ()), (96, 1600, ()), (96, 6400, ()),
         (96, 1600, ("data.pose_norm=zscore",)), (96, 1600, ("loss.velocity=0", "loss.smooth=0")),
         (96, 1600, ("model.dropout=0",)), (96, 1600, ("optim.lr=5e-4",)),
         (96, 1600, ("data.first_window_prob=0.5",)))


# (training clips, steps, extra overrides) of the pose study: the paper's loss and JoyVASA's min-max
# pose against pose z-scored with the pose loss term (the defaults), and at twice the reduced width
POSE_STUDY = ((96, 1600, ("data.pose_norm=minmax", "loss.pose=0")),
              (96, 1600, ("data.pose_norm=zscore", "loss.pose=0")),
              (96, 1600, ("data.pose_norm=minmax", "loss.pose=10")),
              (96, 1600, ("data.pose_norm=zscore", "loss.pose=1")),
              (96, 1600, ("data.pose_norm=minmax", "loss.pose=0", "model.width=128")),
              (96, 1600, ("data.pose_norm=zscore", "loss.pose=1", "model.width=128")))


# STUDY ran before pose was z-scored and weighted by default: its rows keep those settings
BEFORE_POSE_BALANCE = ("data.pose_norm=minmax", "loss.pose=0")


def collapse_study(args: argparse.Namespace, sample: dict[str, Any], table: tuple = STUDY,
                   key: str = "reduced_collapse_study", base: tuple = BEFORE_POSE_BALANCE) -> int:
    """The reduced model over ``table``; the compact figures of each go to --out under ``key``
    (its other keys are kept)."""
    rows = []
    worlds: dict[int, World] = {}
    for index, (clips, steps, extra) in enumerate(table):
        if clips not in worlds:
            worlds[clips] = build_world(args.work / f"world32_{clips}", media_dir(), feature_dim=32,
                                        n_train=clips, n_val=3, n_held_out=3, seconds=(10.0, 60.0))
        world = worlds[clips]
        overrides = REDUCED + list(base) + args.set + list(extra)
        r = run_variant(f"study_{index}_{clips}_{steps}", world, args.work, overrides, steps,
                        None, sample, None)
        val = r["loss_curves"].get("val/loss_ema") or r["loss_curves"].get("val/loss") or [[None, None]]
        train = r["loss_curves"].get("train/loss") or [[None, None]]
        minutes = sum(len(c.mouth) for c in world.train) / 25 / 60
        rows.append({"train_clips": clips, "extra_overrides": list(extra), "train_minutes": round(minutes, 1),
                     "steps": r["steps"], "train_s": r["train_s"], "mouth_corr": r["mouth_corr"],
                     "null_corr": r["null_corr"], "std_ratio": r["std_ratio"],
                     "std_ratio_in_0.5_2": r["std_ratio_in_0.5_2"], "fast_std_ratio": r["fast_std_ratio"],
                     "pose_std_ratio_by_cfg_scale": r["pose_std_ratio_by_cfg_scale"],
                     "pose_across_seeds_deg": r["pose_across_seeds"]["mean_abs_diff_deg"],
                     "boundary_velocity_ratio": r["boundary_velocity_ratio"],
                     "last_train_loss": train[-1][1], "last_val_loss": val[-1][1]})
        print(json.dumps(rows[-1]), flush=True)
    report = json.loads(args.out.read_text()) if args.out.exists() else {"bench": "learn"}
    report[key] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "sampler": sample,
                   "overrides": REDUCED + list(base) + args.set, "rows": rows}
    write_report(report, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=18.0, help="training time for the paper model")
    parser.add_argument("--paper-steps", type=int, default=None,
                        help="train the paper model this many steps instead of for --minutes (runs to compare)")
    parser.add_argument("--reduced-steps", type=int, default=400)
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--train-clips", type=int, default=24, help="training clips of the world (10-60 s each)")
    parser.add_argument("--paper-held-out", type=int, default=3, help="held-out clips for the paper model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_learn"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training override added to every variant's (e.g. data.pose_norm=zscore)")
    parser.add_argument("--study", action="store_true",
                        help="only the collapse study: the reduced model at the (clips, steps) of STUDY, "
                             "added to --out under reduced_collapse_study")
    parser.add_argument("--pose-study", action="store_true",
                        help="only the pose study: min-max pose and the paper's loss against z-scored pose "
                             "with the pose loss term (POSE_STUDY), added to --out under pose_balance_study")
    parser.add_argument("--resample", metavar="SAMPLER:STEPS", default=None,
                        help="no training: score the last paper run (in --work) again with another sampler, "
                             "e.g. ddpm:50, added to --out under paper.other_samplers")
    parser.add_argument("--no-ema", action="store_true",
                        help="with --resample: the run's raw weights instead of its EMA ones")
    parser.add_argument("--rescore", action="store_true",
                        help="no training: score the last paper run (in --work) again with its sampler by "
                             "the current measures, replacing its evaluation figures in --out")
    parser.add_argument("--by-step", action="store_true",
                        help="no training: denoise held-out windows once at each noise level with the last "
                             "paper run (in --work), added to --out under paper.by_step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.resample:
        return resample(args)
    if args.rescore:
        return rescore(args)
    if args.by_step:
        return by_step(args)
    if args.study:
        return collapse_study(args, {"sampler": "ddim", "steps": 10})
    if args.pose_study:
        return collapse_study(args, {"sampler": "ddim", "steps": 10}, POSE_STUDY,
                              "pose_balance_study", base=())
    load_before = os.getloadavg()[0]
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    report: dict[str, Any] = {"bench": "learn", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "goals": {"mouth_corr": ">= 0.8 (paper model), >= 0.6 (reduced, test)",
                                        "null_corr": "|r| <= 0.2", "std_ratio": "0.5x-2x",
                                        "fast_std_ratio": "<= 2 (no flicker)",
                                        "boundary_velocity_ratio": "<= 1.2"}}
    sample = {"sampler": "ddim", "steps": 10}
    small_world = build_world(args.work / "world32", media_dir(), feature_dim=32, n_train=args.train_clips, n_val=3,
                              n_held_out=3, seconds=(10.0, 60.0))
    report["reduced"] = run_variant("reduced", small_world, args.work, REDUCED + args.set, args.reduced_steps,
                                    None, sample, args.out.with_suffix(""))
    if not args.skip_paper:
        world = paper_world(args)
        steps, seconds = (args.paper_steps, None) if args.paper_steps else (100_000, args.minutes * 60)
        report["paper"] = run_variant("paper", world, args.work, PAPER + args.set, steps, seconds,
                                      sample, args.out.with_suffix(""))
        report["paper"]["train_clips"] = args.train_clips
        headline = report["paper"]
    else:
        headline = report["reduced"]
    for key in HEADLINE:
        report[key] = headline[key]
    report["load_avg_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    report["cpu"] = cpu_description()
    report.update({k: v for k, v in earlier.items() if k.endswith("_study")})  # --study runs are kept
    write_report(report, args.out)
    print(json.dumps({k: v for k, v in report.items() if k not in ("reduced", "paper")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
