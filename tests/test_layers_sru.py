"""The SRU of DMN (layers/sru.py): Eq. 2-6 against a step-by-step loop written independently, forward and
backward; padded batches equal unpadded singles; SRU v1 state dicts load; the activation switch."""

import math

import pytest
import torch

from langground.errors import LanggroundError
from langground.layers.sru import SRU, SRUCell, last_valid


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in float64, for this module's tests only."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def reference_layer(x, weight, bias, act):
    """One SRU v1 layer, one step and one sequence at a time, with the projections sliced per unit:
    column ``j * k + i`` of ``weight`` is projection i of unit j (v1's ``u.view(..., d, k)``)."""
    steps, batch, n_in = x.shape
    d = bias.numel() // 2
    k = weight.shape[1] // d
    w = weight.view(n_in, d, k)
    rows = []
    for b in range(batch):
        c = [torch.zeros(())] * d
        seq = []
        for t in range(steps):
            xt = x[t, b]
            hrow = []
            for j in range(d):
                xt_tilde = xt @ w[:, j, 0]  # Eq. 2
                f = torch.sigmoid(xt @ w[:, j, 1] + bias[j])  # Eq. 3
                r = torch.sigmoid(xt @ w[:, j, 2] + bias[d + j])  # Eq. 4
                c[j] = f * c[j] + (1 - f) * xt_tilde  # Eq. 5
                gc = torch.tanh(c[j]) if act == "tanh" else torch.sigmoid(c[j]) if act == "sigmoid" else c[j]
                skip = xt[j] if k == 3 else xt @ w[:, j, 3]
                hrow.append(r * gc + (1 - r) * skip)  # Eq. 6
            seq.append(torch.stack(hrow))
        rows.append(torch.stack(seq))
    return torch.stack(rows, dim=1)


def reference_sru(x, model, act):
    h = x
    for layer in model.rnn_lst:
        h = reference_layer(h, layer.weight, layer.bias, act)
    return h


@pytest.mark.parametrize("n_in,act", [(5, "tanh"), (4, "sigmoid"), (4, "identity")])
def test_forward_and_backward_match_the_step_by_step_equations(n_in, act):
    torch.manual_seed(0)
    model = SRU(n_in, 4, num_layers=2, activation=act)
    with torch.no_grad():
        for layer in model.rnn_lst:
            layer.bias.normal_()  # non-zero biases so that b_f and b_r are checked too
    x = torch.randn(3, 2, n_in, requires_grad=True)
    h, _ = model(x)
    ref = reference_sru(x, model, act)
    assert torch.allclose(h, ref, atol=1e-12)
    grad = torch.randn_like(h)
    ours = torch.autograd.grad(h, [x, *model.parameters()], grad)
    theirs = torch.autograd.grad(ref, [x, *model.parameters()], grad)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_projection_count_and_init_follow_sru_v1():
    square, wide = SRUCell(6, 6), SRUCell(5, 7)
    assert square.k == 3 and square.weight.shape == (6, 18) and square.bias.shape == (12,)
    assert wide.k == 4 and wide.weight.shape == (5, 28) and wide.bias.shape == (14,)
    bound = math.sqrt(3.0 / 5)
    assert wide.weight.abs().max() <= bound and wide.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(wide.bias) == 0


def test_a_v1_state_dict_loads_and_runs_with_v1_semantics():
    torch.manual_seed(1)
    n_in, d = 3, 4
    state = {  # SRU v1 (taolei87/sru@43c85ed) keys and shapes: k = 4 then k = 3
        "rnn_lst.0.weight": torch.randn(n_in, 4 * d),
        "rnn_lst.0.bias": torch.randn(2 * d),
        "rnn_lst.1.weight": torch.randn(d, 3 * d),
        "rnn_lst.1.bias": torch.randn(2 * d),
    }
    model = SRU(n_in, d, num_layers=2)
    model.load_state_dict(state)  # strict: same names, same shapes
    x = torch.randn(5, 2, n_in)
    h, c = model(x)
    # v1's CPU path: u = x @ W viewed (T, B, d, k); c = (c - x~) * f + x~; h = (g(c) - x') * r + x'
    prev = x
    for i in range(2):
        w, b = state[f"rnn_lst.{i}.weight"], state[f"rnn_lst.{i}.bias"]
        k = w.shape[1] // d
        u = (prev.reshape(-1, prev.shape[-1]) @ w).view(5, 2, d, k)
        f = torch.sigmoid(u[..., 1] + b[:d])
        r = torch.sigmoid(u[..., 2] + b[d:])
        xp = prev if k == 3 else u[..., 3]
        cur = torch.zeros(2, d)
        out = []
        for t in range(5):
            cur = (cur - u[t, :, :, 0]) * f[t] + u[t, :, :, 0]
            out.append((torch.tanh(cur) - xp[t]) * r[t] + xp[t])
        prev = torch.stack(out)
        assert torch.allclose(c[i], cur, atol=1e-12)
    assert torch.allclose(h, prev, atol=1e-12)


def test_padded_batch_equals_unpadded_singles():
    torch.manual_seed(2)
    model = SRU(4, 4, num_layers=3)
    lengths = [5, 2, 3]
    seqs = [torch.randn(n, 1, 4) for n in lengths]
    batch = torch.zeros(5, 3, 4)
    mask = torch.zeros(5, 3, dtype=torch.bool)
    for b, s in enumerate(seqs):
        batch[: lengths[b], b] = s[:, 0]
        batch[lengths[b] :, b] = 100.0  # garbage in the pads must not leak
        mask[: lengths[b], b] = True
    h, c = model(batch, mask)
    final = last_valid(h, mask)
    for b, s in enumerate(seqs):
        alone, c_alone = model(s)
        assert torch.allclose(h[: lengths[b], b], alone[:, 0], atol=1e-12)
        assert torch.all(h[lengths[b] :, b] == 0)
        assert torch.allclose(c[:, b], c_alone[:, 0], atol=1e-12)
        assert torch.allclose(final[b], alone[-1, 0], atol=1e-12)
    assert torch.allclose(model.final_hidden(batch, mask), final)
    # without the mask the pads run through the recurrence (the final c changes): the test discriminates
    _, c_unmasked = model(batch)
    assert not torch.allclose(c_unmasked[:, 1], c[:, 1], atol=1e-6)


def test_activation_switch_changes_g():
    torch.manual_seed(3)
    tanh = SRU(3, 3, num_layers=1, activation="tanh")
    sig = SRU(3, 3, num_layers=1, activation="sigmoid")
    sig.load_state_dict(tanh.state_dict())
    x = torch.randn(4, 2, 3)
    assert not torch.allclose(tanh(x)[0], sig(x)[0])
    assert torch.allclose(sig(x)[0], reference_sru(x, sig, "sigmoid"), atol=1e-12)
    with pytest.raises(LanggroundError, match="sru activation 'relu'"):
        SRU(3, 3, activation="relu")


def test_dropout_is_one_mask_per_sequence_and_off_in_eval():
    torch.manual_seed(4)
    model = SRU(3, 3, num_layers=2, dropout=0.5)
    assert model.rnn_lst[0].dropout == 0.5 and model.rnn_lst[1].dropout == 0.0  # v1: not the last layer
    x = torch.randn(4, 2, 3)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_bad_input_shapes_are_one_line_errors():
    model = SRU(3, 4)
    with pytest.raises(LanggroundError, match=r"SRU input must be \(T, B, 3\)"):
        model(torch.randn(2, 5))
    with pytest.raises(LanggroundError, match="SRU mask must be"):
        model(torch.randn(2, 5, 3), torch.ones(5, 2, dtype=torch.bool))
