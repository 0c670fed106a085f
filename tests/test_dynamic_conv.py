"""The LaConv operator (Eq. 2): fast paths against the unfold reference and against the definition."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from langground.ops import dynamic_conv as dc
from langground.ops.dynamic_conv import laconv, laconv_fast, laconv_reference

PATHS = ["band", "flat", "rows"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops: a second OpenMP thread only adds hand-off stalls on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Pin the fast path's loop (normally chosen from the map size) so every loop is tested on small maps."""
    monkeypatch.setattr(dc, "_FORCE_PATH", request.param)
    return request.param


def _inputs(n, c, h, w, g, k, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    wt = torch.randn(n, g, k * k, h, w, generator=gen, dtype=torch.float64).to(dtype)
    go = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    return x.requires_grad_(), wt.requires_grad_(), go


def _fwd_bwd(op, x, wt, go, k, d, inter):
    out = op(x, wt, k, d, inter)
    gx, gw = torch.autograd.grad(out, (x, wt), go)
    return out, gx, gw


# (N, C, H, W, g, k, dilation): odd sizes, every k, dilation 2 and 3, one-group and one-channel-per-group
CASES = [
    (2, 8, 7, 9, 2, 3, 1),
    (1, 12, 10, 11, 3, 5, 1),
    (2, 32, 9, 10, 16, 7, 1),
    (1, 32, 15, 15, 16, 7, 2),  # the check: k=7, g=16, dilation 2 (and interleaved below)
    (1, 6, 9, 8, 6, 3, 3),
    (1, 4, 5, 6, 1, 7, 1),  # kernel larger than the map: most taps read padding
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("interleaved", [False, True], ids=["contiguous", "interleaved"])
def test_fast_matches_reference_float64(path, case, interleaved):
    n, c, h, w, g, k, d = case
    x, wt, go = _inputs(n, c, h, w, g, k)
    ref = _fwd_bwd(laconv_reference, x, wt, go, k, d, interleaved)
    fast = _fwd_bwd(laconv_fast, x, wt, go, k, d, interleaved)
    for name, a, b in zip(("out", "grad_x", "grad_W"), fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{name} ({path})")


@pytest.mark.parametrize("interleaved", [False, True], ids=["contiguous", "interleaved"])
def test_float32_matches_reference(path, interleaved):
    x, wt, go = _inputs(2, 16, 11, 12, 4, 5, dtype=torch.float32)
    ref = _fwd_bwd(laconv_reference, x, wt, go, 5, 1, interleaved)
    fast = _fwd_bwd(laconv_fast, x, wt, go, 5, 1, interleaved)
    for a, b in zip(fast, ref, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("interleaved", [False, True], ids=["contiguous", "interleaved"])
def test_bfloat16_close_to_exact(path, interleaved):
    """bf16 in, bf16 out, within bf16 rounding of the float64 result on the same (rounded) inputs."""
    x, wt, go = _inputs(2, 32, 9, 10, 4, 7, dtype=torch.bfloat16)
    fast = _fwd_bwd(laconv_fast, x, wt, go, 7, 1, interleaved)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, wt))
    exact = _fwd_bwd(laconv_reference, x64, w64, go.double(), 7, 1, interleaved)
    for name, a, b in zip(("out", "grad_x", "grad_W"), fast, exact, strict=True):
        assert a.dtype == torch.bfloat16, name
        err = (a.double() - b).abs().max().item()
        # one bf16 rounding of the result is 2^-9 relative; accumulating in bf16 would be several times worse
        assert err <= 2.0**-7 * b.abs().max().item(), (name, err)


@pytest.mark.parametrize("interleaved", [False, True], ids=["contiguous", "interleaved"])
def test_gradcheck(path, interleaved):
    x, wt, _ = _inputs(1, 4, 4, 5, 2, 3)  # full Jacobians
    assert torch.autograd.gradcheck(lambda a, b: laconv_fast(a, b, 3, 1, interleaved), (x, wt))
    x, wt, _ = _inputs(2, 4, 6, 7, 4, 5)  # random projections of them (fast_mode), dilation 2
    assert torch.autograd.gradcheck(
        lambda a, b: laconv_fast(a, b, 5, 2, interleaved), (x, wt), fast_mode=True
    )


def test_definition_one_hot_kernels_shift_the_image():
    """Eq. 2 from first principles: kernel = 1 at tap (a, b) copies x shifted by (a*d - p, b*d - p)."""
    k, d = 3, 2
    p = d * (k - 1) // 2
    x = torch.arange(2 * 4 * 6 * 7, dtype=torch.float64).view(2, 4, 6, 7)
    for a in range(k):
        for b in range(k):
            wt = torch.zeros(2, 2, k * k, 6, 7, dtype=torch.float64)
            wt[:, :, a * k + b] = 1
            want = torch.zeros_like(x)
            dy, dx = a * d - p, b * d - p
            for i in range(6):
                for j in range(7):
                    if 0 <= i + dy < 6 and 0 <= j + dx < 7:
                        want[:, :, i, j] = x[:, :, i + dy, j + dx]
            for op in (laconv_fast, laconv_reference):
                torch.testing.assert_close(op(x, wt, k, d), want, rtol=0, atol=0)


@pytest.mark.parametrize("interleaved", [False, True], ids=["contiguous", "interleaved"])
def test_group_of_each_channel(path, interleaved):
    """Only group 1 has a (centre, identity) kernel: exactly the channels of group 1 pass through."""
    c, g = 12, 3
    x = torch.randn(1, c, 5, 6, dtype=torch.float64)
    wt = torch.zeros(1, g, 9, 5, 6, dtype=torch.float64)
    wt[:, 1, 4] = 1
    out = laconv_fast(x, wt, 3, interleaved=interleaved)
    group = torch.arange(c) % g if interleaved else torch.arange(c) // (c // g)
    for ch in range(c):
        want = x[0, ch] if group[ch] == 1 else torch.zeros_like(x[0, ch])
        torch.testing.assert_close(out[0, ch], want, rtol=0, atol=0)


def test_channels_last_and_strided_kernels(path):
    """Channels-last x / grad and kernels from a channels-last conv: same numbers, channels-last output."""
    x, wt, go = _inputs(2, 16, 8, 9, 4, 3)
    ref = _fwd_bwd(laconv_reference, x, wt, go, 3, 1, False)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    wc = wt.detach().reshape(2, 36, 8, 9).contiguous(memory_format=torch.channels_last).view(2, 4, 9, 8, 9)
    wc.requires_grad_()
    out, gx, gw = _fwd_bwd(laconv_fast, xc, wc, go.contiguous(memory_format=torch.channels_last), 3, 1, False)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip((out, gx, gw), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_only_requested_gradients():
    x, wt, go = _inputs(1, 8, 6, 6, 2, 3)
    (gx,) = torch.autograd.grad(laconv_fast(x, wt.detach(), 3), (x,), go)
    (gw,) = torch.autograd.grad(laconv_fast(x.detach(), wt, 3), (wt,), go)
    ref = _fwd_bwd(laconv_reference, x, wt, go, 3, 1, False)
    torch.testing.assert_close(gx, ref[1])
    torch.testing.assert_close(gw, ref[2])


def test_default_path_per_stage():
    """LaConvNet-S at 416^2: rows for wide maps, flat for narrow ones, band for the 13x13 stage."""
    assert dc._path((1, 16, 208, 208), 3, 1) == "rows"
    assert dc._path((1, 64, 104, 104), 7, 1) == "rows"
    assert dc._path((1, 128, 52, 52), 7, 1) == "flat"
    assert dc._path((1, 256, 26, 26), 7, 1) == "flat"
    assert dc._path((1, 512, 13, 13), 7, 1) == "band"
    assert dc._path((1, 512, 5, 5), 7, 1) == "flat"  # W <= 2p: a wrapped tap could collide in the band


def test_laconv_dispatches_to_fast_path_on_cpu():
    x, wt, _ = _inputs(1, 8, 7, 7, 2, 3)
    torch.testing.assert_close(laconv(x, wt, 3, 1, True), laconv_fast(x, wt, 3, 1, True), rtol=0, atol=0)


def _peak_bytes(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak, result


@pytest.mark.parametrize("shape", [(1, 64, 24, 24, 4, 7), (2, 512, 13, 13, 16, 7), (1, 16, 80, 80, 4, 3)])
def test_no_unfolded_tensor(shape):
    """Workspace (peak allocation minus the results) stays <= 2x the output in forward and backward;
    the unfold reference needs k*k times it."""
    n, c, h, w, g, k = shape
    x, wt, go = _inputs(n, c, h, w, g, k, dtype=torch.float32)
    laconv_fast(x, wt, k)  # first call builds cached masks / plans
    nbytes = x.numel() * x.element_size()
    fwd_peak, out = _peak_bytes(lambda: laconv_fast(x, wt, k))
    bwd_peak, (gx, gw) = _peak_bytes(lambda: torch.autograd.grad(out, (x, wt), go))
    assert fwd_peak - nbytes <= 2 * nbytes
    assert bwd_peak - nbytes - gw.numel() * gw.element_size() <= 2 * nbytes
    ref_peak, _ = _peak_bytes(lambda: laconv_reference(x, wt, k))
    assert ref_peak - nbytes >= k * k * nbytes  # the measurement does see the unfolded tensor


def test_traceable_by_dynamo_without_graph_breaks():
    x, wt, go = _inputs(1, 8, 7, 7, 2, 3)
    compiled = torch.compile(lambda a, b: laconv(a, b, 3, 1, False) * 2, backend="eager", fullgraph=True)
    out, gx, gw = _fwd_bwd(lambda a, b, k, d, i: compiled(a, b), x, wt, go, 3, 1, False)
    ref = _fwd_bwd(laconv_reference, x, wt, go * 2, 3, 1, False)
    torch.testing.assert_close(out, ref[0] * 2)
    torch.testing.assert_close(gx, ref[1])
    torch.testing.assert_close(gw, ref[2])


BAD = [
    (lambda: (torch.zeros(8, 5, 5), torch.zeros(1, 2, 9, 5, 5), 3, 1), "x must be a 4-D tensor"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(1, 2, 9, 25), 3, 1), "weight must be a 5-D tensor"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(2, 2, 9, 5, 5), 3, 1), r"weight \(N, H, W\) = \(2, 5, 5\)"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(1, 2, 9, 5, 4), 3, 1), r"must match x \(N, H, W\) = \(1, 5, 5\)"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(1, 2, 25, 5, 5), 3, 1), r"kernel_size\*\*2 = 9, got 25"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(1, 3, 9, 5, 5), 3, 1), "C=8 must be divisible by groups g"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(1, 2, 16, 5, 5), 4, 1), "kernel_size must be odd"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(1, 2, 9, 5, 5), 3, 0), "dilation must be an int >= 1"),
    (lambda: (torch.zeros(1, 8, 5, 5), torch.zeros(1, 2, 9, 5, 5).double(), 3, 1), "share one floating dtype"),
    (lambda: (torch.zeros(1, 8, 5, 5, dtype=torch.long), torch.zeros(1, 2, 9, 5, 5, dtype=torch.long), 3, 1),
     "share one floating dtype"),
]  # fmt: skip


@pytest.mark.parametrize("make,match", BAD)
@pytest.mark.parametrize("op", [laconv, laconv_fast, laconv_reference], ids=lambda f: f.__name__)
def test_bad_input_raises_value_error(op, make, match):
    x, wt, k, d = make()
    with pytest.raises(ValueError, match=match):
        op(x, wt, k, d)


_TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from langground.ops._dynamic_conv_triton import laconv_triton
    from langground.ops.dynamic_conv import laconv_reference
    for n, c, h, w, g, k, d, inter, cl in [(2, 4, 5, 7, 2, 3, 1, False, False), (1, 6, 6, 5, 3, 3, 2, True, True)]:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
        wt = torch.randn(n, g, k * k, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
        go = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        ref = laconv_reference(xi, wt, k, d, inter)
        out = laconv_triton(xi, wt, k, d, inter)
        for a, b in zip((out, *torch.autograd.grad(out, (x, wt), go)), (ref, *torch.autograd.grad(ref, (x, wt), go))):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    print("ok")
    """
)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_in_interpreter():
    """The CUDA kernels, run on CPU by Triton's interpreter (a fresh process: it is chosen at import)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run(
        [sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
