"""Language-conditioned parameter generation against the PAPER's Eq. 3-4 and pixel packing (Sec. 3.2),
written from the text; then, separately and named as such, the choices that come from the authors'
released code (layers/laconv.py): g = ReLU(BN), the sine position embedding on the queries, kernel dropout.
docs/fidelity.md lists which is which."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from langground.layers import LaConv, ParameterGenerator, PositionEmbeddingSine2d
from langground.models.laconvnet import LaConvNetConfig


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


def _dot_product(q, k, head):
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # Eq. 4, per head of the multi-head version


def _paper_phi(
    x, y, mask, w_x, w_y, w_a, w_c, w_1, b_1, s, heads, groups, g=lambda c: c, logits=_dot_product
):
    """phi(X, Y) from the paper, one position at a time.

    Sec. 3.2 (pixel packing): token (i, j) is the concatenation of the s x s local features of its block;
    A and C live at (h*w)/s^2 tokens and C is recovered to h x w "before the parameter predictions".
    Eq. 4: A = Softmax((X W_X)(Y W_Y)^T / sqrt(d)), per head. Eq. 3: C = g(A (Y W_A) W_C), W = C W_1 + b_1.
    No biases, no position embedding: the equations have none. ``g`` is Eq. 3's undefined g (identity
    here unless given). Weights are plain matrices ``(in, out)``.
    """
    b, d, h, w = x.shape
    hp, wp = h // s, w // s
    d_c = w_c.shape[1] // (s * s)
    kernels = torch.zeros(b, groups, w_1.shape[1] // groups, h, w, dtype=x.dtype)
    attention = torch.zeros(b, y.shape[1], hp, wp, dtype=x.dtype)
    cond = torch.zeros(b, d_c, h, w, dtype=x.dtype)
    for n in range(b):
        words = mask[n]
        keys, values = y[n, words] @ w_y, y[n, words] @ w_a  # (L_real, d_att)
        dh = keys.shape[1] // heads
        for i in range(hp):
            for j in range(wp):
                token = torch.cat(
                    [x[n, c, i * s : (i + 1) * s, j * s : (j + 1) * s].flatten() for c in range(d)]
                )
                query = token @ w_x
                ctx, maps = [], []
                for hd in range(heads):
                    sl = slice(hd * dh, (hd + 1) * dh)
                    a = torch.softmax(logits(query[sl], keys[:, sl], hd), dim=-1)  # over the real words
                    ctx.append(a @ values[:, sl])
                    maps.append(a)
                attention[n, words, i, j] = torch.stack(maps).mean(0)  # head-averaged A (Fig. 6)
                c_tok = torch.cat(ctx) @ w_c  # A (Y W_A) W_C for this token: d_c * s * s values
                for c in range(d_c):  # recovery: value (c, dy, dx) goes back to pixel (i*s+dy, j*s+dx)
                    cond[n, c, i * s : (i + 1) * s, j * s : (j + 1) * s] = c_tok[
                        c * s * s : (c + 1) * s * s
                    ].view(s, s)
    cond = g(cond)
    for yy in range(h):
        for xx in range(w):
            kernels[:, :, :, yy, xx] = (cond[:, :, yy, xx] @ w_1 + b_1).view(b, groups, -1)  # Eq. 3
    return kernels, attention


def _weights(gen):
    """The generator's W_X, W_Y, W_A, W_C, W_1, b_1 as ``(in, out)`` matrices."""
    return (
        gen.query.weight.flatten(1).T,
        gen.key.weight.T,
        gen.value.weight.T,
        gen.out.weight.flatten(1).T,
        gen.kernel.weight.flatten(1).T,
        gen.kernel.bias,
    )


def _paper_only(gen):
    """Remove what the equations do not have: g = identity, no position embedding, no projection biases."""
    gen.norm, gen.act = nn.Identity(), nn.Identity()
    gen.pos.forward = lambda h, w, device, dtype: torch.zeros(
        1, gen.pos.dim, h, w, device=device, dtype=dtype
    )
    for lin in (gen.query, gen.key, gen.value):
        nn.init.zeros_(lin.bias)
    return gen


@pytest.mark.parametrize("packing, heads", [(1, 1), (2, 4), (4, 2)])
def test_generator_is_the_papers_eq3_eq4_with_pixel_packing(packing, heads):
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 24, kernel_size=3, groups=2, packing=packing, attn_dim=16, num_heads=heads)
    gen = _paper_only(gen).eval()
    x = torch.randn(2, 8, 8, 12)
    y, mask = _text()
    with torch.no_grad():
        w, maps = gen(x, y, mask)
        ref_w, ref_maps = _paper_phi(x, y, mask, *_weights(gen), packing, heads, groups=2)
    assert w.shape == (2, 2, 9, 8, 12)  # k^2 * g values per position
    assert torch.allclose(w, ref_w, atol=1e-5), (w - ref_w).abs().max()
    assert torch.allclose(maps, ref_maps, atol=1e-6)


@pytest.mark.parametrize("packing", [1, 2])
def test_released_code_extras_relu_bn_g_query_position_embedding_and_biases(packing):
    """From the released code (layers/laconv.py ``ParameterGenerator``, ``MHAtt2D``), not the paper:
    g = ReLU(BN(.)) after recovery, a sine position embedding added to the (packed) image queries, and
    biases on W_X, W_Y, W_A. The layer is the paper's phi with exactly these three added."""
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 24, kernel_size=3, groups=2, packing=packing, attn_dim=16, num_heads=2)
    _randomise_bn(gen)
    for lin in (gen.query, gen.key, gen.value):
        nn.init.uniform_(lin.bias, -0.5, 0.5)
    gen.eval()
    assert isinstance(gen.norm, nn.BatchNorm2d) and isinstance(gen.act, nn.ReLU)
    x = torch.randn(2, 8, 8, 8)
    y, mask = _text()
    hp = 8 // packing
    pos = gen.pos(hp, hp, x.device, x.dtype)[0]  # (d s^2, hp, hp), added to each packed token
    w_x, w_y, w_a, w_c, w_1, b_1 = _weights(gen)
    bn = gen.norm

    def relu_bn(c):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return F.relu((c - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None])

    # Fold the extras into the paper reference: the embedding of each packed token, put back at full
    # resolution, is added to X; a constant-1 word feature carries the key/value biases; the query bias is
    # added to each head's slice of X W_X.
    x_pe = x + (F.pixel_shuffle(pos[None], packing) if packing > 1 else pos[None])
    dh = gen.head_dim
    with torch.no_grad():
        got, maps = gen(x, y, mask)
        y1 = torch.cat([y, torch.ones(*y.shape[:2], 1)], -1)  # a constant 1 carries the key/value biases
        ref, ref_maps = _paper_phi(
            x_pe,
            y1,
            mask,
            w_x,
            torch.cat([w_y, gen.key.bias[None]]),
            torch.cat([w_a, gen.value.bias[None]]),
            w_c,
            w_1,
            b_1,
            packing,
            2,
            groups=2,
            g=relu_bn,
            logits=lambda q, k, hd: _dot_product(q + gen.query.bias[hd * dh : (hd + 1) * dh], k, hd),
        )
        plain, _ = _paper_phi(x, y, mask, w_x, w_y, w_a, w_c, w_1, b_1, packing, 2, groups=2)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert torch.allclose(maps, ref_maps, atol=1e-6)
    assert (got - plain).abs().max() > 1e-2  # the extras change the kernels: they are not no-ops


def test_queries_carry_a_2d_sine_position_embedding(monkeypatch):
    """Released code (layers/laconv.py ``ParameterGenerator``: ``x = x + visual_position``); the paper has
    no position embedding."""
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
    """Sec. 3.2: A and C at (h*w)/s^2 tokens, C recovered to h x w before the kernels are predicted."""
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


def test_released_code_kernel_dropout_drops_generated_kernel_values_in_training_only():
    """Released code (layers/laconv.py ``LaConv``: ``weight_dropout=0.1``, ``F.dropout`` on the generated
    kernels); the paper does not mention it. Our default is the code's 0.1."""
    assert LaConvNetConfig().kernel_dropout == 0.1
    assert LaConv(8, 24, kernel_size=3, groups=2).kernel_dropout == 0.1
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
    """Ours (``attn_qk_norm``): Eq. 4's scaled dot product replaced by cosine similarity times a learned
    per-head temperature; everything else is the paper's phi."""
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 24, 3, 2, packing=2, attn_dim=16, num_heads=heads, qk_norm=True)
    assert torch.allclose(gen.logit_scale.exp(), torch.full((heads, 1, 1), 10.0))
    with torch.no_grad():
        gen.logit_scale[0] += 0.5  # the heads' temperatures are their own
    gen = _paper_only(gen).eval()
    x = torch.randn(2, 8, 8, 8)
    y, mask = _text()

    def cosine(q, k, head):
        return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T * gen.logit_scale[head].exp().item()

    weight, maps = gen(x, y, mask)
    with torch.no_grad():
        ref_w, ref_maps = _paper_phi(x, y, mask, *_weights(gen), 2, heads, groups=2, logits=cosine)
    assert torch.allclose(weight, ref_w, atol=1e-5) and torch.allclose(maps, ref_maps, atol=1e-6)
    gen.train()
    gen(x, y, mask)[0].square().sum().backward()
    assert gen.logit_scale.grad is not None and gen.logit_scale.grad.abs().sum() > 0
