"""The GPU figures in one command: trainer, renderer and the job with every model filter, on one GPU
in under 8 minutes, with random weights of the official architectures and the real media kit.

    .venv/bin/python bench/gpu.py [--out bench/results/gpu.json] [--only trainer,renderer,job]
    .venv/bin/python bench/gpu.py --dry-run     # the same code on the CPU at tiny sizes (CI runs it)
    bench/gpu.sh                                # the prepared command: environment, time limit, this

Each section (``bench.gpu_sections``) runs in a process of its own under its own time limit
(``BUDGET_S``): a section that fails or runs out of time records its error and what it measured so
far, and the run goes on. Writes one JSON (its keys are ``expected_keys()`` in a full run and in a
dry run alike) with the goals, whether each was met and, where not, which stage bounds it; prints
a markdown table. Needs nothing from outside the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "gpu.json"
# Seconds per section on one H100 with 16 cores; 440 s together, the rest is Python's start-ups.
BUDGET_S = {"trainer": 170, "renderer": 90, "job": 180}
DRY_BUDGET_S = {"trainer": 200, "renderer": 200, "job": 300}  # 2 shared CPU cores
GOALS = {
    "trainer_paper_windows_per_s": ">= 1000",
    "trainer_paper_over_public_step": ">= 100",
    "renderer_rtf_models_loaded": "<= 0.05",
    "job_hours_video_per_gpu_hour_running": ">= 20",
}
LEAF_MAPS = ("stage_seconds", "model")  # maps whose keys are data (stage names, config fields)


# ----------------------------------------------------------------------------- one section, in a child

def run_section(name: str, dry_run: bool, part: Path, budget_s: float) -> None:
    """The child's side: measure one section, writing its results to ``part`` as they come."""
    import torch

    from bench.gpu_sections import DRY, FULL, SECTIONS

    sizes = DRY if dry_run else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("PyTorch sees no CUDA device here (bench/gpu.py --dry-run runs on the CPU)")
    torch.set_num_threads(2 if dry_run else min(16, os.cpu_count() or 1))
    # leave the last tenth of the budget to finish the measurement under way and write it
    deadline = time.perf_counter() + 0.9 * budget_s

    def save(result: dict) -> None:
        tmp = part.with_name(part.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(part)

    save(SECTIONS[name](sizes, deadline, save))


def kill_tree(pid: int) -> None:
    """End a section's process and every process it started (Ray's too), each by its pid."""
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def section(name: str, dry_run: bool, budget_s: float, work: Path) -> dict:
    """Run one section in a child process under ``budget_s``; its results, or what it measured
    before failing with the error and the end of its log."""
    part, log = work / f"{name}.json", work / f"{name}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--part", str(part),
            "--budget", str(budget_s), *(["--dry-run"] if dry_run else [])]
    started = time.perf_counter()
    with log.open("wb") as sink:
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            code = child.wait(timeout=budget_s)
            error = None if code == 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            kill_tree(child.pid)
            child.wait()
            error = f"timed out after {budget_s:g} s"
    result: dict[str, Any] = json.loads(part.read_text()) if part.is_file() else {}
    status = {"status": "ok" if error is None else "error", "error": error, "wall_s": round(time.perf_counter() - started, 1),
              "budget_s": budget_s}
    if error is not None:
        status["log_tail"] = log.read_text(errors="replace")[-2000:]
    print(f"{name}: {status['status']} in {status['wall_s']} s" + (f" ({error})" if error else ""), flush=True)
    return {**result, **status}


# ----------------------------------------------------------------------------- the report

def dig(tree: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def goal(name: str, value: float | None, bound_by: str | None) -> dict:
    """A goal, its value, whether it was met and, where not, what bounds it (None: not measured)."""
    op, target = GOALS[name].split()
    met = None if value is None else (value >= float(target) if op == ">=" else value <= float(target))
    return {"goal": GOALS[name], "value": value, "met": met, "bound_by": None if met else bound_by}


def goals(report: dict) -> dict:
    trainer, animate, job = report["trainer"], dig(report, "renderer", "animate") or {}, report["job"]
    return {
        "trainer_paper_windows_per_s": goal("trainer_paper_windows_per_s", dig(trainer, "summary", "paper_best_windows_per_s"),
                                            dig(trainer, "summary", "paper_best_bound_by")),
        "trainer_paper_over_public_step": goal("trainer_paper_over_public_step",
                                               dig(trainer, "summary", "paper_best_over_public_step"),
                                               dig(trainer, "summary", "paper_best_bound_by")),
        "renderer_rtf_models_loaded": goal("renderer_rtf_models_loaded", animate.get("rtf_models_loaded"),
                                           animate.get("bound_by")),
        "job_hours_video_per_gpu_hour_running": goal("job_hours_video_per_gpu_hour_running",
                                                     job.get("hours_video_per_gpu_hour_running"),
                                                     job.get("bounding_stage")),
    }


def key_paths(tree: Any, prefix: str = "") -> set[str]:
    """Every key path of a result (``a.b``; list items as ``a[]``), maps of data keys as leaves."""
    paths: set[str] = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            if key not in LEAF_MAPS:
                paths |= key_paths(value, path)
    elif isinstance(tree, list) and tree and isinstance(tree[0], dict):
        for item in tree:
            paths |= key_paths(item, prefix + "[]")
    return paths


def expected_keys() -> set[str]:
    """The result file's key paths when every section succeeds, in a full run and a dry run alike."""
    return set(json.loads((ROOT / "bench" / "gpu_keys.json").read_text()))


def machine() -> dict:
    import torch

    from bench.machine import cpu_description

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "gpu_count": torch.cuda.device_count(), "cpu": cpu_description(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "not measured" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def markdown(report: dict) -> str:
    lines = [f"GPU figures ({'DRY RUN on the CPU, tiny sizes: not GPU figures' if report['dry_run'] else report['machine']['gpu']})",
             "", "| measurement | value |", "| --- | ---: |"]
    for config in ("paper", "public_trainer"):
        for variant, r in (dig(report, "trainer", config) or {}).items():
            if isinstance(r, dict) and "windows_per_s" in r:
                lines.append(f"| trainer, {config} config, {variant}: windows/s; step ms | "
                             f"{r['windows_per_s']:g}; {1000 * r['step_s_best']:.2f} |")
    for row in dig(report, "renderer", "rows") or []:
        lines.append(f"| renderer W+G, {row['precision']}, batch {row['batch']}: frames/s | {row['frames_per_s']:g} |")
    animate = dig(report, "renderer", "animate") or {}
    for key in ("rtf_models_loaded", "rtf_with_model_loading"):
        lines.append(f"| training.animate on {fmt(animate.get('audio_s'))} s of speech: {key} | {fmt(animate.get(key))} |")
    job = report["job"]
    for key in ("hours_video_per_gpu_hour_running", "hours_video_per_gpu_hour_end_to_end", "gpu_busy_fraction",
                "bounding_stage"):
        lines.append(f"| job, every filter, Q-Align {dig(job, 'qalign', 'size')}: {key} | {fmt(job.get(key))} |")
    lines += ["", "| goal | target | value | met | bound by |", "| --- | --- | ---: | --- | --- |"]
    for name, g in report["goals"].items():
        lines.append(f"| {name} | {g['goal']} | {fmt(g['value'])} | {fmt(g['met'])} | {fmt(g['bound_by'])} |")
    for name in ("trainer", "renderer", "job"):
        if report[name]["status"] != "ok":
            lines.append(f"\n{name} FAILED: {report[name]['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"result file (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--dry-run", action="store_true", help="the same code path on the CPU at tiny sizes")
    parser.add_argument("--only", default="trainer,renderer,job", help="comma-separated sections to run")
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        run_section(args.section, args.dry_run, args.part, args.budget)
        return 0

    import tempfile

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("PyTorch sees no CUDA device here; --dry-run runs the same code on the CPU")
    budgets = DRY_BUDGET_S if args.dry_run else BUDGET_S
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(budgets)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(budgets)}")
    started = time.perf_counter()
    report: dict[str, Any] = {"bench": "gpu", "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for name in budgets:
            report[name] = section(name, args.dry_run, budgets[name], Path(tmp)) if name in only else \
                {"status": "skipped", "error": "not in --only", "wall_s": 0.0, "budget_s": budgets[name]}
    report["machine"] = machine()
    report["weights"] = "random, official architectures (speed does not depend on the values)"
    report["goals"] = goals(report)
    report["total_wall_s"] = round(time.perf_counter() - started, 1)
    paths = key_paths(report)
    report["schema"] = {"missing": sorted(expected_keys() - paths), "extra": sorted(paths - expected_keys())}
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwrote {out} in {report['total_wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
