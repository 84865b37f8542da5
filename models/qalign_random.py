"""pyiqa's Q-Align built offline with random weights, for speed runs where its 16 GB cannot be fetched.

pyiqa builds Q-Align (``pyiqa.archs.qalign_arch.QAlign``) only through
``from_pretrained('q-future/one-align')``: the weights, the configuration, the LLaMA tokenizer and
the CLIP preprocessor all come from the Hugging Face hub. The model classes themselves ship with
pyiqa (``pyiqa.archs.q_align``), so here the same modules are built from a configuration:

* ``full``: ``MPLUGOwl2Config``'s defaults, mPLUG-Owl2's 7B layout that one-align fine-tunes
  (a LLaMA-2-7B decoder with modality-adaptive attention, a ViT-L/14 at 448 px, a 6-layer visual
  abstractor of 64 queries), about 8.2e9 parameters, fp16 as pyiqa runs it;
* ``tiny``: the same classes at toy widths, for CPU tests of the code path.

What cannot be built offline is replaced, and the replacements are named in ``describe()``: the
tokenizer is a LLaMA tokenizer (same class, byte fallback) whose vocabulary holds the words of
Q-Align's prompts, so a prompt is about as many tokens as with LLaMA's; the CLIP preprocessor is
configured as one-align's (448 px, OpenAI CLIP mean and std).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

SIZES = ("full", "tiny")
# The words of the prompts of ``MPLUGOwl2LlamaForCausalLM.score`` and its five level words.
PROMPT_WORDS = ("USER ASSISTANT How would you rate the quality aesthetics of this image video is The "
                "excellent good fair poor bad").split()
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _config(size: str):
    from pyiqa.archs.q_align.configuration_mplug_owl2 import MPLUGOwl2Config

    if size == "full":
        config = MPLUGOwl2Config()
    elif size == "tiny":
        visual = {"visual_model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                   "num_attention_heads": 2, "image_size": 56, "patch_size": 14},
                  "visual_abstractor": {"hidden_size": 32, "num_learnable_queries": 4, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "intermediate_size": 64,
                                        "encoder_hidden_size": 32, "grid_size": 4}}
        config = MPLUGOwl2Config(visual_config=visual, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4)
    else:
        raise ValueError(f"Q-Align's random size must be one of {', '.join(SIZES)}, got {size!r}")
    config._attn_implementation = "sdpa"  # the configuration class asks for flash-attn, not installed here
    return config


def prompt_tokenizer():
    """A LLaMA tokenizer (BPE with byte fallback, LLaMA's special and byte ids) whose vocabulary
    holds the prompt words whole: ids 0-2 special, 3-258 the bytes, then each word's prefixes."""
    from transformers.models.llama import LlamaTokenizer

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    merges: list[tuple[str, str]] = []

    def add(piece: str) -> None:
        if piece not in vocab:
            vocab[piece] = len(vocab)

    for char in sorted(set("▁" + "".join(PROMPT_WORDS) + ":?")):
        add(char)
    for word in PROMPT_WORDS:
        pieces = "▁" + word
        for end in range(2, len(pieces) + 1):
            if pieces[:end] not in vocab:
                merges.append((pieces[:end - 1], pieces[end - 1]))
                add(pieces[:end])
    return LlamaTokenizer(vocab=vocab, merges=merges)


def image_processor(config):
    from transformers import CLIPImageProcessor

    side = int(config.visual_config["visual_model"]["image_size"])
    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def add_missing_mask_helper() -> None:
    """pyiqa 0.1.16's visual abstractor calls ``invert_attention_mask``, which transformers 5 took
    out of ``PreTrainedModel`` (pyiqa re-added its siblings ``get_head_mask`` and
    ``get_extended_attention_mask`` but not this one), so Q-Align fails at its first forward with
    real weights too. Adds the helper as transformers 4 defined it (1 -> 0, 0 -> the dtype's minimum)."""
    from pyiqa.archs.q_align.visual_encoder import MplugOwlVisualAbstractorModel

    if hasattr(MplugOwlVisualAbstractorModel, "invert_attention_mask"):
        return

    def invert_attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        extended = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
        extended = extended.to(self.dtype)
        return (1.0 - extended) * torch.finfo(self.dtype).min

    MplugOwlVisualAbstractorModel.invert_attention_mask = invert_attention_mask


def _language_model_class():
    """pyiqa's ``MPLUGOwl2LlamaForCausalLM`` with the hub loading of its ``__init__`` left out: the
    same modules (decoder, lm_head), the tokenizer and image processor handed in."""
    from pyiqa.archs.q_align.modeling_mplug_owl2 import MPLUGOwl2LlamaForCausalLM, MPLUGOwl2LlamaModel
    from transformers import LlamaForCausalLM

    class OfflineMPLUGOwl2(MPLUGOwl2LlamaForCausalLM):
        def __init__(self, config, tokenizer, processor):
            super(LlamaForCausalLM, self).__init__(config)
            self.model = MPLUGOwl2LlamaModel(config)
            self.tokenizer, self.image_processor = tokenizer, processor
            self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.preferential_ids_ = [ids[-1] for ids in tokenizer(["excellent", "good", "fair", "poor", "bad"])["input_ids"]]
            self.post_init()

    return OfflineMPLUGOwl2


def build_qalign_net(size: str = "full", device: str | torch.device = "cpu", seed: int = 0) -> torch.nn.Module:
    """pyiqa's ``QAlign`` module holding a random-weight mPLUG-Owl2 of ``size``, on ``device``, in
    fp16 as pyiqa runs it (its scorer casts images and level weights to fp16 on every device)."""
    from pyiqa.archs.qalign_arch import QAlign

    add_missing_mask_helper()
    device = torch.device(device)
    dtype = torch.float16
    config = _config(size)
    torch.manual_seed(seed)
    with _default_dtype(dtype), device:  # built and initialised in place: 16 GB never passes the CPU
        model = _language_model_class()(config, prompt_tokenizer(), image_processor(config))
    model.eval()
    net = QAlign.__new__(QAlign)  # QAlign.__init__ is the hub loading; its forward and preprocess are kept
    torch.nn.Module.__init__(net)
    net.dtype, net.model_dtype = "fp16", dtype
    net.model, net.image_processor = model, model.image_processor
    return net


def build_qalign_metric(size: str = "full", device: str | torch.device = "cpu", seed: int = 0):
    """``pyiqa.create_metric('qalign')``'s result (an ``InferenceModel``: score range, lower_better,
    input checks) around the random-weight network of ``build_qalign_net``."""
    import pyiqa.archs as archs
    from pyiqa.models.inference_model import InferenceModel

    net = build_qalign_net(size, device, seed)
    original = archs.build_network

    def prebuilt(opt: dict[str, Any]) -> torch.nn.Module:
        return net if opt.get("type") == "QAlign" else original(opt)

    import pyiqa.models.inference_model as inference

    inference.build_network = prebuilt  # InferenceModel looks the builder up in its module
    try:
        return InferenceModel("qalign", as_loss=False, device=device)
    finally:
        inference.build_network = original


def describe(size: str) -> dict[str, Any]:
    """What ``build_qalign_net(size)`` builds, for result files (counted on the meta device, no
    memory): parameters, dtype, prompt and image tokens, and the stand-ins for the hub's files."""
    from pyiqa.archs.q_align.modeling_mplug_owl2 import tokenizer_image_token

    config = _config(size)
    with _default_dtype(torch.float16), torch.device("meta"):
        model = _language_model_class()(config, prompt_tokenizer(), image_processor(config))
    prompt = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
    return {"architecture": "pyiqa qalign: mPLUG-Owl2 (LLaMA-2-7B decoder, ViT-L/14 at 448 px, visual abstractor)",
            "size": size, "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float16",
            "weights": "random", "prompt_text_tokens": len(tokenizer_image_token(prompt, model.tokenizer)) - 1,
            "image_tokens": int(config.visual_config["visual_abstractor"]["num_learnable_queries"]) + 1,
            "stand_ins": "tokenizer: transformers' LLaMA tokenizer class with the prompt words as its vocabulary; "
                         "CLIP preprocessor configured as one-align's (the hub's files are not fetched)"}


__all__ = ["SIZES", "add_missing_mask_helper", "build_qalign_metric", "build_qalign_net", "describe"]
