"""``make quickstart`` end to end, at tiny settings: footage -> shards -> audit -> training -> motion ->
a talking video -> a test set from the validation split -> the benchmark, each step on what the one
before wrote."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import av
import pandas as pd
import pytest
import torch

from tests.conftest import media  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def quickstart_module():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quickstart_runs_end_to_end(media, tmp_path):  # noqa: F811
    out = tmp_path / "quickstart"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--tiny", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    times = json.loads((out / "times.json").read_text())
    assert list(times["seconds"]) == [name for name, _ in quickstart_module().steps("OUT", "MEDIA")]

    clips = pd.read_parquet(out / "data" / "manifests" / "clips.parquet")
    kept = clips[clips["kept"]]
    assert set(kept["split"]) == {"train", "val"}  # wherever the clone lives
    assert (out / "data" / "report.html").stat().st_size > 0
    state = torch.load(out / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 10

    speech_s = 10.65
    assert len(__import__("numpy").load(out / "motion.npy")) == math.ceil(speech_s * 25 - 1e-6)
    with av.open(str(out / "talking.mp4")) as video:
        assert [s.type for s in video.streams] == ["video", "audio"]
        assert sum(1 for _ in video.decode(video=0)) == 2

    items = pd.read_csv(out / "testset" / "test_set.csv")
    val_sources = set(kept.loc[kept["split"] == "val", "source"])
    assert len(items) == 1 and len(val_sources) == 1
    results = json.loads((out / "benchmark" / "results.json").read_text())
    assert Path(results["checkpoint"]).resolve() == (out / "run" / "checkpoint.pt").resolve()
    assert len(results["items"]) == 1 and "Sync-C" in (out / "benchmark" / "results.md").read_text()
