"""What a model needs to trace into a shape-generic ONNX graph, applied only while it is exported.

On this torch (2.14) the TorchScript exporter bakes the traced text length into the reshapes of
``nn.MultiheadAttention`` (``F.multi_head_attention_forward`` computes them from Python ints), so a
graph traced with 5 words fails at run time on 7. :func:`exportable` swaps the forward of every
``nn.MultiheadAttention`` instance for the same attention written with ``-1`` reshapes (the same
parameters, no copy), turns PyTorch's fused Transformer fast path off, and restores both afterwards.
The LaConv operator switches to its standard-op path by itself (``ops.dynamic_conv_export``).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.errors import LanggroundError

__all__ = ["exportable", "mha_forward"]


def _neg_inf_mask(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Add an attention mask: bool True = not allowed (``-inf``), float = added to the scores."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.to(scores.dtype)


def mha_forward(
    self: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention.forward`` (eval: no dropout) with every reshape length-generic."""
    if self.bias_k is not None or self.add_zero_attn:
        raise LanggroundError("nn.MultiheadAttention with add_bias_kv / add_zero_attn cannot be exported")
    if is_causal and attn_mask is None:
        raise LanggroundError("nn.MultiheadAttention(is_causal=True) without attn_mask cannot be exported")
    if query.dim() != 3:
        raise LanggroundError(f"export: unbatched attention inputs ({tuple(query.shape)}) are not supported")
    if not self.batch_first:  # (L, B, E) -> (B, L, E)
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    h, hd = self.num_heads, self.head_dim
    if self._qkv_same_embed_dim:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
    b_q = b_k = b_v = None
    if self.in_proj_bias is not None:
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q).unflatten(-1, (h, hd)).transpose(1, 2)  # (B, h, L, hd)
    k = F.linear(key, w_k, b_k).unflatten(-1, (h, hd)).transpose(1, 2)
    v = F.linear(value, w_v, b_v).unflatten(-1, (h, hd)).transpose(1, 2)
    scores = torch.matmul(q * (hd**-0.5), k.transpose(-1, -2))  # (B, h, L, S)
    if attn_mask is not None and attn_mask.dim() == 3:  # (B*h, L, S)
        attn_mask = attn_mask.unflatten(0, (-1, h))
    scores = _neg_inf_mask(scores, attn_mask)
    if key_padding_mask is not None:
        scores = _neg_inf_mask(scores, key_padding_mask[:, None, None, :])
    att = torch.softmax(scores, dim=-1)
    out = self.out_proj(torch.matmul(att, v).transpose(1, 2).flatten(2))
    if not self.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = att.mean(dim=1) if average_attn_weights else att
    return out, weights


@contextlib.contextmanager
def exportable(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` traces into a length-generic graph (see the module docstring)."""
    patched = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    mha_backend = getattr(torch.backends, "mha", None)
    fastpath = mha_backend.get_fastpath_enabled() if mha_backend is not None else None
    try:
        for m in patched:
            m.forward = types.MethodType(mha_forward, m)  # an instance attribute: the class is untouched
        if mha_backend is not None:
            mha_backend.set_fastpath_enabled(False)
        yield model
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
        if mha_backend is not None and fastpath is not None:
            mha_backend.set_fastpath_enabled(fastpath)
