"""Portrait + speech -> talking video: ``python -m training.animate`` (JoyVASA's inference, paper §3.4).

::

    python -m training.animate --checkpoint runs/x/checkpoint.pt --image portrait.jpg --audio speech.wav \\
        --out talking.mp4 [--cfg-scale 2.0] [--seed 0] [--pose-smoothing SIGMA] [--animal] [--no-crop] \\
        [--no-pasteback] [--no-stitching] [--max-frames N] [--random-weights]
    python -m training.animate --motion template.pkl --image portrait.jpg [--audio speech.wav] --out video.mp4

Steps: read and check every input first (nothing is written for a bad one); crop the portrait as
LivePortrait crops a source image (landmarks, scale 2.3, vy -0.125, rotation on; ``shards.crop``);
extract its motion (M) and appearance volume (F) once; generate motion from the speech with the
checkpoint (``training.sample``'s path: the recorded audio encoder, sliding windows, CFG) or read
a LivePortrait motion template; compose each frame's driving keypoints relative to the sequence's
first frame (``training.drive``), stitch (S), then warp and decode (W, G) in batches that go
straight into the H.264 encoder with the speech as AAC, pasted back into the portrait through the
inverse crop (``training.paste_back``). Memory does not grow with the audio's length. Defaults and
the choices that differ between LivePortrait's command line and its web app: docs/sampling.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from models.weights import RANDOM, MissingWeightsError, require
from shards.crop import CROP_SIZE, liveportrait_crop_matrix
from shards.format import FPS, SAMPLE_RATE
from training import drive, sampling
from training.paste_back import PasteBack, load_mask
from training.sample import (EXIT_BAD_INPUT, BadInputError, build_audio_encoder, load_for_sampling, read_speech,
                             smooth_pose_dims)
from training.template import load_template, n_frames_for, resample_vector
from training.video_out import TalkingVideoWriter

log = logging.getLogger(__name__)

NETWORK_SIZE = 256           # M and F read 256x256 crops
FACE_SIDE_RATIO = 0.5        # another face at least this fraction of the largest one's side: "several faces"
HUMAN = {"M": "liveportrait_motion_extractor", "F": "liveportrait_appearance_feature_extractor",
         "W": "liveportrait_warping_module", "G": "liveportrait_spade_generator",
         "S": "liveportrait_stitching_retargeting_module"}
# JoyVASA's animal weights: the same architectures under liveportrait_animals/, and the human S.
ANIMAL = {**{k: v.replace("liveportrait_", "liveportrait_animals_", 1) for k, v in HUMAN.items() if k != "S"},
          "S": HUMAN["S"]}


# ----------------------------------------------------------------------------- the networks

@dataclass
class Renderer:
    """LivePortrait's five networks on one device, in eval mode."""

    M: torch.nn.Module
    F: torch.nn.Module
    W: torch.nn.Module
    G: torch.nn.Module
    S: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype for W and G on a GPU; None: float32

    @property
    def weight_ids(self) -> dict[str, str]:
        return {k: str(getattr(getattr(self, k), "weight_id", "?")) for k in "MFWGS"}


def load_renderer(animal: bool, random_weights: bool, weights_dir: str | None, device: str,
                  precision: str = "auto", eager: bool = False) -> Renderer:
    """The human or animal networks from the registry's files (one MissingWeightsError naming every
    missing file), or random weights of the official architectures (``random_weights``)."""
    from models.liveportrait.appearance_feature_extractor import load_appearance_feature_extractor
    from models.liveportrait.motion_extractor import load_motion_extractor
    from models.liveportrait.spade_generator import load_spade_generator
    from models.liveportrait.stitching_retargeting import load_stitching_retargeting
    from models.liveportrait.warping_network import load_warping_network

    names = ANIMAL if animal else HUMAN
    paths = {k: RANDOM for k in names} if random_weights else \
        {k: str(p) for k, p in zip(names, require(names.values(), weights_dir).values())}
    dev = torch.device(device)
    amp = None
    if dev.type == "cuda" and precision != "fp32":
        amp = torch.float16 if precision == "fp16" else torch.bfloat16
    loaders = {"F": load_appearance_feature_extractor, "W": load_warping_network, "G": load_spade_generator,
               "S": load_stitching_retargeting}
    nets = {"M": load_motion_extractor(paths["M"], device=dev)}
    for key, loader in loaders.items():
        nets[key] = loader(paths[key], device=dev, name=names[key])
    if dev.type == "cpu" and not eager:
        from models.liveportrait.render_cpu import fast_cpu

        # The same W and G computed with less arithmetic (within 1e-4 of eager; bench/render.py).
        nets["W"], nets["G"] = fast_cpu(nets["W"]), fast_cpu(nets["G"])
    return Renderer(**nets, device=dev, amp_dtype=amp)


# ----------------------------------------------------------------------------- the source face

def read_portrait(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, or BadInputError."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"portrait not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise BadInputError(f"cannot read the portrait {path} as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def face_box(image: np.ndarray, detector) -> np.ndarray:
    """The one face's box (x1, y1, x2, y2); BadInputError for no face or several comparable ones."""
    boxes = detector.detect(image)
    if len(boxes) == 0:
        raise BadInputError("no face found in the portrait (for an animal or a drawing, crop the face "
                            "yourself and pass --no-crop)")
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    largest = int(np.argmax(sides))
    others = np.flatnonzero(sides >= FACE_SIDE_RATIO * sides[largest])
    if len(others) > 1:
        raise BadInputError(f"{len(others)} faces found in the portrait; give an image of one person "
                            "(or crop the face yourself and pass --no-crop)")
    return boxes[largest, :4]


@dataclass
class SourceCrop:
    """The portrait's face as the networks see it, and how to put a rendered crop back."""

    crop: np.ndarray                       # (256, 256, 3) uint8 RGB
    crop_to_original: np.ndarray | None    # 3x3, for 512x512 crops; None with --no-crop


def crop_source(image: np.ndarray, face_backend: str, landmark_backend: str,
                weights_dir: str | None) -> SourceCrop:
    """LivePortrait's source-image crop from landmarks (scale 2.3, vy -0.125, rotated upright)."""
    from models.face_detectors import make_detector
    from models.face_landmarks import make_landmarks

    detector = make_detector(face_backend, weights_dir=weights_dir)
    landmarks = make_landmarks(landmark_backend, weights_dir=weights_dir)
    if landmarks is None:
        raise BadInputError("--landmarks none cannot crop a portrait; use dlib or insightface, or --no-crop")
    points = landmarks.landmarks(image, face_box(image, detector))
    to_crop = liveportrait_crop_matrix(points)
    crop512 = cv2.warpAffine(image, to_crop[:2], (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    crop = cv2.resize(crop512, (NETWORK_SIZE, NETWORK_SIZE), interpolation=cv2.INTER_AREA)
    return SourceCrop(crop, np.linalg.inv(to_crop))


def whole_image(image: np.ndarray) -> SourceCrop:
    """``--no-crop``: the image is the face crop (animals, drawings, pre-cropped faces)."""
    return SourceCrop(cv2.resize(image, (NETWORK_SIZE, NETWORK_SIZE), interpolation=cv2.INTER_AREA), None)


@torch.inference_mode()
def source_features(renderer: Renderer, crop: np.ndarray) -> tuple[drive.SourceMotion, torch.Tensor]:
    """M and F on the 256x256 crop, once: the source's motion and its appearance volume f_s."""
    x = torch.from_numpy(crop).to(renderer.device).permute(2, 0, 1)[None].float() / 255.0
    raw = {k: v.float().cpu().numpy() for k, v in renderer.M(x).items()}
    return drive.source_motion(raw), renderer.F(x)


# ----------------------------------------------------------------------------- the driving motion

def load_speech_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """The checkpoint's motion generator and the audio encoder it was trained with."""
    options = sampling.from_args(args)
    generator = load_for_sampling(args.checkpoint, options)
    return generator, build_audio_encoder(args.audio_encoder, generator, options.device, args.weights_dir)


def motion_from_speech(args: argparse.Namespace, audio: np.ndarray,
                       speech_models: tuple[Any, Any] | None = None) -> np.ndarray:
    """(T, 70) raw motion generated from the speech by the checkpoint, T = ceil(seconds * 25);
    ``speech_models``: :func:`load_speech_models`'s pair, already loaded."""
    generator, encoder = speech_models or load_speech_models(args)
    n_frames = n_frames_for(len(audio), SAMPLE_RATE)
    if args.max_frames:
        n_frames = min(n_frames, args.max_frames)
        audio = audio[: n_frames * SAMPLE_RATE // FPS]
    feat = encoder.encode(audio, n_frames)
    return generator.sample(feat, sampling.from_args(args))


def motion_from_template(path: str | Path) -> np.ndarray:
    """(T, 70) raw motion of a LivePortrait template (either key generation), resampled to 25 fps."""
    try:
        template = load_template(path)
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise BadInputError(f"cannot read the motion template {path}: {exc}") from exc
    except Exception as exc:  # unpickling errors of files that are not templates
        raise BadInputError(f"{path} is not a LivePortrait motion template ({type(exc).__name__})") from exc
    return resample_vector(template.vector, template.fps, FPS)


# ----------------------------------------------------------------------------- rendering

def driving_keypoints(renderer: Renderer, src: drive.SourceMotion, vector: np.ndarray, animal: bool,
                      stitching: bool, relative_volume: bool, driving_multiplier: float) -> np.ndarray:
    """Every frame's final driving keypoints (T, 21, 3): composition, stitching, multiplier."""
    seq = drive.sequence_from_vector(vector)
    x_d = drive.compose_animal(src, seq) if animal else \
        drive.compose_human(src, seq, relative_volume=relative_volume)

    @torch.inference_mode()
    def stitch(x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
        return renderer.S.stitch(tensor(x_s, renderer.device), tensor(x_d, renderer.device)).float().cpu().numpy()

    return drive.finish(src.x_s, x_d, stitch if stitching else None, driving_multiplier)


def tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)


@torch.inference_mode()
def render_frames(renderer: Renderer, f_s: torch.Tensor, x_s: np.ndarray, x_d: np.ndarray,
                  batch_size: int) -> Iterator[np.ndarray]:
    """Yield (B, 512, 512, 3) uint8 crops: W then G on ``batch_size`` frames at a time; f_s and
    x_s are shared by every frame (expanded, not copied)."""
    kp_source = tensor(x_s, renderer.device)[None]
    for start in range(0, len(x_d), batch_size):
        kp_driving = tensor(x_d[start:start + batch_size], renderer.device)
        n = len(kp_driving)
        with torch.autocast(renderer.device.type, dtype=renderer.amp_dtype or torch.float32,
                            enabled=renderer.amp_dtype is not None):
            warped = renderer.W(feature_3d=f_s.expand(n, *f_s.shape[1:]), kp_driving=kp_driving,
                                kp_source=kp_source.expand(n, -1, -1))
            image = renderer.G(feature=warped["out"])
        pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        yield pixels.permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------- the command

def animate(args: argparse.Namespace, renderer: Renderer | None = None,
            speech_models: tuple[Any, Any] | None = None) -> dict[str, object]:
    """Check every input, then render; returns what was written, the (T, 70) motion it rendered and
    how long each part took. ``renderer`` and ``speech_models``: networks already loaded (a caller
    rendering many items)."""
    started = time.perf_counter()
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise BadInputError(f"--out must end in .mp4: {out}")
    if args.motion is None and (args.checkpoint is None or args.audio is None):
        raise BadInputError("give --checkpoint and --audio (speech -> motion), or --motion TEMPLATE.pkl")
    portrait = read_portrait(args.image)
    source = whole_image(portrait) if args.no_crop else \
        crop_source(portrait, args.face_backend, args.landmarks, args.weights_dir)
    try:
        mask = load_mask(args.mask)
    except ValueError as exc:
        raise BadInputError(str(exc)) from exc
    audio = read_speech(args.audio, args.min_rms) if args.audio else None
    vector = motion_from_template(args.motion) if args.motion else motion_from_speech(args, audio, speech_models)
    if args.max_frames:
        vector = vector[: args.max_frames]
    vector = smooth_pose_dims(vector, args.pose_smoothing)
    if renderer is None:
        renderer = load_renderer(args.animal, args.random_weights, args.weights_dir, args.device,
                                 args.precision, eager=args.eager)
    loaded = time.perf_counter()

    src, f_s = source_features(renderer, source.crop)
    x_d = driving_keypoints(renderer, src, vector, args.animal, args.stitching, not args.no_relative_volume,
                            args.driving_multiplier)
    paste = None if (args.no_pasteback or source.crop_to_original is None) else \
        PasteBack(portrait, source.crop_to_original, mask)
    height, width = (portrait.shape[:2] if paste else (CROP_SIZE, CROP_SIZE))
    from tqdm import tqdm

    with TalkingVideoWriter(out, width, height, audio, crf=args.crf) as video, \
            tqdm(total=len(x_d), unit="frame", disable=not args.progress, dynamic_ncols=True) as bar:
        for crops in render_frames(renderer, f_s, src.x_s, x_d, args.batch_size):
            video.write(paste(crops) if paste else crops)
            bar.update(len(crops))
    done = time.perf_counter()
    seconds = len(x_d) / FPS
    return {"out": out, "n_frames": len(x_d), "seconds": seconds, "size": (width, height), "vector": vector,
            "load_s": loaded - started, "render_s": done - loaded,
            "compute_per_video_s": (done - started) / max(seconds, 1e-9), "weights": renderer.weight_ids}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.animate",
                                description="Animate a portrait with speech (or a motion template) through "
                                            "LivePortrait's renderer.")
    p.add_argument("--image", required=True, help="the portrait (any image OpenCV reads)")
    p.add_argument("--out", required=True, help="the talking video to write (.mp4)")
    p.add_argument("--checkpoint", default=None, help="checkpoint.pt of training.run (speech -> motion)")
    p.add_argument("--audio", default=None, help="speech, any format/rate/channels (muxed into the video)")
    p.add_argument("--motion", default=None, help="render this LivePortrait motion template (.pkl) instead")
    p.add_argument("--animal", action="store_true", help="LivePortrait's animal weights and JoyVASA's animal composition")
    p.add_argument("--no-crop", action="store_true",
                   help="the image is already the face crop (animals, drawings): no detector, no paste-back")
    p.add_argument("--no-pasteback", action="store_true", help="write the 512x512 face crop, not the whole portrait")
    p.add_argument("--stitching", action=argparse.BooleanOptionalAction, default=True,
                   help="LivePortrait's stitching network keeps the shoulders still (default on)")
    p.add_argument("--no-relative-volume", action="store_true",
                   help="do not rescale the motion to the source face's keypoint volume")
    p.add_argument("--driving-multiplier", type=float, default=1.0, help="scales every keypoint's motion")
    p.add_argument("--pose-smoothing", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian smoothing of scale, translation and angles, sigma in frames (0: off)")
    p.add_argument("--max-frames", type=int, default=None, help="render at most N frames (quick previews, tests)")
    p.add_argument("--batch-size", type=int, default=None, help="frames per W+G pass (default 16 on GPU, 1 on CPU)")
    p.add_argument("--face-backend", default="haar", choices=("haar", "insightface"))
    p.add_argument("--landmarks", default="dlib", choices=("dlib", "insightface"))
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (0: lossless, 18: visually lossless)")
    p.add_argument("--mask", default=None, help="paste-back mask image (LivePortrait's mask_template.png)")
    p.add_argument("--audio-encoder", default=None, help="as training.sample's --audio-encoder")
    p.add_argument("--weights-dir", default=None, help="weights folder (default $TH_WEIGHTS_DIR)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights of the official renderer networks: tests and smoke runs only")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="W and G under autocast on a GPU (auto: bf16); the CPU runs float32")
    p.add_argument("--eager", action="store_true",
                   help="on the CPU, run W and G as the official modules do (slower; same output within 1e-4)")
    p.add_argument("--min-rms", type=float, default=1e-3, help="speech quieter than this is refused as silent")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    sampling.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 16 if args.device.startswith("cuda") else 1
    if args.max_frames is not None and args.max_frames < 1:
        print("error: --max-frames must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = animate(args)
    except (BadInputError, MissingWeightsError) as exc:  # the latter names every missing file and its fetch
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.random_weights:
        print("RANDOM WEIGHTS: the renderer ran with random weights; this video is not a real result")
    print(f"wrote {result['out']} ({result['n_frames']} frames, {result['seconds']:.2f} s at {FPS} fps, "
          f"{result['size'][0]}x{result['size'][1]}); {result['compute_per_video_s']:.2f} s of compute "
          f"per second of video")
    return 0


if __name__ == "__main__":
    sys.exit(main())
