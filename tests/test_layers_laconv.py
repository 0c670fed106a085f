import pytest
import torch
import torch.nn.functional as F

from langground.layers import (
    BLOCKS,
    ConvMLP,
    DynamicConv,
    FiLMBlock,
    LaConv,
    LaConvBlock,
    ParameterGenerator,
    QGHCBlock,
    fuse_bn_,
    masked_mean,
    shared_dynamic_dwconv,
)
from langground.ops.dynamic_conv import laconv


def _text(b=2, length=5, dim=32, pad_last=2):
    y = torch.randn(b, length, dim)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[-1, length - pad_last :] = False
    return y, mask


@pytest.mark.parametrize("packing", [1, 2, 4])
def test_generator_shapes_and_attention_maps(packing):
    torch.manual_seed(0)
    gen = ParameterGenerator(
        16, 32, kernel_size=5, groups=4, packing=packing, attn_dim=32, num_heads=4
    ).eval()
    x = torch.randn(2, 16, 16, 16)
    y, mask = _text()
    w, maps = gen(x, y, mask)
    assert w.shape == (2, 4, 25, 16, 16)
    assert maps.shape == (2, 5, 16 // packing, 16 // packing)
    # A of Eq. 4: a distribution over the real words at every position; padding gets nothing
    assert torch.allclose(maps.sum(1), torch.ones(2, 16 // packing, 16 // packing), atol=1e-5)
    assert maps[1, 3:].abs().max() == 0


def test_generator_ignores_padded_words_and_depends_on_text():
    torch.manual_seed(0)
    gen = ParameterGenerator(8, 16, kernel_size=3, groups=2, packing=2, attn_dim=16, num_heads=2).eval()
    x = torch.randn(2, 8, 8, 8)
    y, mask = _text(dim=16)
    w1, _ = gen(x, y, mask)
    y2 = y.clone()
    y2[1, 3:] = torch.randn(2, 16) * 10  # change only padding
    w2, _ = gen(x, y2, mask)
    assert torch.allclose(w1, w2, atol=1e-6)
    y3 = y.clone()
    y3[0, 0] += 1.0  # change a real word
    w3, _ = gen(x, y3, mask)
    assert not torch.allclose(w1[0], w3[0])
    assert torch.allclose(w1[1], w3[1], atol=1e-6)  # other sample untouched


def test_kernels_vary_over_positions_but_language_only_are_shared():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 8, 8)
    y, mask = _text(b=1, pad_last=0)
    w, _ = LaConv(16, 32, 3, 4, packing=2, attn_dim=32, num_heads=4).eval().generator(x, y, mask)
    assert (w[..., 0, 0] - w[..., 5, 3]).abs().max() > 1e-4
    lo = LaConv(16, 32, 3, 4, language_only=True).eval()
    w_lo, maps = lo.generator(x, y, mask)
    assert w_lo.shape == (1, 4, 9) and maps is None


def test_laconv_uses_the_operator_with_generated_kernels():
    torch.manual_seed(0)
    m = LaConv(16, 32, kernel_size=5, groups=4, packing=2, attn_dim=32, num_heads=4).eval()
    x = torch.randn(2, 16, 12, 12)
    y, mask = _text()
    out, _ = m(x, y, mask)
    w, _ = m.generator(x, y, mask)
    assert torch.allclose(out, laconv(x, w, 5), atol=1e-5)


@pytest.mark.parametrize("interleaved", [False, True])
def test_shared_kernels_match_the_operator_with_broadcast_kernels(interleaved):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 9)
    w = torch.randn(2, 4, 9)
    got = shared_dynamic_dwconv(x, w, 3, interleaved=interleaved)
    want = laconv(x, w[..., None, None].expand(-1, -1, -1, 7, 9).contiguous(), 3, interleaved=interleaved)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(DynamicConv(3, interleaved=interleaved)(x, w), want, atol=1e-5)


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_blocks_keep_shape_and_backprop(block):
    torch.manual_seed(0)
    kwargs = {"kernel_size": 3, "groups": 4}
    if block == "laconv":
        kwargs.update(packing=2, attn_dim=32, num_heads=4)
    m = BLOCKS[block](16, 32, **kwargs)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y, mask = _text()
    out, maps = m(x, y, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (maps is not None) == (block == "laconv")
    out.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_block_residual_structure_eq5_eq6():
    torch.manual_seed(0)
    m = LaConvBlock(16, 32, kernel_size=3, groups=4, packing=2, attn_dim=32, num_heads=4).eval()
    x = torch.randn(1, 16, 8, 8)
    y, mask = _text(b=1, pad_last=0)
    lac, _ = m.laconv(x, y, mask)
    mid = m.act(m.norm(lac) + x)
    out, _ = m(x, y, mask)
    assert torch.allclose(out, m.mlp(mid) + mid, atol=1e-5)


def _randomise_bn(module):
    for mod in module.modules():  # non-trivial running statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            if mod.affine:
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.5, 0.5)


def test_fuse_bn_keeps_outputs():
    torch.manual_seed(0)
    m = LaConvBlock(16, 32, kernel_size=3, groups=4, packing=2, attn_dim=32, num_heads=4)
    _randomise_bn(m)
    m.eval()
    x = torch.randn(2, 16, 8, 8)
    y, mask = _text()
    before, _ = m(x, y, mask)
    fuse_bn_(m)
    after, _ = m(x, y, mask)
    assert torch.allclose(before, after, atol=1e-4)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.mlp.modules())
    with pytest.raises(ValueError, match="eval"):
        fuse_bn_(m.train())


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_mlp_is_eq6_two_1x1_convs_with_bn_and_expansion_4():
    torch.manual_seed(0)
    m = ConvMLP(8)
    _randomise_bn(m)
    m.eval()
    assert m.fc1.conv.weight.shape == (32, 8, 1, 1) and m.fc2.conv.weight.shape == (8, 32, 1, 1)
    x = torch.randn(2, 8, 5, 5)
    # MLP(X) = BN(act(BN(X W_a)) W_b): no activation after the second BN
    want = _bn(F.conv2d(F.silu(_bn(F.conv2d(x, m.fc1.conv.weight), m.fc1.bn)), m.fc2.conv.weight), m.fc2.bn)
    assert torch.allclose(m(x), want, atol=1e-5)


def test_film_block_is_perez_resblock_plus_mlp():
    torch.manual_seed(0)
    m = FiLMBlock(8, 24)
    m.film.weight.data.normal_()  # a non-trivial modulation
    _randomise_bn(m)
    m.eval()
    x = torch.randn(2, 8, 6, 6)
    y, mask = _text(dim=24)
    gamma, beta = m.film(masked_mean(y, mask))[..., None, None].chunk(2, dim=1)
    x1 = F.silu(m.reduce(x))
    h = F.silu((1 + gamma) * F.batch_norm(m.conv(x1), m.norm.running_mean, m.norm.running_var) + beta) + x1
    out, maps = m(x, y, mask)
    assert maps is None and torch.allclose(out, h + m.mlp(h), atol=1e-5)
    assert m.conv.groups == 1 and m.conv.kernel_size == (3, 3)  # FiLM's full 3x3 conv
    # the language enters: another sentence, another output; padded words change nothing
    y2 = y.clone()
    y2[1, 3:] = 50.0
    assert torch.allclose(m(x, y2, mask)[0], out, atol=1e-6)
    assert not torch.allclose(m(x, y.flip(0), mask.flip(0))[0][0], out[0])


def test_qghc_block_hybrid_kernels_static_plus_question_guided_shared():
    torch.manual_seed(0)
    m = QGHCBlock(8, 24, kernel_size=3, groups=2)
    m.question.weight.data.normal_()
    _randomise_bn(m)
    m.eval()
    x = torch.randn(2, 8, 6, 6)
    y, mask = _text(dim=24)
    kernels = m.question(masked_mean(y, mask)).unflatten(1, (2, 9))
    mid = m.act(m.norm(m.static(x) + shared_dynamic_dwconv(x, kernels, 3)) + x)
    out, maps = m(x, y, mask)
    assert maps is None and torch.allclose(out, mid + m.mlp(mid), atol=1e-5)
