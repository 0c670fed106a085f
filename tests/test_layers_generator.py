"""Language-conditioned parameter generation (Eq. 3-4, pixel packing of Sec. 3.2) against a from-scratch
reference, plus the position embedding, packing/recovery and kernel dropout of the LaConv layer."""

import math

import pytest
import torch
import torch.nn.functional as F

from langground.layers import LaConv, ParameterGenerator, PositionEmbeddingSine2d


def _text(b=2, length=5, dim=24, pad_last=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, length, dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[-1, length - pad_last :] = False
    return y, mask


def _randomise_bn(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)


def _reference_phi(gen: ParameterGenerator, x, y, mask):
    """Eq. 3-4 written out: pack -> +2-D sine PE -> multi-head softmax(Q K^T / sqrt(d_h)) V -> W_C ->
    recover -> g = ReLU(BN) -> W_1, b_1. Shapes: x (B, d, H, W), y (B, L, d_t)."""
    b, d, h, w = x.shape
    s = gen.packing
    hp, wp = h // s, w // s
    # pixel packing: token (i, j) concatenates the s x s features of its block, channel-major
    packed = x.reshape(b, d, hp, s, wp, s).permute(0, 1, 3, 5, 2, 4).reshape(b, d * s * s, hp, wp)
    packed = packed + gen.pos(hp, wp, x.device, x.dtype)
    tokens = packed.flatten(2).transpose(1, 2)  # (B, N, d s^2)
    q = tokens @ gen.query.weight.flatten(1).T + gen.query.bias  # X W_X
    k = y @ gen.key.weight.T + gen.key.bias  # Y W_Y
    v = y @ gen.value.weight.T + gen.value.bias  # Y W_A
    heads, dh = gen.num_heads, q.shape[-1] // gen.num_heads
    ctx, maps = [], []
    for i in range(heads):
        sl = slice(i * dh, (i + 1) * dh)
        if gen.qk_norm:  # cosine similarity times the head's learned temperature
            scale = gen.logit_scale[i].exp().item()
            logits = F.normalize(q[..., sl], dim=-1) @ F.normalize(k[..., sl], dim=-1).transpose(1, 2) * scale
        else:
            logits = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh)  # (B, N, L)
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        a = logits.softmax(-1)
        ctx.append(a @ v[..., sl])
        maps.append(a)
    cond = torch.cat(ctx, -1) @ gen.out.weight.flatten(1).T  # A (Y W_A) W_C: (B, N, d_c s^2)
    d_c = cond.shape[-1] // (s * s)
    # recovery: back to (B, d_c, H, W), each packed token giving its s x s positions
    cond = cond.reshape(b, hp, wp, d_c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, d_c, h, w)
    bn = gen.norm
    cond = (cond - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    cond = F.relu(cond * bn.weight[:, None, None] + bn.bias[:, None, None])  # g(.)
    kernels = torch.einsum("bchw,oc->bohw", cond, gen.kernel.weight.flatten(1))
    kernels = kernels + gen.kernel.bias[:, None, None]  # C W_1 + b_1
    a = torch.stack(maps, 1).mean(1)  # (B, N, L), head-averaged
    return kernels.reshape(b, gen.groups, -1, h, w), a.transpose(1, 2).reshape(b, -1, hp, wp)


@pytest.mark.parametrize("packing, heads", [(1, 1), (2, 4), (4, 2)])
def test_generator_is_eq3_eq4_with_pixel_packing(packing, heads):
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 24, kernel_size=3, groups=2, packing=packing, attn_dim=16, num_heads=heads)
    _randomise_bn(gen)
    gen.eval()
    x = torch.randn(2, 8, 8, 12)
    y, mask = _text()
    with torch.no_grad():
        w, maps = gen(x, y, mask)
        ref_w, ref_maps = _reference_phi(gen, x, y, mask)
    assert w.shape == (2, 2, 9, 8, 12)  # k^2 * g values per position
    assert torch.allclose(w, ref_w, atol=1e-5), (w - ref_w).abs().max()
    assert torch.allclose(maps, ref_maps, atol=1e-6)


def test_queries_carry_a_2d_sine_position_embedding(monkeypatch):
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 24, kernel_size=3, groups=2, packing=1, attn_dim=16, num_heads=2).eval()
    assert isinstance(gen.pos, PositionEmbeddingSine2d) and gen.pos.dim == 8
    flat = torch.randn(1, 8, 1, 1).expand(1, 8, 6, 6).contiguous()  # the same feature everywhere
    y, mask = _text(b=1, pad_last=0)
    with torch.no_grad():
        w, maps = gen(flat, y, mask)
    # only the position embedding tells positions apart: kernels and attention vary over the map
    assert (w - w[..., :1, :1]).abs().amax() > 1e-3
    assert (maps - maps[..., :1, :1]).abs().amax() > 1e-4
    monkeypatch.setattr(gen.pos, "forward", lambda h, w, device, dtype: torch.zeros(1, 8, h, w))
    with torch.no_grad():
        w0, _ = gen(flat, y, mask)
    assert (w0 - w0[..., :1, :1]).abs().amax() < 1e-5
    # the embedding goes on the image queries only: it does not leak into the text keys/values
    keys_in = []
    gen.key.register_forward_pre_hook(lambda mod, args: keys_in.append(args[0]))
    with torch.no_grad():
        gen(flat, y, mask)
    assert torch.equal(keys_in[0], y)


@pytest.mark.parametrize("s", [2, 4])
def test_packing_before_attention_and_recovery_after(s):
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 24, kernel_size=3, groups=2, packing=s, attn_dim=16, num_heads=2).eval()
    seen = {}
    gen.query.register_forward_pre_hook(lambda m, a: seen.__setitem__("query", a[0].shape))
    gen.kernel.register_forward_pre_hook(lambda m, a: seen.__setitem__("kernel", a[0].shape))
    x = torch.randn(2, 8, 8, 8)
    y, mask = _text()
    with torch.no_grad():
        w, maps = gen(x, y, mask)
    assert seen["query"] == (2, 8 * s * s, 8 // s, 8 // s)  # attention runs on HW/s^2 packed tokens
    assert maps.shape == (2, 5, 8 // s, 8 // s)  # A: (HW/s^2) x L
    assert seen["kernel"] == (2, 8, 8, 8)  # C recovered to H x W before predicting the kernels
    # recovery is learned (W_C predicts s^2 conditions per token), not a copy of the token's condition
    assert (w[..., 0, 0] - w[..., 0, 1]).abs().amax() > 1e-4
    assert (w[..., 0, 0] - w[..., 1, 0]).abs().amax() > 1e-4


def test_kernel_dropout_drops_generated_kernel_values_in_training_only():
    torch.manual_seed(0)
    p = 0.5
    m = LaConv(8, 24, kernel_size=3, groups=2, packing=2, kernel_dropout=p, attn_dim=16, num_heads=2)
    used = []
    m.dynamic.register_forward_pre_hook(lambda mod, a: used.append(a[1].detach()))
    x = torch.randn(2, 8, 8, 8)
    y, mask = _text()
    m.train()
    with torch.no_grad():
        generated, _ = m.generator(x, y, mask)
        m(x, y, mask)
    dropped = used[-1] == 0
    assert 0.4 < float(dropped.float().mean()) < 0.6
    kept = ~dropped
    assert torch.allclose(used[-1][kept], generated[kept] / (1 - p), atol=1e-5)  # inverted dropout
    m.eval()
    with torch.no_grad():
        generated, _ = m.generator(x, y, mask)
        m(x, y, mask)
    assert torch.equal(used[-1], generated)


@pytest.mark.parametrize("heads", [1, 2])
def test_qk_norm_is_cosine_attention_with_a_learned_temperature(heads):
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 24, 3, 2, packing=2, attn_dim=16, num_heads=heads, qk_norm=True)
    assert torch.allclose(gen.logit_scale.exp(), torch.full((heads, 1, 1), 10.0))
    with torch.no_grad():
        gen.logit_scale[0] += 0.5  # the heads' temperatures are their own
    _randomise_bn(gen)
    gen.eval()
    x = torch.randn(2, 8, 8, 8)
    y, mask = _text()
    weight, maps = gen(x, y, mask)
    ref_w, ref_maps = _reference_phi(gen, x, y, mask)
    assert torch.allclose(weight, ref_w, atol=1e-5) and torch.allclose(maps, ref_maps, atol=1e-6)
    gen.train()
    gen(x, y, mask)[0].square().sum().backward()
    assert gen.logit_scale.grad is not None and gen.logit_scale.grad.abs().sum() > 0
