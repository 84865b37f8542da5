"""``python -m manifests.audit OUT``: check a pipeline output folder and summarise it.

Exit status: 0 when every check passes, 1 when problems were found (each listed with its shard and
sample key), 2 when the input cannot be audited (no folder, manifests missing or unreadable, a
thresholds file that cannot be applied).

Metadata checks and the shard listing (tar headers only) always run; ``--deep`` also reads every
sample in parallel, one process per shard (checksums, decoding, shapes, dtypes, NaN/Inf, and the
statistics recomputed from the training split). ``--html`` writes a self-contained report;
``--rethreshold`` shows what other thresholds would keep and ``--write-manifest`` saves that
selection as a clip manifest the trainer can read.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from manifests.checks import AuditResult, UnusableOutput, audit, load_output
from manifests.rethreshold import (
    RethresholdError,
    Selection,
    load_rules,
    rethreshold,
    selection_as_dict,
    write_selection,
)
from manifests.summary import format_summary, summarise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m manifests.audit", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="pipeline output folder (shards/, manifests/, stats.json): a path or "
                        "a URI as the job's --output (s3://, gs://; endpoints from AWS_ENDPOINT_URL, "
                        "STORAGE_EMULATOR_HOST)")
    parser.add_argument("--deep", action="store_true", help="read and verify every shard sample")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the shard checks (default: one per CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    parser.add_argument("--rethreshold", type=Path, metavar="THRESHOLDS_YAML",
                        help="show what these thresholds would keep")
    parser.add_argument("--write-manifest", metavar="CLIPS_PARQUET",
                        help="with --rethreshold: write the new selection as a clip manifest")
    parser.add_argument("--max-listed", type=int, default=20,
                        help="problems printed per check in the tables (all are in --json)")
    args = parser.parse_args(argv)
    if args.write_manifest and not args.rethreshold:
        parser.error("--write-manifest needs --rethreshold")
    return args


def format_problems(result: AuditResult, max_listed: int) -> str:
    mode = "deep" if result.deep else "metadata + shard listing"
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    if result.ok:
        return f"Audit ({mode}): OK ({counts})"
    by_check = defaultdict(list)
    for problem in result.problems:
        by_check[problem.check].append(problem)
    lines = [f"Audit ({mode}): {len(result.problems)} problems ({counts})"]
    for check, problems in by_check.items():
        lines.append(f"  {check}: {len(problems)}")
        for p in problems[:max_listed]:
            where = " ".join(part for part in (p.shard, p.key) if part) or "-"
            lines.append(f"    {where}: {p.message}")
        if len(problems) > max_listed:
            lines.append(f"    ... and {len(problems) - max_listed} more")
    return "\n".join(lines)


def format_selection(selection: Selection, written: Path | None) -> str:
    t = selection.totals
    table = selection.by_dataset.reset_index().to_string(index=False, float_format="{:.3f}".format)
    lines = ["Re-thresholding: kept before vs after, per dataset:",
             *("  " + line for line in table.splitlines()),
             (f"  total: {t['clips_before']} clips / {t['hours_before']:.3f} h before, "
              f"{t['clips_after']} clips / {t['hours_after']:.3f} h after "
              f"({t['newly_dropped']} dropped, {t['newly_kept']} newly kept)"),
             f"  would pass but not featurised (needs a pipeline re-run): {t['not_featurised']}",
             f"  not evaluated (a thresholded score is missing; not kept): {t['not_evaluated']}",
             f"  hard rejections kept as they were: {t['hard_rejection']}"]
    if written:
        lines.append(f"  new clip manifest written to {written}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        output = load_output(args.out)
        rules = load_rules(args.rethreshold) if args.rethreshold else None
    except (UnusableOutput, RethresholdError) as exc:
        print(f"audit: unusable input: {exc}", file=sys.stderr)
        return 2

    result = audit(output, deep=args.deep, workers=args.workers)
    summary = summarise(output)
    selection = rethreshold(output.clips, rules) if rules else None
    if selection is not None and args.write_manifest:
        write_selection(output.clips_path, selection, args.write_manifest)
    if args.html:
        from manifests.report import (
            write_report,  # matplotlib and PyAV load only when asked
        )
        write_report(args.html, output, summary, result)

    if args.json:
        report = {"ok": result.ok, "deep": result.deep, "counts": result.counts,
                  "problems": [p.as_dict() for p in result.problems], "summary": summary}
        if selection is not None:
            report["rethreshold"] = selection_as_dict(selection)
        print(json.dumps(report, indent=1, default=str))
    else:
        parts = [format_problems(result, args.max_listed), format_summary(summary)]
        if selection is not None:
            parts.append(format_selection(selection, args.write_manifest))
        if args.html:
            parts.append(f"HTML report written to {args.html}")
        print("\n\n".join(parts))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
