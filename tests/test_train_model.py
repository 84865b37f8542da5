"""The denoiser: sizes really applied, positions encoded, context and audio really used."""
import pytest
import torch

from training.model import ModelConfig, MotionDenoiser, audio_attention_mask, sinusoidal_encoding
from training.retired import RetiredOptionError

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


def test_model_configs_with_the_removed_options_off_still_load():
    """Checkpoints recorded model.input_skip and input_skip_sigma; off, they are dropped; on (a
    model with another forward and an extra layer), they are refused naming the last commit with them."""
    old = ModelConfig.from_dict({**TINY, "input_skip": False, "input_skip_sigma": 0.0})
    assert old == ModelConfig(**TINY)
    for key, value in (("input_skip", True), ("input_skip_sigma", 6.0)):
        with pytest.raises(RetiredOptionError, match=f"model.{key}=.*5685ff3"):
            ModelConfig.from_dict({**TINY, key: value})


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


def reference_decoder(model: MotionDenoiser) -> torch.nn.TransformerDecoder:
    """torch's own decoder with the model's weights: the computation the model had before it
    computed the single-key cross-attention directly."""
    cfg = model.cfg
    layer = torch.nn.TransformerDecoderLayer(
        d_model=cfg.width, nhead=cfg.heads, dim_feedforward=cfg.ff_mult * cfg.width,
        dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
    decoder = torch.nn.TransformerDecoder(layer, num_layers=cfg.layers, norm=torch.nn.LayerNorm(cfg.width))
    decoder.load_state_dict(model.decoder.state_dict())
    return decoder.eval()


def test_single_key_cross_attention_is_exact():
    """The fast path of audio_radius 0 gives the masked attention's outputs within 1e-5: against
    torch's TransformerDecoder, through the start-token and null-token paths too."""
    cfg = ModelConfig(**{**TINY, "layers": 3, "dropout": 0.1})
    model = live_model(cfg)
    assert model.single_key_cross_attention
    reference = reference_decoder(model)
    x = inputs(cfg, batch=4)
    x["first_window"] = torch.tensor([False, True, False, True])
    x["drop_audio"] = torch.tensor([False, False, True, True])
    fast = model(**x)
    model.single_key_cross_attention = False
    masked = model(**x)
    captured = {}
    hook = model.decoder.register_forward_hook(
        lambda mod, args, out: captured.update(tokens=args[0], memory=args[1]))
    model(**x)
    hook.remove()
    with torch.no_grad():
        via_torch = model.out(reference(captured["tokens"], captured["memory"],
                                        memory_mask=model.memory_mask)[:, cfg.w_pre:])
    assert fast.abs().max() > 1e-2  # a live output, not zeros
    assert torch.allclose(fast, masked, atol=1e-5, rtol=0)
    assert torch.allclose(fast, via_torch, atol=1e-5, rtol=0)


def test_single_key_cross_attention_trains_with_attention_dropout():
    """In training the fast path drops its single attention weight per (sample, query, head) with
    the masked attention's probability and rescaling, and gradients reach the value projection."""
    cfg = ModelConfig(**{**TINY, "layers": 1, "dropout": 0.25})
    model = live_model(cfg).train()
    attn = model.decoder.layers[0].multihead_attn
    with torch.no_grad():  # out_proj = identity, so the output is the (dropped) values themselves
        attn.out_proj.weight.copy_(torch.eye(cfg.width))
        attn.out_proj.bias.zero_()
    memory = torch.randn(64, cfg.window, cfg.width)
    out = model.decoder.layers[0].own_frame_attention(memory, model.own_frame_rows)
    value = torch.nn.functional.linear(memory, attn.in_proj_weight[2 * cfg.width:],
                                       attn.in_proj_bias[2 * cfg.width:])[:, model.own_frame_rows]
    ratio = (out / value).view(64, -1, cfg.heads, cfg.width // cfg.heads)
    per_head = ratio[..., 0]
    assert torch.allclose(ratio, per_head[..., None].expand_as(ratio), atol=1e-4)  # whole heads
    dropped = (per_head.abs() < 1e-6).float().mean()
    assert abs(float(dropped) - 0.25) < 0.02
    kept = per_head[per_head.abs() > 1e-6]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.75), atol=1e-4)
    out.sum().backward()
    assert attn.in_proj_weight.grad[2 * cfg.width:].abs().sum() > 0


def test_cpu_dropout_mask_is_bernoulli_with_p_rounded_to_16_bits():
    """The cheaper mask: the dropped fraction is p within binomial noise, kept values are rescaled
    by the exact 1 / (1 - p) of the rounded p, the four elements sharing a 64-bit draw are
    independent, and the default generator's seed repeats it."""
    from training.cpu_dropout import LEVELS, dropout

    n = 1 << 20
    x = torch.ones(n)
    torch.manual_seed(0)
    y = dropout(x, 0.1, True)
    p = round(0.1 * LEVELS) / LEVELS
    dropped = (y == 0).float()
    assert abs(float(dropped.mean()) - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)), rtol=1e-6)
    lanes = dropped.view(-1, 4)
    corr = torch.corrcoef(lanes.T)
    assert (corr - torch.eye(4)).abs().max() < 0.01
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1, True), y)
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    assert dropout(torch.ones(8, dtype=torch.bfloat16), 0.5, True).dtype == torch.bfloat16


def test_cpu_self_attention_path_equals_torch_and_keeps_the_expectation():
    """In CPU training the layers compute self-attention themselves (to drop weights with the
    cheaper mask): with a dropout that keeps everything it equals nn.MultiheadAttention's outputs
    and gradients; with dropout 0.5 its mean over many draws approaches the undropped output."""
    cfg = ModelConfig(**{**TINY, "layers": 1, "dropout": 0.1})
    layer = live_model(cfg).decoder.layers[0].train()
    h = torch.randn(3, 30, cfg.width, requires_grad=True)
    layer.self_attn.dropout = 1e-7  # the manual path runs; rounded to 0 levels it drops nothing
    ours = layer.self_attention(h)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), h)
    reference = layer.self_attn(h, h, h, need_weights=False)[0]  # p 1e-7: all kept, scale 1 + 1e-7
    (grad_ref,) = torch.autograd.grad(reference.square().sum(), h)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-4, rtol=1e-4)
    layer.self_attn.dropout = 0.5
    with torch.no_grad():
        undropped = layer.eval().self_attention(h)
        layer.train()
        draws = torch.stack([layer.self_attention(h) for _ in range(400)])
    assert (draws[0] - undropped).abs().mean() > 0.05  # really dropped
    assert (draws.mean(0) - undropped).abs().mean() < 0.1 * (draws[0] - undropped).abs().mean()
