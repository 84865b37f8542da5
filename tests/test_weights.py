"""The weights registry: checks, the one missing-weights error, random mode, weight ids, the CLI."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import weights as W
from pipeline.media import REPO_ROOT


def make_folder_entry(root: Path, name: str) -> Path:
    folder = root / W.REGISTRY[name].path
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def make_file_entry(root: Path, name: str, content: bytes = b"x") -> Path:
    path = root / W.REGISTRY[name].path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_registry_entries_are_complete():
    assert {"liveportrait_motion_extractor", "syncnet_v2", "insightface_det_10g", "insightface_2d106det",
            "chinese_hubert_base", "wav2vec2_base_960h", "qalign_one_align"} <= set(W.REGISTRY)
    for name, w in W.REGISTRY.items():
        assert w.name == name and w.source and w.licence
        assert set(w.required_by) <= {"pipeline", "trainer", "renderer"} and w.required_by
        assert w.hf_repo or w.url, name
        assert w.sha256 is None or (len(w.sha256) == 64 and int(w.sha256, 16) >= 0)
        assert (w.kind == "hf_cache") == (w.path == "")
    me = W.REGISTRY["liveportrait_motion_extractor"]
    assert (me.size, me.hf_repo, me.path) == (112_545_506, "KwaiVGI/LivePortrait",
                                              "liveportrait/base_models/motion_extractor.pth")
    assert W.REGISTRY["syncnet_v2"].size is None and "robots.ox.ac.uk" in W.REGISTRY["syncnet_v2"].url
    assert "non-commercial" in W.REGISTRY["insightface_det_10g"].licence
    amt = W.REGISTRY["amt_s"]  # fetched from the URL: the file sits at the Hugging Face repository's root
    assert (amt.path, amt.url) == ("amt/amt-s.pth", "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth")
    assert amt.hf_repo is None and "CC BY-NC 4.0" in amt.licence


def test_weights_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path))
    assert W.weights_root() == tmp_path.resolve()
    monkeypatch.delenv(W.ENV_VAR)
    assert W.weights_root() == (Path.cwd() / "weights").resolve()


def test_check_statuses(tmp_path):
    assert W.check("syncnet_v2", tmp_path).status == "missing"
    make_file_entry(tmp_path, "syncnet_v2")
    assert W.check("syncnet_v2", tmp_path).ok  # size unknown: existence is enough here

    folder = tmp_path / W.REGISTRY["wav2vec2_base_960h"].path
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"w")
    assert W.check("wav2vec2_base_960h", tmp_path).status == "incomplete"  # no preprocessor_config.json
    (folder / "preprocessor_config.json").write_text("{}")
    assert W.check("wav2vec2_base_960h", tmp_path).ok

    path = make_file_entry(tmp_path, "liveportrait_motion_extractor", b"too short")
    c = W.check("liveportrait_motion_extractor", tmp_path)
    assert c.status == "wrong_size" and "112,545,506" in c.detail
    with open(path, "wb") as f:  # right size, wrong content (sparse file)
        f.truncate(112_545_506)
    assert W.check("liveportrait_motion_extractor", tmp_path).status == "wrong_sha256"
    assert W.check("liveportrait_motion_extractor", tmp_path, hash_files=False).ok


def test_resolve_raises_one_error_naming_every_missing_required_file(tmp_path):
    with pytest.raises(W.MissingWeightsError) as err:
        W.resolve("insightface_det_10g", tmp_path)
    e = err.value
    required = [n for n, w in W.REGISTRY.items() if not w.optional]
    assert e.names == ["insightface_det_10g"] + required
    assert [c.name for c in e.checks] == ["insightface_det_10g"] and [c.name for c in e.also] == required
    message = str(e)
    assert message.index("insightface_det_10g") < message.index("other required weights missing too")
    for n in e.names:
        assert n in message
    assert str(tmp_path / "insightface/models/buffalo_l/det_10g.onnx") in message
    expected_cmd = (f"python -m models.weights fetch --weights-dir {tmp_path.resolve()} "
                    f"--only {' '.join(e.names)}")
    assert e.fetch_command == expected_cmd and expected_cmd in message
    copy = pickle.loads(pickle.dumps(e))  # survives the trip from a worker process
    assert str(copy) == message and copy.names == e.names


def test_require_returns_paths_and_names_only_what_is_missing(tmp_path):
    make_file_entry(tmp_path, "syncnet_v2")
    make_folder_entry(tmp_path, "chinese_hubert_base")
    paths = W.require(["syncnet_v2", "chinese_hubert_base"], tmp_path)
    assert paths == {"syncnet_v2": tmp_path.resolve() / "syncnet/syncnet_v2.model",
                     "chinese_hubert_base": tmp_path.resolve() / "audio/chinese-hubert-base"}
    with pytest.raises(W.MissingWeightsError) as err:
        W.require(["syncnet_v2", "liveportrait_motion_extractor"], tmp_path)
    assert err.value.names == ["liveportrait_motion_extractor"]


def test_weights_for_config_values(tmp_path):
    assert W.weights_for("syncnet_v2", W.RANDOM, tmp_path) == W.RANDOM
    with pytest.raises(W.MissingWeightsError):
        W.weights_for("syncnet_v2", None, tmp_path)
    path = make_file_entry(tmp_path, "syncnet_v2")
    assert W.weights_for("syncnet_v2", None, tmp_path) == path.resolve()
    assert W.weights_for("syncnet_v2", str(path)) == path
    with pytest.raises(FileNotFoundError):
        W.weights_for("syncnet_v2", tmp_path / "nope.model")
    with pytest.raises(KeyError, match="unknown weights"):
        W.resolve("no_such_model", tmp_path)


def test_weight_id_is_sha256_and_tracks_changes(tmp_path):
    assert W.weight_id(W.RANDOM) == "random"
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello")
    assert W.weight_id(path) == hashlib.sha256(b"hello").hexdigest()
    path.write_bytes(b"hello world")
    assert W.weight_id(path) == hashlib.sha256(b"hello world").hexdigest()
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    first = W.weight_id(folder)
    assert first == W.weight_id(folder) and len(first) == 64
    (folder / "model.safetensors").write_bytes(b"w")
    assert W.weight_id(folder) != first
    with pytest.raises(FileNotFoundError):
        W.weight_id(tmp_path / "missing")


def test_warn_random_is_loud(caplog):
    with caplog.at_level(logging.WARNING, logger="models.weights"):
        W.warn_random("syncnet_v2")
    text = caplog.text
    assert "RANDOM WEIGHTS" in text and "syncnet_v2" in text and "'random'" in text
    assert len(text.splitlines()) >= 5


def test_cli_list_and_verify(tmp_path, capsys):
    assert W.main(["list", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in W.REGISTRY:
        assert name in out
    assert W.main(["verify", "--weights-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.count("missing") >= 6 and "python -m models.weights fetch" in out
    make_file_entry(tmp_path, "syncnet_v2")
    make_folder_entry(tmp_path, "chinese_hubert_base")
    assert W.main(["verify", "--weights-dir", str(tmp_path), "--only", "syncnet_v2", "chinese_hubert_base"]) == 0
    out = capsys.readouterr().out
    assert "all required weights ok" in out and out.count("\nok ") == 2
    with pytest.raises(SystemExit, match="unknown weights"):
        W.main(["verify", "--only", "nonsense"])


def test_fetch_fails_clearly_without_network(tmp_path):
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", TH_WEIGHTS_URL_TIMEOUT="2")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "models.weights", "fetch", "--weights-dir", str(tmp_path),
         "--only", "liveportrait_motion_extractor", "wav2vec2_base_960h"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert time.monotonic() - start < 30
    assert proc.returncode == 1
    assert "FAILED to fetch liveportrait_motion_extractor" in proc.stderr
    assert "FAILED to fetch wav2vec2_base_960h" in proc.stderr
    assert "cannot reach http://127.0.0.1:9" in proc.stderr and "no internet access" in proc.stderr
    assert not any(tmp_path.rglob("*.pth"))
