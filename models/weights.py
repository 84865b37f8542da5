"""The registry of every model file the pipeline and trainer use, and how to find, check and fetch them.

Users bring the official weights; nothing here ships them. Each entry says where the file lives under
the weights folder (``$TH_WEIGHTS_DIR``, default ``./weights``), what it should look like (size and/or
sha256 where known), where it comes from and under which licence. A real run asks ``resolve`` or
``require`` for its files and gets one ``MissingWeightsError`` naming every missing file and the exact
``fetch`` command. ``RANDOM`` selects random weights of the official architecture instead: for tests
and smoke runs only, announced loudly by ``warn_random`` and recorded through ``weight_id``.

Command line::

    python -m models.weights list   [--weights-dir D] [--only NAME ...]
    python -m models.weights verify [--weights-dir D] [--only NAME ...] [--no-hash]
    python -m models.weights fetch  [--weights-dir D] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ENV_VAR = "TH_WEIGHTS_DIR"
RANDOM = "random"
URL_TIMEOUT_S = float(os.environ.get("TH_WEIGHTS_URL_TIMEOUT", "30"))

# What an audio-encoder folder must hold for transformers to load it.
FOLDER_CONFIG = "config.json"
# The model's architecture, and the feature extractor's settings that decide its input (models.audio_inputs).
FOLDER_CONFIGS = (FOLDER_CONFIG, "preprocessor_config.json")
FOLDER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FOLDER_ALLOW_PATTERNS = ["*.json", "*.txt", "model.safetensors", "pytorch_model.bin"]


@dataclass(frozen=True)
class WeightFile:
    """One model file (or folder) the project needs.

    ``kind`` says where it lives: ``file`` and ``folder`` under the weights folder at ``path``;
    ``hf_cache`` in the Hugging Face cache that its library (pyiqa) reads itself, ``path`` unused.
    ``size``/``sha256`` are None where the public source does not state them.
    """

    name: str
    kind: Literal["file", "folder", "hf_cache"]
    path: str
    source: str
    licence: str
    required_by: tuple[str, ...]
    optional: bool
    size: int | None = None
    sha256: str | None = None
    hf_repo: str | None = None
    url: str | None = None
    note: str = ""


def liveportrait_renderer_file(name: str, path: str, size: int | None = None,
                               sha256: str | None = None) -> WeightFile:
    """A renderer file of the LivePortrait repository on Hugging Face (used by ``training.animate``)."""
    return WeightFile(
        name=name, kind="file", path=path, hf_repo="KwaiVGI/LivePortrait",
        source=f"https://huggingface.co/KwaiVGI/LivePortrait ({path})", size=size, sha256=sha256,
        licence="MIT (LivePortrait code and weights, as stated on the model card)",
        required_by=("renderer",), optional=True,
        note=("sha256 is the Git LFS object id of the published file" if sha256 else
              "size and sha256 not recorded here: verify checks existence, the loader checks every key"))


# The renderer's files (training.animate). Animals: the same architectures, JoyVASA's folder,
# with the human stitching module; LivePortrait itself now defaults to base_models_v1.1.
RENDERER_FILES = [
    liveportrait_renderer_file("liveportrait_appearance_feature_extractor",
                               "liveportrait/base_models/appearance_feature_extractor.pth", 3_387_959,
                               "5279bb8654293dbdf327030b397f107237dd9212fb11dd75b83dfb635211ceb5"),
    liveportrait_renderer_file("liveportrait_warping_module", "liveportrait/base_models/warping_module.pth",
                               182_180_086, "2f61a6f265fe344f14132364859a78bdbbc2068577170693da57fb96d636e282"),
    liveportrait_renderer_file("liveportrait_spade_generator", "liveportrait/base_models/spade_generator.pth",
                               221_813_590, "4780afc7909a9f84e24c01d73b31a555ef651521a1fe3b2429bd04534d992aee"),
    liveportrait_renderer_file("liveportrait_stitching_retargeting_module",
                               "liveportrait/retargeting_models/stitching_retargeting_module.pth", 2_393_098,
                               "3652d5a3f95099141a56986aaddec92fadf0a73c87a20fac9a2c07c32b28b611"),
    *(liveportrait_renderer_file(f"liveportrait_animals_{part}", f"liveportrait_animals/base_models/{part}.pth")
      for part in ("motion_extractor", "appearance_feature_extractor", "warping_module", "spade_generator")),
]


REGISTRY: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile(
        name="liveportrait_motion_extractor",
        kind="file",
        path="liveportrait/base_models/motion_extractor.pth",
        source="https://huggingface.co/KwaiVGI/LivePortrait (liveportrait/base_models/motion_extractor.pth)",
        hf_repo="KwaiVGI/LivePortrait",
        size=112_545_506,
        sha256="251e6a94ad667a1d0c69526d292677165110ef7f0cf0f6d199f0e414e8aa0ca5",
        licence="MIT (LivePortrait code and weights, as stated on the model card)",
        required_by=("pipeline",),
        optional=False,
        note="sha256 is the Git LFS object id of the published file",
    ),
    *RENDERER_FILES,
    WeightFile(
        name="syncnet_v2",
        kind="file",
        path="syncnet/syncnet_v2.model",
        source="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model "
               "(as fetched by joonson/syncnet_python's download_model.sh)",
        url="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        licence="syncnet_python code MIT; weights released by Oxford VGG for research, check their terms",
        required_by=("pipeline",),
        optional=False,
        note="size and sha256 not published: verify checks existence, load_syncnet checks the keys",
    ),
    WeightFile(
        name="insightface_det_10g",
        kind="file",
        path="insightface/models/buffalo_l/det_10g.onnx",
        source="https://huggingface.co/KwaiVGI/LivePortrait (InsightFace buffalo_l detector)",
        hf_repo="KwaiVGI/LivePortrait",
        size=16_923_827,
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        licence="InsightFace buffalo_l: non-commercial research use only",
        required_by=("pipeline",),
        optional=True,
        note="only for the insightface face backend; the haar backend needs no file",
    ),
    WeightFile(
        name="insightface_2d106det",
        kind="file",
        path="insightface/models/buffalo_l/2d106det.onnx",
        source="https://huggingface.co/KwaiVGI/LivePortrait (InsightFace buffalo_l 106-point landmarks)",
        hf_repo="KwaiVGI/LivePortrait",
        size=5_030_888,
        sha256="f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf",
        licence="InsightFace buffalo_l: non-commercial research use only",
        required_by=("pipeline",),
        optional=True,
        note="only for the insightface face backend",
    ),
    WeightFile(
        name="insightface_w600k_r50",
        kind="file",
        path="insightface/models/buffalo_l/w600k_r50.onnx",
        source="InsightFace buffalo_l model pack (ArcFace ResNet-50 trained on WebFace600K)",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        licence="InsightFace buffalo_l: non-commercial research use only",
        required_by=("pipeline",),
        optional=True,
        note="only for identity.backend insightface; unzip buffalo_l.zip and place w600k_r50.onnx here",
    ),
    WeightFile(
        name="chinese_hubert_base",
        kind="folder",
        path="audio/chinese-hubert-base",
        source="https://huggingface.co/TencentGameMate/chinese-hubert-base",
        hf_repo="TencentGameMate/chinese-hubert-base",
        licence="MIT (model card)",
        required_by=("pipeline", "trainer"),
        optional=False,
        note="audio encoder of the public JoyVASA release; folder with config.json + weights",
    ),
    WeightFile(
        name="wav2vec2_base_960h",
        kind="folder",
        path="audio/wav2vec2-base-960h",
        source="https://huggingface.co/facebook/wav2vec2-base-960h",
        hf_repo="facebook/wav2vec2-base-960h",
        licence="Apache-2.0",
        required_by=("pipeline", "trainer"),
        optional=True,
        note="English audio encoder alternative; folder with config.json + weights",
    ),
    WeightFile(
        name="amt_s",
        kind="file",
        path="amt/amt-s.pth",
        source="https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth (MCG-NKU/AMT's Hugging Face link; "
               "VBench's pretrained/amt_model/download.sh fetches the same file)",
        # A plain URL: the file sits at the repository's root there, not at ``path``.
        url="https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth",
        licence="CC BY-NC 4.0 (MCG-NKU/AMT's LICENSE and README, which give the models no other terms): "
                "non-commercial use only",
        required_by=("trainer",),  # training.benchmark
        optional=True,
        note=("VBench's motion_smoothness interpolator (models.amt); size and sha256 not published: verify checks "
              "existence, load_amt_s loads the checkpoint's 'state_dict' strictly"),
    ),
    WeightFile(
        name="i3d_torchscript",
        kind="file",
        path="fvd/i3d_torchscript.pt",
        source="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V's TorchScript port "
               "of TF-Hub's Kinetics-400 I3D)",
        url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        licence="Apache-2.0 (TF-Hub i3d-kinetics-400); StyleGAN-V port",
        required_by=("trainer",),  # training.benchmark
        optional=True,
        note="FVD's feature network (400-d logits)",
    ),
    WeightFile(
        name="inception_fid",
        kind="file",
        path="fid/pt_inception-2015-12-05-6726825d.pth",
        source="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's port of TF's FID Inception-v3; the file "
               "pyiqa's fid metric loads)",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
        licence="Apache-2.0 (pytorch-fid; TensorFlow's Inception-v3 weights)",
        required_by=("trainer",),  # training.benchmark
        optional=True,
        note="frame FID's feature network (2048-d pool features), loaded strictly by pyiqa's FID Inception; "
             "6726825d is the first 8 hex digits of its sha256",
    ),
    WeightFile(
        name="qalign_one_align",
        kind="hf_cache",
        path="",
        source="https://huggingface.co/q-future/one-align (loaded by pyiqa's qalign metric)",
        hf_repo="q-future/one-align",
        licence="see the model card (mPLUG-Owl2 based)",
        required_by=("pipeline",),
        optional=True,
        note="about 16 GB in pyiqa's Hugging Face cache; lighter pyiqa metrics need no entry here",
    ),
]}


# ----------------------------------------------------------------------------------------------
# Locations and checks
# ----------------------------------------------------------------------------------------------

def weights_root(weights_dir: str | Path | None = None) -> Path:
    """The weights folder: the argument, else ``$TH_WEIGHTS_DIR``, else ``./weights``."""
    if weights_dir is None:
        weights_dir = os.environ.get(ENV_VAR, "weights")
    return Path(weights_dir).expanduser().resolve()


def entry(name: str) -> WeightFile:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}") from None


def local_path(name: str, weights_dir: str | Path | None = None) -> Path | None:
    """Where the entry lives on this machine (None for a ``hf_cache`` entry not in the cache)."""
    w = entry(name)
    if w.kind == "hf_cache":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(w.hf_repo, "config.json")
        return Path(found).parent if isinstance(found, str) else None
    return weights_root(weights_dir) / w.path


@dataclass(frozen=True)
class Check:
    """The state of one entry: ``ok``, ``missing``, ``incomplete``, ``wrong_size`` or ``wrong_sha256``."""

    name: str
    status: str
    path: Path | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check(name: str, weights_dir: str | Path | None = None, hash_files: bool = True) -> Check:
    """Check one entry against the registry (sha256 only when known and ``hash_files``)."""
    w = entry(name)
    path = local_path(name, weights_dir)
    if path is None or not path.exists():
        return Check(name, "missing", path)
    if w.kind in ("folder", "hf_cache"):
        if not path.is_dir():
            return Check(name, "incomplete", path, "not a folder")
        if w.kind == "folder":
            has_config = all((path / f).is_file() for f in FOLDER_CONFIGS)
            has_weights = any((path / f).is_file() for f in FOLDER_WEIGHT_FILES)
            if not (has_config and has_weights):
                return Check(name, "incomplete", path,
                             f"needs {' and '.join(FOLDER_CONFIGS)} and one of {', '.join(FOLDER_WEIGHT_FILES)}")
        return Check(name, "ok", path)
    if not path.is_file():
        return Check(name, "missing", path, "not a file")
    size = path.stat().st_size
    if w.size is not None and size != w.size:
        return Check(name, "wrong_size", path, f"{size:,} bytes, expected {w.size:,}")
    if hash_files and w.sha256 is not None:
        digest = weight_id(path)
        if digest != w.sha256:
            return Check(name, "wrong_sha256", path, f"sha256 {digest[:12]}..., expected {w.sha256[:12]}...")
    return Check(name, "ok", path, f"{size:,} bytes")


class MissingWeightsError(FileNotFoundError):
    """Raised once for every missing file of a run, with the command that fetches them.

    ``checks`` are the files the caller asked for; ``also`` other required registry entries that
    are missing too, listed so one fetch completes the setup. ``names`` covers both.
    """

    def __init__(self, checks: Sequence[Check], weights_dir: Path, also: Sequence[Check] = ()):
        self.checks = list(checks)
        self.also = list(also)
        self.names = [c.name for c in self.checks + self.also]
        self.weights_dir = weights_dir
        self.fetch_command = fetch_command(self.names, weights_dir)
        lines = [f"missing model weights (weights folder {weights_dir}; set {ENV_VAR} or --weights-dir):"]
        lines += [self._line(c) for c in self.checks]
        if self.also:
            lines.append("other required weights missing too:")
            lines += [self._line(c) for c in self.also]
        lines.append("fetch them on a machine with internet access:")
        lines.append(f"  {self.fetch_command}")
        lines.append(f"(for tests and smoke runs only, weights={RANDOM!r} builds random weights instead)")
        super().__init__("\n".join(lines))

    @staticmethod
    def _line(c: Check) -> str:
        w = REGISTRY[c.name]
        where = c.path if c.path is not None else f"Hugging Face cache ({w.hf_repo})"
        extra = f", {c.detail}" if c.detail else ""
        return f"  - {c.name}: {where} [{c.status}{extra}] from {w.source}"

    def __reduce__(self):  # keep the error intact when it crosses process boundaries (Ray workers)
        return (type(self), (self.checks, self.weights_dir, self.also))


def fetch_command(names: Iterable[str], weights_dir: str | Path | None = None) -> str:
    return (f"python -m models.weights fetch --weights-dir {weights_root(weights_dir)} "
            f"--only {' '.join(names)}")


def require(names: Iterable[str], weights_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of the named entries, or one MissingWeightsError naming every missing one.

    The error also names the other missing required entries, so one fetch fixes the whole setup.
    Sizes are checked; hashes are left to ``verify`` (hashing on every start would be slow).
    """
    names = list(names)
    checks = [check(n, weights_dir, hash_files=False) for n in names]
    bad = [c for c in checks if not c.ok]
    if bad:
        others = [check(n, weights_dir, hash_files=False)
                  for n, w in REGISTRY.items() if not w.optional and n not in names]
        raise MissingWeightsError(bad, weights_root(weights_dir), also=[c for c in others if not c.ok])
    return {c.name: c.path for c in checks}  # type: ignore[misc]


def resolve(name: str, weights_dir: str | Path | None = None) -> Path:
    """The path of one entry, or MissingWeightsError (see ``require``)."""
    return require([name], weights_dir)[name]


def weights_for(name: str, choice: str | Path | None = None,
                weights_dir: str | Path | None = None) -> Path | str:
    """What a loader should get from a config value: None -> the registry path; ``RANDOM`` -> RANDOM;
    any other value -> that path, which must exist."""
    if choice is None or str(choice) == "":
        return resolve(name, weights_dir)
    if str(choice) == RANDOM:
        return RANDOM
    path = Path(choice).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weights for {name} not found at {path}")
    return path


# ----------------------------------------------------------------------------------------------
# Random mode and weight identity
# ----------------------------------------------------------------------------------------------

def warn_random(name: str) -> None:
    """Log a banner that cannot be missed: outputs of random weights are not real data."""
    bar = "!" * 78
    log.warning("\n%s\n!!! WARNING: RANDOM WEIGHTS. %s is built with random weights.\n"
                "!!! Its outputs are meaningless: use them for tests and smoke runs only.\n"
                "!!! Every output of this run records weight id %r.\n%s",
                bar, name, RANDOM, bar)


@functools.lru_cache(maxsize=256)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_id(path_or_random: str | Path) -> str:
    """``"random"``, the sha256 of a file, or for a folder the sha256 of its sorted
    (relative path, file sha256) lines. Cached by (path, size, mtime)."""
    if str(path_or_random) == RANDOM:
        return RANDOM
    path = Path(path_or_random).resolve()
    if path.is_file():
        st = path.stat()
        return _sha256_file(str(path), st.st_size, st.st_mtime_ns)
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(path).as_posix()} {weight_id(f)}\n".encode())
        return digest.hexdigest()
    raise FileNotFoundError(f"no weights at {path}")


# ----------------------------------------------------------------------------------------------
# Fetching (needs internet)
# ----------------------------------------------------------------------------------------------

def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _check_reachable(url: str) -> None:
    """Fail fast when the host does not answer (the hub client would otherwise retry for ~25 s).

    Any HTTP answer, even an error status, counts as reachable; proxies from the environment apply.
    """
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=URL_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"cannot reach {url}: {reason}") from None


def _download_url(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response, open(tmp, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 22)
    tmp.replace(dest)


def fetch_one(name: str, weights_dir: str | Path | None = None) -> Check:
    """Download one entry, then check it. Raises whatever the download raised."""
    w = entry(name)
    root = weights_root(weights_dir)
    _check_reachable(w.url if w.url is not None else _hf_endpoint())
    if w.kind == "hf_cache":
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=w.hf_repo)
    elif w.kind == "folder":
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=w.hf_repo, local_dir=root / w.path, allow_patterns=FOLDER_ALLOW_PATTERNS)
    elif w.hf_repo is not None:
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo_id=w.hf_repo, filename=w.path, local_dir=root)
    else:
        _download_url(w.url, root / w.path)  # type: ignore[arg-type]
    return check(name, root)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _human_size(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1e6:,.1f} MB"


def _selected(only: Sequence[str] | None) -> list[str]:
    names = list(only) if only else list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown weights {unknown}; known: {', '.join(REGISTRY)}")
    return names


def cmd_list(names: list[str], root: Path) -> int:
    print(f"weights folder: {root}")
    print("| name | needed | used by | location | size | sha256 | source | licence |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in names:
        w = REGISTRY[n]
        where = w.path if w.kind != "hf_cache" else f"HF cache: {w.hf_repo}"
        sha = w.sha256[:12] + "..." if w.sha256 else "unknown"
        print(f"| {n} | {'optional' if w.optional else 'required'} | {', '.join(w.required_by)} | "
              f"{where} | {_human_size(w.size)} | {sha} | {w.source} | {w.licence} |")
    return 0


def cmd_verify(names: list[str], root: Path, hash_files: bool) -> int:
    print(f"weights folder: {root}")
    missing_required = []
    for n in names:
        c = check(n, root, hash_files=hash_files)
        w = REGISTRY[n]
        label = "optional" if w.optional else "required"
        print(f"{c.status:13s} {label:9s} {n:30s} {c.path or w.hf_repo} {c.detail}".rstrip())
        if not c.ok and not w.optional:
            missing_required.append(n)
    if missing_required:
        print(f"\n{len(missing_required)} required entr{'y' if len(missing_required) == 1 else 'ies'} "
              f"not ok; fetch with:\n  {fetch_command(missing_required, root)}")
        return 1
    print("\nall required weights ok")
    return 0


def cmd_fetch(names: list[str], root: Path) -> int:
    failed = []
    for n in names:
        w = REGISTRY[n]
        print(f"fetching {n} from {w.source} ...", flush=True)
        try:
            c = fetch_one(n, root)
        except Exception as e:  # noqa: BLE001 - any download failure is reported the same way
            failed.append(n)
            where = (f"copy the result to {root / w.path} (or point {ENV_VAR} at it)" if w.kind != "hf_cache"
                     else "copy its Hugging Face cache here (HF_HOME or HF_HUB_CACHE)")
            print(f"FAILED to fetch {n}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
                  f"  This machine may have no internet access. Run the same command on a machine that has,\n"
                  f"  then {where}.", file=sys.stderr)
            continue
        print(f"  {c.status} {c.path} {c.detail}")
        if not c.ok:
            failed.append(n)
    if failed:
        print(f"\nfetch failed for: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.weights", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["list", "verify", "fetch"])
    parser.add_argument("--weights-dir", default=None, help=f"default: ${ENV_VAR} or ./weights")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="restrict to these entries")
    parser.add_argument("--no-hash", action="store_true", help="verify: skip sha256 checks")
    args = parser.parse_args(argv)
    names = _selected(args.only)
    root = weights_root(args.weights_dir)
    if args.command == "list":
        return cmd_list(names, root)
    if args.command == "verify":
        return cmd_verify(names, root, hash_files=not args.no_hash)
    return cmd_fetch(names, root)


if __name__ == "__main__":
    sys.exit(main())
