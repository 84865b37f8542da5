"""Judge a checkpoint without rendering: ``python -m training.evaluate``.

::

    python -m training.evaluate --checkpoint CKPT --shards OUT [--max-clips N] [--seeds 3] \\
        [--out report_dir] [--sampler ddim --steps 10] [--cfg-scale 2.0] [--max-frames F] [--no-blend]

For each clip of the validation split (``meta["split"] == "val"``, read through ``shards.reader``)
the model generates motion from the clip's cached audio features once per seed, and the result is
compared with the clip's real motion (:mod:`training.motion_metrics`): per-group L2 distance
(expression, lip keypoints, pose), velocity/acceleration/jerk statistics of generated against real
motion, and diversity across seeds. Clip numbers are averaged weighted by frames. Writes
``report.json``, ``report.md`` (the table also printed to stdout) and PNG plots into ``--out``,
each atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from shards.format import FPS
from shards.reader import decode_sample, iter_raw
from shards.vector import motion_to_vector
from training import sampling
from training.motion_metrics import GROUPS, diversity, dynamics, group_l2
from training.sample import (
    EXIT_BAD_INPUT,
    BadInputError,
    MotionGenerator,
    load_for_sampling,
)
from training.sampling import SamplingOptions
from training.template import atomic_output

log = logging.getLogger(__name__)

VAL_SPLIT = "val"
TABLE_GROUPS = ("expression", "lip", "pose", "angles", "translation")


def val_clips(shards: str | Path, max_clips: int | None = None
              ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(key, real motion (T, 70), audio features (T, D) float32) of validation clips, in shard order."""
    from training.data import find_inputs

    try:
        inputs = find_inputs(shards)
    except FileNotFoundError as exc:
        raise BadInputError(str(exc)) from exc
    yielded = 0
    for path in inputs.shards[VAL_SPLIT]:
        for raw in iter_raw(path):
            if max_clips is not None and yielded >= max_clips:
                return
            try:
                if json.loads(raw.get("json", b"{}")).get("split") != VAL_SPLIT:
                    continue
                sample = decode_sample(raw, with_audio=False)
            except Exception as exc:  # a corrupt sample costs that sample only
                log.warning("skipping sample %s in %s: %s", raw.get("__key__"), path, exc)
                continue
            yield (sample["__key__"], motion_to_vector(sample["motion"]),
                   np.asarray(sample["audio_feat"], dtype=np.float32))
            yielded += 1


def evaluate_clip(generator: MotionGenerator, real: np.ndarray, feat: np.ndarray, seeds: int,
                  options: SamplingOptions) -> dict[str, Any]:
    """Metrics of one clip: per-seed L2 averaged (seeds 0..seeds-1), dynamics of seed 0 and real,
    diversity."""
    generated = [generator.sample(feat, replace(options, seed=s)) for s in range(seeds)]
    l2_per_seed = [group_l2(g, real) for g in generated]
    return {
        "n_frames": len(real),
        "l2": {k: float(np.mean([d[k] for d in l2_per_seed])) for k in GROUPS},
        "generated": dynamics(generated[0]),
        "real": dynamics(real),
        "diversity": diversity(generated),
        "_example": (real, generated[0]),
    }


def weighted_mean(clips: list[dict[str, Any]], path: tuple[str, ...]) -> float:
    """Frame-weighted mean of a nested numeric entry over clips, NaNs ignored."""
    values, weights = [], []
    for clip in clips:
        value = clip
        for key in path:
            value = value[key]
        if np.isfinite(value):
            values.append(value)
            weights.append(clip["n_frames"])
    return float(np.average(values, weights=weights)) if values else float("nan")


def summarise(clips: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"l2": {}, "generated": {}, "real": {}, "diversity": {}}
    for group in GROUPS:
        summary["l2"][group] = weighted_mean(clips, ("l2", group))
        summary["diversity"][group] = weighted_mean(clips, ("diversity", group))
        for side in ("generated", "real"):
            summary[side][group] = {stat: weighted_mean(clips, (side, group, stat))
                                    for stat in clips[0][side][group]}
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per group: L2, velocity/acceleration/jerk generated vs real, diversity."""
    head = ("| group | L2 to real | velocity gen / real | acceleration gen / real | "
            "jerk gen / real | diversity |")
    lines = [head, "|" + " --- |" * 6]
    for group in TABLE_GROUPS:
        gen, real = summary["generated"][group], summary["real"][group]
        cells = [f"{summary['l2'][group]:.4g}"]
        for stat in ("velocity_mean", "acceleration_mean", "jerk_mean"):
            cells.append(f"{gen[stat]:.4g} / {real[stat]:.4g}")
        cells.append(f"{summary['diversity'][group]:.4g}")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure atomically and free it."""
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def save_plots(out_dir: Path, summary: dict[str, Any], example: tuple[str, np.ndarray, np.ndarray]
               ) -> list[Path]:
    """dynamics.png (generated vs real per group) and example.png (one clip's lip and pose curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.motion_metrics import LIP_DIMS

    written = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    x = np.arange(len(TABLE_GROUPS))
    for ax, stat in zip(axes, ("velocity_mean", "acceleration_mean", "jerk_mean")):
        gen = [summary["generated"][g][stat] for g in TABLE_GROUPS]
        real = [summary["real"][g][stat] for g in TABLE_GROUPS]
        ax.bar(x - 0.2, real, 0.4, label="real")
        ax.bar(x + 0.2, gen, 0.4, label="generated")
        ax.set_xticks(x, TABLE_GROUPS, rotation=30)
        ax.set_yscale("log")
        ax.set_title(stat.replace("_mean", " (mean norm per frame)"))
    axes[0].legend()
    fig.tight_layout()
    written.append(_save_figure(fig, out_dir / "dynamics.png"))

    key, real, gen = example
    seconds = np.arange(len(real)) / FPS
    lip_real = np.linalg.norm(real[:, LIP_DIMS] - real[:, LIP_DIMS].mean(0), axis=1)
    lip_gen = np.linalg.norm(gen[:, LIP_DIMS] - real[:, LIP_DIMS].mean(0), axis=1)
    fig, axes = plt.subplots(4, 1, figsize=(11, 8), sharex=True)
    curves = [("lip expression (distance from real mean)", lip_real, lip_gen),
              ("pitch (deg)", real[:, 67], gen[:, 67]), ("yaw (deg)", real[:, 68], gen[:, 68]),
              ("roll (deg)", real[:, 69], gen[:, 69])]
    for ax, (title, r, g) in zip(axes, curves):
        ax.plot(seconds, r, label="real")
        ax.plot(seconds, g, label="generated (seed 0)")
        ax.set_ylabel(title, fontsize=8)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"clip {key}")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    written.append(_save_figure(fig, out_dir / "example.png"))
    return written


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    options = sampling.from_args(args)
    generator = load_for_sampling(args.checkpoint, options)
    clips: list[dict[str, Any]] = []
    example = None
    for key, real, feat in val_clips(args.shards, args.max_clips):
        if args.max_frames:
            real, feat = real[:args.max_frames], feat[:args.max_frames]
        result = evaluate_clip(generator, real, feat, args.seeds, options)
        real_seq, gen_seq = result.pop("_example")
        if example is None:
            example = (key, real_seq, gen_seq)
        clips.append({"key": key, **result})
        log.info("clip %s: %d frames, lip L2 %.4g", key, result["n_frames"], result["l2"]["lip"])
    if not clips:
        raise BadInputError(f"no validation clips (meta split '{VAL_SPLIT}') in {args.shards}")

    summary = summarise(clips)
    report = {
        "checkpoint": str(args.checkpoint), "shards": str(args.shards),
        "settings": {"sampler": options.sampler, "steps": options.n_steps, "cfg_scale": options.cfg_scale,
                     "seeds": args.seeds, "ema": options.ema, "blend": options.blend,
                     "max_frames": args.max_frames},
        "n_clips": len(clips), "n_frames": int(sum(c["n_frames"] for c in clips)),
        "groups": {name: [int(d) for d in dims] for name, dims in GROUPS.items()},
        "summary": summary, "clips": clips,
        "elapsed_s": time.perf_counter() - started,
    }
    out_dir = Path(args.out)
    table = markdown_table(summary)
    write_text(out_dir / "report.json", json.dumps(report, indent=1, default=float))
    write_text(out_dir / "report.md", f"# Evaluation of {args.checkpoint}\n\n{len(clips)} validation "
               f"clips, {report['n_frames']} frames, {args.seeds} seeds, {options.describe()}."
               f"\n\n{table}\n")
    report["plots"] = [str(p) for p in save_plots(out_dir, summary, example)]
    report["table"] = table
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate",
                                description="Compare generated motion with real validation motion.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--shards", required=True, help="pipeline output folder (shards/, stats.json)")
    p.add_argument("--max-clips", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=None, help="evaluate only each clip's first F frames")
    p.add_argument("--seeds", type=int, default=3, help="generations per clip (diversity needs >= 2)")
    p.add_argument("--out", default="eval_report", help="folder for report.json, report.md, plots")
    sampling.add_arguments(p, seed=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        print("error: --seeds must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        report = evaluate(args)
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report["table"])
    print(f"\n{report['n_clips']} clips, {report['n_frames']} frames; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
