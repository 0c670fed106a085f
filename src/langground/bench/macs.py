"""MACs of one forward pass: ``torch.utils.flop_counter.FlopCounterMode`` plus explicit formulas.

The flop counter sees matmuls and convolutions only. Modules whose work it misses or cannot see
(the LaConv operator's element-wise multiply-adds, fused RNN kernels, the fused Transformer-encoder
fast path) are counted by formula instead: a forward pre/post hook pair removes whatever the counter
saw inside such a module and adds the formula's MACs. Papers' "FLOPs" are these MACs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from langground.layers.dynamic import DynamicConv


def _dynamic_conv_macs(m: DynamicConv, args: tuple, out: Any) -> int:
    x = args[0]
    return x.numel() * m.kernel_size * m.kernel_size  # N*C*H*W*k^2 (Eq. 2)


def _rnn_macs(m: nn.RNNBase, args: tuple, out: Any) -> int:
    x = args[0]
    steps = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1]
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    dirs = 2 if m.bidirectional else 1
    total, in_dim = 0, m.input_size
    for _ in range(m.num_layers):
        total += steps * dirs * gates * m.hidden_size * (in_dim + m.hidden_size)
        in_dim = m.hidden_size * dirs
    return total


def _encoder_layer_macs(m: nn.TransformerEncoderLayer, args: tuple, out: Any) -> int:
    x = args[0]
    b, length, d = x.shape if m.self_attn.batch_first else (x.shape[1], x.shape[0], x.shape[2])
    ffn = m.linear1.out_features
    return b * length * (4 * d * d + 2 * d * ffn) + 2 * b * length * length * d


#: module type -> MACs(module, inputs, output); extend for new opaque ops.
EXPLICIT_MACS: dict[type[nn.Module], Callable[[Any, tuple, Any], int]] = {
    DynamicConv: _dynamic_conv_macs,
    nn.LSTM: _rnn_macs,
    nn.GRU: _rnn_macs,
    nn.TransformerEncoderLayer: _encoder_layer_macs,
}


@dataclass
class MacReport:
    total: int  # MACs
    by_module: dict[str, int] = field(default_factory=dict)  # top-level children
    explicit: dict[str, int] = field(default_factory=dict)  # MACs by formula, per module type

    @property
    def flops(self) -> int:
        return 2 * self.total


def count_macs(model: nn.Module, *inputs: Any) -> MacReport:
    """MACs of ``model(*inputs)`` in eval mode without gradients, per top-level child too."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    explicit: dict[str, int] = defaultdict(int)
    child_hidden: dict[str, int] = defaultdict(int)  # counter flops seen inside explicit modules
    child_explicit: dict[str, int] = defaultdict(int)
    starts: list[int] = []
    owner = {id(m): name for name, child in model.named_children() for m in child.modules()}
    handles = []

    def pre(mod: nn.Module, args: tuple) -> None:
        starts.append(counter.get_total_flops())

    def make_post(kind: str, formula: Callable) -> Callable:
        def post(mod: nn.Module, args: tuple, out: Any) -> None:
            start = starts.pop()
            if starts:  # nested inside another explicit module: the outer formula covers it
                return
            child = owner.get(id(mod), "(root)")
            child_hidden[child] += counter.get_total_flops() - start
            macs = int(formula(mod, args, out))
            explicit[kind] += macs
            child_explicit[child] += macs

        return post

    for mod in model.modules():
        for typ, formula in EXPLICIT_MACS.items():
            if isinstance(mod, typ):
                handles.append(mod.register_forward_pre_hook(pre))
                handles.append(mod.register_forward_hook(make_post(typ.__name__, formula)))
                break
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {}
    for name, _ in model.named_children():
        seen = sum(counts.get(f"{root}.{name}", {}).values())
        macs = (seen - child_hidden[name]) // 2 + child_explicit[name]
        if macs:
            by_module[name] = macs
    total = (counter.get_total_flops() - sum(child_hidden.values())) // 2 + sum(explicit.values())
    return MacReport(total=total, by_module=by_module, explicit=dict(explicit))
