"""The denoiser: sizes really applied, positions encoded, context and audio really used."""
import pytest
import torch

from training.model import ModelConfig, MotionDenoiser, audio_attention_mask, sinusoidal_encoding

TINY = dict(audio_dim=16, width=64, layers=2, heads=4, w_pre=5, w_cur=20, dropout=0.0)


def n_params(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in MotionDenoiser(cfg).parameters())


def inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(x_t=torch.randn(batch, cfg.window, cfg.motion_dim, generator=g),
                t=torch.randint(0, 50, (batch,), generator=g),
                prev_motion=torch.randn(batch, cfg.w_pre, cfg.motion_dim, generator=g),
                audio=torch.randn(batch, cfg.window, cfg.audio_dim, generator=g),
                first_window=torch.zeros(batch, dtype=torch.bool),
                drop_audio=torch.zeros(batch, dtype=torch.bool))


def live_model(cfg: ModelConfig, seed: int = 0) -> MotionDenoiser:
    """A model whose zero-initialised output layer is given weights, so outputs depend on inputs."""
    torch.manual_seed(seed)
    model = MotionDenoiser(cfg).eval()
    torch.nn.init.normal_(model.out.weight, std=0.1)
    return model


def test_layers_and_width_change_the_parameter_count_exactly():
    cfg = ModelConfig(**TINY)
    w, f = cfg.width, cfg.ff_mult * cfg.width
    attention = 4 * w * w + 4 * w          # in_proj (3w x w + 3w) and out_proj (w x w + w)
    per_layer = 2 * attention + (w * f + f + f * w + w) + 3 * 2 * w   # self, cross, MLP, 3 norms
    assert n_params(ModelConfig(**{**TINY, "layers": 3})) - n_params(cfg) == per_layer
    assert n_params(ModelConfig(**{**TINY, "ff_mult": 2})) < n_params(cfg)
    assert n_params(ModelConfig(**{**TINY, "width": 128, "heads": 4})) > 3 * n_params(cfg)
    model = MotionDenoiser(ModelConfig(**{**TINY, "layers": 3}))
    assert len(model.decoder.layers) == 3


def test_heads_reach_every_attention_and_change_the_output():
    cfg8 = ModelConfig(**{**TINY, "heads": 8})
    model = MotionDenoiser(cfg8)
    for layer in model.decoder.layers:
        assert layer.self_attn.num_heads == 8 and layer.multihead_attn.num_heads == 8
    # heads split the same projections: the count is unchanged, the function is not
    cfg2 = ModelConfig(**{**TINY, "heads": 2})
    assert n_params(cfg2) == n_params(cfg8)
    a, b = live_model(cfg8), live_model(cfg2)
    b.load_state_dict(a.state_dict())
    x = inputs(cfg8)
    assert not torch.allclose(a(**x), b(**x), atol=1e-5)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(**{**TINY, "heads": 5})
    with pytest.raises(ValueError, match="w_cur"):
        ModelConfig(**{**TINY, "w_pre": 30})
    with pytest.raises(ValueError, match="unknown model config"):
        ModelConfig.from_dict({**TINY, "depth": 3})
    cfg = ModelConfig(**TINY)
    x = inputs(cfg)
    x["audio"] = x["audio"][..., :8]
    with pytest.raises(ValueError, match="audio must have shape"):
        MotionDenoiser(cfg)(**x)


def test_positional_encoding_differs_by_position_and_reaches_the_output():
    cfg = ModelConfig(**TINY)
    enc = sinusoidal_encoding(torch.arange(cfg.window), cfg.width)
    dist = torch.cdist(enc, enc)
    off_diagonal = dist[~torch.eye(cfg.window, dtype=torch.bool)]
    assert off_diagonal.min() > 0.1
    model = live_model(cfg)
    assert torch.equal(model.frame_pos, enc)
    # the same motion and audio in every frame: only positions can tell the frames apart
    x = inputs(cfg, batch=1)
    x["x_t"] = x["x_t"][:, :1].expand(-1, cfg.window, -1).contiguous()
    x["audio"] = x["audio"][:, :1].expand(-1, cfg.window, -1).contiguous()
    x["prev_motion"] = x["prev_motion"][:, :1].expand(-1, cfg.w_pre, -1).contiguous()
    out = model(**x)[0]
    assert torch.cdist(out, out)[~torch.eye(cfg.window, dtype=torch.bool)].min() > 1e-4


def test_untrained_output_is_zero_and_context_start_tokens_and_audio_matter():
    cfg = ModelConfig(**TINY)
    assert torch.count_nonzero(MotionDenoiser(cfg)(**inputs(cfg))) == 0
    model = live_model(cfg)
    x = inputs(cfg)
    base = model(**x)
    other_prev = {**x, "prev_motion": x["prev_motion"] + 1.0}
    assert not torch.allclose(model(**other_prev), base)
    # a first window ignores prev_motion and the previous part of the audio
    first = {**x, "first_window": torch.ones(2, dtype=torch.bool)}
    first_other = {**first, "prev_motion": x["prev_motion"] + 1.0,
                   "audio": torch.cat([x["audio"][:, :5] + 1.0, x["audio"][:, 5:]], 1)}
    assert torch.allclose(model(**first), model(**first_other), atol=1e-6)
    assert not torch.allclose(model(**first), base)
    # dropping the audio replaces all of it by the null token
    dropped = {**x, "drop_audio": torch.ones(2, dtype=torch.bool)}
    dropped_other = {**dropped, "audio": torch.randn_like(x["audio"])}
    assert torch.allclose(model(**dropped), model(**dropped_other), atol=1e-6)
    assert not torch.allclose(model(**dropped), base)
    # per-sample flags act per sample
    mixed = model(**{**x, "drop_audio": torch.tensor([True, False])})
    assert torch.allclose(mixed[1], base[1], atol=1e-6) and not torch.allclose(mixed[0], base[0])


def test_each_frame_reads_only_its_own_audio():
    mask = audio_attention_mask(w_pre=2, window=4, radius=0)
    assert mask.shape == (6, 4)
    allowed = (~mask).nonzero().tolist()
    assert allowed == [[0, 0], [1, 1], [2, 0], [3, 1], [4, 2], [5, 3]]
    cfg = ModelConfig(**{**TINY, "layers": 1})
    model = live_model(cfg)
    x = inputs(cfg, batch=1)
    changed = x["audio"].clone()
    changed[:, 12] += 5.0  # frame 12's audio
    delta = (model(**{**x, "audio": changed}) - model(**x)).abs().sum(-1)[0]
    # one layer: only frame 12 sees the change through cross-attention; self-attention then
    # mixes frames in the next layer, which this one-layer model does not have
    assert delta[12] > 1e-4
    assert delta[torch.arange(cfg.window) != 12].max() < 1e-6
    wide = audio_attention_mask(w_pre=2, window=4, radius=1)
    assert (~wide[4]).nonzero().flatten().tolist() == [1, 2, 3]
