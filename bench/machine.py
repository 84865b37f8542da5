"""Which CPU a benchmark ran on: results from different machines do not compare, so each says."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from training.run import cpu_has_amx


def cpu_description() -> dict[str, Any]:
    """CPU model name, core count, and whether it has AMX (where training runs bf16 autocast by default)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    number = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model\t")), "")
    return {"model": model, "model_number": number, "cores": os.cpu_count(), "amx": cpu_has_amx()}
