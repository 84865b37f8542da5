"""Speech in, LivePortrait motion out: ``python -m training.sample``.

::

    python -m training.sample --checkpoint runs/x/checkpoint.pt --audio speech.wav --out motion.pkl \\
        [--sampler ddim|ddpm] [--steps 10] [--cfg-scale 2.0] [--seed 0] [--smooth-pose SIGMA] \\
        [--no-ema] [--no-blend] [--device cuda|cpu] [--preview preview.mp4] [--audio-encoder FOLDER|NAME|random[:small]] \\
        [--source-kp kp.npy]

Steps: read any audio file (any format PyAV decodes, any rate and channel count) as 16 kHz mono;
refuse unreadable, empty or silent audio; compute ``ceil(seconds * 25)`` frames of audio features
with the encoder the checkpoint's training features came from (in bounded memory); generate
normalised motion with sliding windows (paper §3.4) from the EMA weights, cross-fading each
window into the one before where they overlap (:func:`training.diffusion.generate`; the sampling
options and their defaults: :mod:`training.sampling`); undo the
normalisation; optionally smooth the pose; write the LivePortrait template (``--out``), the (T, 70)
sequence beside it (same name, ``.npy``) and optionally a preview video. Every file appears
atomically. Bad input exits with status 2 and a one-line message. See docs/sampling.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from shards.format import FPS, SAMPLE_RATE
from shards.vector import POSE_DIMS, VECTOR_DIM
from training.checkpoint import CheckpointError, load_for_inference, pose_norm
from training import sampling
from training.diffusion import Diffusion, generate
from training.model import MotionDenoiser
from training.normalize import Normalizer, StatsError
from training.sampling import SamplingOptions
from training.template import motion_template, n_frames_for, save_template, save_vector

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
MIN_RMS = 1e-3  # -60 dBFS: quieter than any usable speech recording, louder than digital silence


class BadInputError(ValueError):
    """Input the command cannot work with (audio or checkpoint); reported with exit status 2."""


# ----------------------------------------------------------------------------- inputs

def read_speech(path: str | Path, min_rms: float = MIN_RMS) -> np.ndarray:
    """Any audio file -> float32 mono 16 kHz samples, refusing unreadable, empty and silent audio."""
    from models.audio_encoder import load_audio

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"audio file not found: {path}")
    try:
        audio = np.asarray(load_audio(path), dtype=np.float32).reshape(-1)
    except Exception as exc:  # every decoder failure means the same thing to the user
        raise BadInputError(f"cannot read audio from {path}: {type(exc).__name__}: {exc}") from exc
    if audio.size == 0:
        raise BadInputError(f"audio file {path} holds no samples")
    if not np.all(np.isfinite(audio)):
        raise BadInputError(f"audio file {path} holds NaN or infinite samples")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < min_rms:
        raise BadInputError(f"audio file {path} is silent (RMS {rms:.2e} < {min_rms:.0e}); "
                            "motion generated from silence is meaningless")
    return audio


def read_source_kp(path: str | Path) -> np.ndarray:
    """Canonical keypoints of the face to be animated, from .npy holding 63 values: (21, 3) float32."""
    try:
        kp = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise BadInputError(f"cannot read --source-kp {path}: {exc}") from exc
    if kp.size != 63:
        raise BadInputError(f"--source-kp must hold 21x3 = 63 values, {path} has shape {kp.shape}")
    return np.asarray(kp, dtype=np.float32).reshape(21, 3)


def stats_canonical_kp(stats: dict[str, Any]) -> np.ndarray | None:
    """The dataset's mean canonical keypoints, when the statistics carry them (``kp.mean``)."""
    kp = stats.get("kp")
    mean = kp.get("mean") if isinstance(kp, dict) else None
    if mean is None or len(mean) != 63:
        return None
    return np.asarray(mean, dtype=np.float32).reshape(21, 3)


def recorded_audio_encoder(stats: dict[str, Any], train_config: Any) -> Any:
    """What the checkpoint says about the audio encoder of its training features, or None.

    Looked up in the statistics (``audio_feat.encoder``) and the training config
    (``audio_encoder``); either may be a folder, a registry name, a model id or a dict of them.
    """
    audio = stats.get("audio_feat")
    record = audio.get("encoder") if isinstance(audio, dict) else None
    if record is None:
        try:
            record = train_config.get("audio_encoder")
        except AttributeError:
            record = None
    return record or None


def encoder_arguments(record: Any, weights_dir: str | None = None) -> tuple[str, str | None]:
    """(weights, random_config) for ``AudioEncoder`` from a folder path, ``random[:small|:base]``,
    a registry name (``chinese_hubert_base``), a random model id (``random:wav2vec2-h64-l2``),
    the folder name a registry entry lives under, or a dict holding one of these."""
    from models import weights as registry
    from models.audio_encoder import small_config

    if isinstance(record, dict) or hasattr(record, "get"):
        values = [record.get(k) for k in ("weights", "name", "model_id")]
        record = next((v for v in values if v), None)
        if record is None:
            raise BadInputError("the checkpoint's audio encoder record names no weights, name or model id")
    text = str(record)
    if text == registry.RANDOM or text.startswith(registry.RANDOM + ":"):
        variant = text.partition(":")[2]
        small = small_config()
        small_id = f"{small.model_type}-h{small.hidden_size}-l{small.num_hidden_layers}"
        if variant in ("small", small_id):
            return registry.RANDOM, "small"
        if variant in ("", "base") or variant.endswith("-h768-l12"):
            return registry.RANDOM, None
        raise BadInputError(f"unknown random audio encoder {text!r} (random, random:small, random:base)")
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser()), None
    names = [text] if text in registry.REGISTRY else [
        n for n, w in registry.REGISTRY.items() if w.kind == "folder" and Path(w.path).name == text]
    if names:
        try:
            return str(registry.resolve(names[0], weights_dir)), None
        except registry.MissingWeightsError as exc:
            raise BadInputError(str(exc)) from exc
    raise BadInputError(f"audio encoder {text!r} is neither a folder nor a known encoder; pass "
                        "--audio-encoder FOLDER")


# ----------------------------------------------------------------------------- generation

@dataclass
class MotionGenerator:
    """A loaded checkpoint, ready to turn audio features into motion (both in raw units)."""

    model: MotionDenoiser
    diffusion: Diffusion
    normalizer: Normalizer
    stats: dict[str, Any]
    train_config: Any

    @property
    def audio_dim(self) -> int:
        return self.model.cfg.audio_dim

    def motion(self, audio_feat: np.ndarray, steps: int | None = None, sampler: str = sampling.DEFAULT_SAMPLER,
               cfg_scale: float = sampling.DEFAULT_CFG_SCALE, seed: int = 0, smooth_pose: float = 0.0,
               blend: bool = True) -> np.ndarray:
        """Raw (not normalised) audio features (T, D) -> raw motion (T, 70) float32.

        Defaults as :mod:`training.sampling` (``steps`` None: its default for the sampler);
        ``blend``: cross-fade window overlaps (see :func:`training.diffusion.generate`).
        """
        steps = SamplingOptions(sampler=sampler, steps=steps).n_steps
        feat = np.asarray(audio_feat, dtype=np.float32)
        if feat.ndim != 2 or feat.shape[1] != self.audio_dim:
            raise BadInputError(f"audio features are {feat.shape[-1]}-wide, the checkpoint's model "
                                f"expects {self.audio_dim} (features from another audio encoder?)")
        rng = torch.Generator().manual_seed(int(seed))
        normalised = generate(self.model, self.diffusion, self.normalizer.normalize_audio(feat),
                              n_steps=steps, sampler=sampler, cfg_scale=cfg_scale, generator=rng,
                              blend=blend)
        vector = self.normalizer.denormalize(normalised.numpy()).astype(np.float32)
        return smooth_pose_dims(vector, smooth_pose)

    def sample(self, audio_feat: np.ndarray, options: SamplingOptions, smooth_pose: float = 0.0) -> np.ndarray:
        """:meth:`motion` with a command's sampling options."""
        return self.motion(audio_feat, steps=options.n_steps, sampler=options.sampler,
                           cfg_scale=options.cfg_scale, seed=options.seed, smooth_pose=smooth_pose,
                           blend=options.blend)


def load_generator(checkpoint: str | Path, use_ema: bool = True,
                   device: str = "cpu") -> MotionGenerator:
    """Load a checkpoint for sampling; a file that is not a matching checkpoint is BadInputError."""
    try:
        model, diffusion, stats, cfg = load_for_inference(checkpoint, use_ema=use_ema, device=device)
        normalizer = Normalizer(stats, pose=pose_norm(cfg))
    except (CheckpointError, StatsError) as exc:
        raise BadInputError(f"checkpoint {checkpoint}: {exc}") from exc
    except Exception as exc:  # unpickling errors, truncated files
        raise BadInputError(f"cannot load checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc
    if model.cfg.motion_dim != VECTOR_DIM:
        raise BadInputError(f"checkpoint {checkpoint} generates {model.cfg.motion_dim}-dim motion, "
                            f"not the {VECTOR_DIM}-dim LivePortrait vector")
    return MotionGenerator(model, diffusion, normalizer, stats, cfg)


def load_for_sampling(checkpoint: str | Path, options: SamplingOptions) -> MotionGenerator:
    """:func:`load_generator` with the options' weights and device, refusing a sampler and step
    count the checkpoint's schedule cannot run before any work starts."""
    generator = load_generator(checkpoint, use_ema=options.ema, device=options.device)
    try:
        options.check(generator.diffusion)
    except ValueError as exc:
        raise BadInputError(str(exc)) from exc
    return generator


def smooth_pose_dims(vector: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth scale, translation and angles over time (sigma in frames); 0 leaves them."""
    if sigma <= 0 or len(vector) < 2:
        return vector
    out = vector.copy()
    out[:, POSE_DIMS] = gaussian_filter1d(vector[:, POSE_DIMS], sigma=sigma, axis=0, mode="nearest")
    return out


def recorded_input_settings(record: Any) -> dict[str, Any] | None:
    """The encoder input settings the training features were made with, from the record's model id
    (``name;do_normalize=...``); a record from before settings were recorded means the raw waveform
    (``do_normalize`` false); None (the folder's own file) when the record names no model id."""
    from models.audio_inputs import settings_from_id

    model_id = record.get("model_id") if hasattr(record, "get") else None
    if not model_id:
        return None
    return settings_from_id(str(model_id)) or {"do_normalize": False}


def build_audio_encoder(choice: str | None, generator: MotionGenerator, device: str,
                        weights_dir: str | None = None):
    """The AudioEncoder for ``choice`` (see :func:`encoder_arguments`), else the recorded one."""
    from models.audio_encoder import AudioEncoder

    record = choice or recorded_audio_encoder(generator.stats, generator.train_config)
    if record is None:
        raise BadInputError("the checkpoint does not record which audio encoder made its training "
                            "features; pass --audio-encoder FOLDER (the wav2vec2/HuBERT folder the "
                            "shards were built with)")
    weights, random_config = encoder_arguments(record, weights_dir)
    try:
        encoder = AudioEncoder(weights, device=device, random_config=random_config,
                               preprocessor=None if choice else recorded_input_settings(record))
    except Exception as exc:
        raise BadInputError(f"cannot load audio encoder {record}: {type(exc).__name__}: {exc}") from exc
    if encoder.dim != generator.audio_dim:
        raise BadInputError(f"audio encoder {record} gives {encoder.dim}-wide features but the "
                            f"checkpoint was trained on {generator.audio_dim}-wide ones")
    return encoder


# ----------------------------------------------------------------------------- the command

@dataclass
class SampleResult:
    template: Path
    vector_path: Path
    preview: Path | None
    n_frames: int
    audio_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def sample(args: argparse.Namespace) -> SampleResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    out = Path(args.out)
    if out.suffix != ".pkl":
        raise BadInputError(f"--out must end in .pkl (LivePortrait recognises templates by it): {out}")
    audio = read_speech(args.audio, args.min_rms)
    n_frames = n_frames_for(len(audio), SAMPLE_RATE)
    kp_c = read_source_kp(args.source_kp) if args.source_kp else None
    options = sampling.from_args(args)
    generator = load_for_sampling(args.checkpoint, options)
    if kp_c is None:
        kp_c = stats_canonical_kp(generator.stats)
    encoder = build_audio_encoder(args.audio_encoder, generator, options.device, args.weights_dir)
    timings["load_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    feat = encoder.encode(audio, n_frames)
    timings["audio_features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vector = generator.sample(feat, options, smooth_pose=args.smooth_pose)
    timings["generate_s"] = time.perf_counter() - t0

    vector_path = save_vector(vector, out.with_suffix(".npy"))
    save_template(motion_template(vector, kp_c), out)
    preview = None
    if args.preview:
        from training.preview import render_preview

        t0 = time.perf_counter()
        preview = render_preview(vector, audio, args.preview, kp_c=kp_c)
        timings["preview_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    return SampleResult(out, vector_path, preview, n_frames, len(audio) / SAMPLE_RATE, timings)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.sample",
                                description="Generate LivePortrait motion from speech.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by training.run (or its folder)")
    p.add_argument("--audio", required=True, help="speech recording, any format/rate/channels/length")
    p.add_argument("--out", required=True, help="motion template to write (.pkl); the (T, 70) "
                                                "sequence goes beside it as .npy")
    p.add_argument("--smooth-pose", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian smoothing of scale/translation/angles, sigma in frames (0: off)")
    p.add_argument("--preview", default=None, help="also write a keypoint preview video (.mp4)")
    p.add_argument("--audio-encoder", default=None,
                   help="wav2vec2/HuBERT folder, registry name, or random[:small] (tests only); "
                        "default: the one the checkpoint records")
    p.add_argument("--source-kp", default=None,
                   help=".npy with the source face's canonical keypoints (21x3) for kp/x_s")
    p.add_argument("--weights-dir", default=None,
                   help="weights folder for a registry-named audio encoder (default $TH_WEIGHTS_DIR)")
    p.add_argument("--min-rms", type=float, default=MIN_RMS,
                   help="audio quieter than this RMS (full scale 1.0) is refused as silent")
    sampling.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        result = sample(args)
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {result.template} ({result.n_frames} frames at {FPS} fps for "
          f"{result.audio_seconds:.2f} s of audio) and {result.vector_path}"
          + (f"; preview {result.preview}" if result.preview else ""))
    print("timings: " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
