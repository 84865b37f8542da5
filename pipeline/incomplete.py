"""Items that still failed for infrastructure reasons, and the chunks they leave incomplete.

A chunk with such an item gets no done file: the next run redoes those items, takes the rest
back from the chunk's journal (``pipeline.spill``), and since a chunk's outputs depend only on its
inputs and settings (shards in a fixed order), writes the chunk a clean run writes. What failed
is kept in ``OUT/incomplete/chunk-NNNNNN.json`` (one item per line of its ``items``: step, source,
span, error kind, error, attempts) for the run's summary and the audit, and removed once the
chunk is done. Nothing of an incomplete chunk is rejected for it.
"""
from __future__ import annotations

import json
import shlex
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from pipeline.outdir import OutputDir

INCOMPLETE_DIR = "incomplete"
EXIT_INCOMPLETE = 3  # some chunks hold retryable failures: run the same command again


class ErrorBudgetExceeded(RuntimeError):
    """More of the run's videos failed for infrastructure reasons than ``run.error_budget`` allows."""


class ResultsLost(RuntimeError):
    """Finished clips of a chunk were lost with their node before the chunk was written."""

    def __init__(self, chunk: int, clip_ids: list[str]):
        super().__init__(f"chunk {chunk}: {len(clip_ids)} finished clips were lost before writing")
        self.chunk, self.clip_ids = chunk, clip_ids


@dataclass(frozen=True)
class Retryable:
    step: str                # plan | prepare | model | write | identity
    source: str
    start_s: float | None    # None: the whole video
    end_s: float | None
    kind: str                # pipeline.faults kind: worker_died, out_of_memory, timeout...
    error: str
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def incomplete_name(chunk: int) -> str:
    return f"{INCOMPLETE_DIR}/chunk-{chunk:06d}.json"


def write_incomplete(out: OutputDir, chunk: int, items: list[Retryable]) -> None:
    record = {"chunk": chunk, "items": [i.as_dict() for i in items]}
    out.write_bytes(incomplete_name(chunk), json.dumps(record, indent=1, sort_keys=True).encode())


def clear_incomplete(out: OutputDir, chunk: int) -> None:
    out.remove(incomplete_name(chunk))


def read_incomplete(out: OutputDir) -> dict[int, list[Retryable]]:
    """chunk -> its retryable items, for every chunk recorded incomplete."""
    records = {}
    for name in out.list(INCOMPLETE_DIR):
        if name.endswith(".json"):
            record = json.loads(out.read_bytes(name))
            records[int(record["chunk"])] = [Retryable(**item) for item in record["items"]]
    return records


def rerun_command(argv: Iterable[str] | None = None) -> str:
    """The job's command line with these arguments (default: this process's): running it again
    redoes what is missing."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in ["python", "pipeline/build_shards.py", *args])


def summary_line(records: dict[int, list[Retryable]], pending: int, rerun: str) -> str:
    """One line: how many items in how many chunks, which error kinds, and what to run."""
    items = [i for chunk in records.values() for i in chunk]
    kinds = Counter(i.kind for i in items)
    listed = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"
    return (f"INCOMPLETE: {len(items)} retryable items ({listed}) in {len(records)} chunks; "
            f"{pending} chunks not done; run again to redo them: {rerun}")
