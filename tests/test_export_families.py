"""Every static model family in the registry exports to ONNX with parity <= 1e-4 (fp32) against PyTorch
(absolute within +-1, relative for larger raw logits: ``check_parity``).

Parametrised over the registry, so a family that lands later is covered without editing this file; a
family that fails to export fails here (never a skip).
"""

from __future__ import annotations

import onnx
import pytest

from langground.export import export_checkpoint, read_sidecar, sidecar_path
from langground.export.graph import INPUTS
from langground.export.sidecar import file_sha256
from langground.registry import create_model, list_models
from test_export_onnx import SIZE, WORDS, WORDS_MAX, trained_checkpoint


def _gated(name: str) -> bool:
    return hasattr(create_model(name, vocab_size=len(WORDS), input_size=SIZE), "extract_subnet")


def static_families() -> dict[str, str]:
    """Family (name before the first ``_``) -> its smallest variant (the ``_t`` one, else the first)."""
    families: dict[str, list[str]] = {}
    for name in list_models():
        families.setdefault(name.split("_")[0], []).append(name)
    out = {}
    for family, names in sorted(families.items()):
        pick = next((n for n in names if n.endswith("_t")), names[0])
        if not _gated(pick):
            out[family] = pick
    return out


FAMILIES = static_families()


# ----------------------------------------------------------------------------- parity per family


def test_the_sweep_found_the_static_families():
    assert {"laconvnet", "transvg", "reftr", "dmn"} <= set(FAMILIES)
    assert "lads" not in FAMILIES  # gated: one subnet per expression (test_export_onnx.py)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_static_family_exports_within_1e_4(family, tmp_path):
    name = FAMILIES[family]
    ckpt, out = trained_checkpoint(tmp_path / "ckpt", name), tmp_path / f"{name}.onnx"
    result = export_checkpoint(ckpt, out, threads=1)  # raises ParityError over 1e-4
    diff, spread = result.reports[0].max_abs_diff, result.reports[0].spread
    meta = read_sidecar(sidecar_path(out))
    print(f"\n{name}/{meta.task}: {result.approach}; {result.reports[0].line()}")  # shown with pytest -s
    assert meta.parity == diff and max(meta.parity_relative.values()) <= 1e-4, meta.parity_relative
    # what users read (normalised boxes, scores, embeddings) within 1e-4 absolute; raw logits relative
    bounded = {"pred_boxes", "pred_scores", "pred_box_set", "pred_image_embed", "pred_text_embed"}
    assert all(v <= 1e-4 for k, v in diff.items() if k in bounded), diff
    # the diffs mean something: PyTorch's outputs for different inputs lie far further apart
    main = [k for k in ("pred_boxes", "pred_masks", "pred_answer", "pred_text_embed") if k in diff]
    assert main and all(spread[k] > max(1e-4, 100 * diff[k]) for k in main), (diff, spread)
    assert meta.model_name == name and meta.vocab == WORDS and meta.input_size == SIZE
    assert meta.checkpoint_sha256 == file_sha256(ckpt / "model.safetensors")
    graph = onnx.load(str(out))
    assert [o.name for o in graph.graph.output] == meta.outputs
    assert [i.name for i in graph.graph.input] == list(INPUTS)
    custom = {n.domain for n in graph.graph.node} - {"", "ai.onnx"}
    assert not custom, f"{name}: custom op domains {custom} (must run on plain onnxruntime)"
    # dynamic batch; a dynamic text length unless the model unrolls a loop over the words (then fixed)
    dims = graph.graph.input[1].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert dims[1].dim_param == "length" or dims[1].dim_value == meta.fixed_text_length == WORDS_MAX
