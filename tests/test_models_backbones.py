"""timm backbones: levels, strides, NCHW outputs, freezing and loading local torchvision / timm weights."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from safetensors.torch import save_file  # noqa: E402

from langground.errors import CheckpointError, LanggroundError  # noqa: E402
from langground.models.backbones import build_backbone  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _torchvision_resnet18_features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's own forward, stopped before the pooling, as the ground truth for the loaded weights."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    c2 = model.layer1(x)
    c3 = model.layer2(c2)
    c4 = model.layer3(c3)
    return [c3, c4, model.layer4(c4)]


def test_resnet18_levels_channels_strides_and_shapes():
    backbone = build_backbone("resnet18")
    assert backbone.out_indices == (2, 3, 4)
    assert backbone.channels == [128, 256, 512]
    assert backbone.reductions == [8, 16, 32]
    feats = backbone(torch.randn(2, 3, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 6), (2, 256, 4, 3), (2, 512, 2, 2)]


def test_out_indices_truncate_the_network():
    backbone = build_backbone("resnet18", out_indices=(0, 1))
    assert backbone.channels == [64, 64] and backbone.reductions == [2, 4]
    names = {n.split(".")[0] for n, _ in backbone.body.named_parameters()}
    assert "layer1" in names and "layer2" not in names  # stages after the last level are not built
    assert [tuple(f.shape) for f in backbone(torch.randn(1, 3, 32, 32))] == [(1, 64, 16, 16), (1, 64, 8, 8)]
    with pytest.raises(LanggroundError, match=r"out_indices \[5\] must be ints in \[-5, 5\)"):
        build_backbone("resnet18", out_indices=(5,))


def test_swin_tiny_returns_nchw_maps():
    backbone = build_backbone("swin_tiny_patch4_window7_224", img_size=224, frozen_stages=0)
    assert backbone.channels == [192, 384, 768] and backbone.reductions == [8, 16, 32]
    trainable = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layers_1", "layers_2", "layers_3"}  # patch embedding + stage 1 frozen
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 28, 28), (1, 384, 14, 14), (1, 768, 7, 7)]


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet50", [512, 1024, 2048]), ("resnet101", [512, 1024, 2048]), ("dpn92", [704, 1552, 2688])],
)
def test_paper_backbones_build_with_their_channels(name, channels):
    backbone = build_backbone(name)
    assert backbone.channels == channels and backbone.reductions == [8, 16, 32]


def test_unknown_model_is_one_line():
    with pytest.raises(LanggroundError, match=r"unknown timm model 'resnet_nope'") as err:
        build_backbone("resnet_nope")
    assert "\n" not in str(err.value)


def test_freeze_bn_and_frozen_stages():
    backbone = build_backbone("resnet18", freeze_bn=True, frozen_stages=1)
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [m for m in backbone.modules() if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d)]
    assert not bns and len(frozen) == 1 + 2 * 8 + 3  # stem + 2 per BasicBlock + 3 downsample
    trainable = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}  # stem and layer1 frozen (DETR / TransVG)

    partly = build_backbone("resnet18", frozen_stages=0)  # stem only, BatchNorm kept
    partly.train()
    assert not partly.body.bn1.training and partly.body.layer1[0].bn1.training
    x = torch.randn(2, 3, 32, 32)
    before = partly.body.bn1.running_mean.clone(), partly.body.layer1[0].bn1.running_mean.clone()
    partly(x)
    assert torch.equal(partly.body.bn1.running_mean, before[0])  # frozen stage keeps its statistics
    assert not torch.equal(partly.body.layer1[0].bn1.running_mean, before[1])


def test_torchvision_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    for m in tv.modules():  # non-trivial statistics, so that a BatchNorm left unloaded would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    tv.eval()
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(tv.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = _torchvision_resnet18_features(tv, x)
        for freeze_bn in (False, True):
            backbone = build_backbone("resnet18", backbone_weights=path, freeze_bn=freeze_bn).eval()
            for got, exp in zip(backbone(x), expected, strict=True):
                torch.testing.assert_close(got, exp, rtol=0, atol=1e-5)
        random = build_backbone("resnet18").eval()
        assert (random(x)[-1] - expected[-1]).abs().max() > 1e-2  # the check above can fail


def test_timm_checkpoints_wrapped_and_safetensors(tmp_path):
    torch.manual_seed(1)
    # swin's feature model renames "layers.0..." to "layers_0...": the loader maps the full model's keys
    full = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2)
    torch.save({"epoch": 3, "arch": "swin", "state_dict": full.state_dict()}, tmp_path / "swin.pth.tar")
    full.eval()
    x = torch.randn(1, 3, 64, 64)
    backbone = build_backbone(
        "swin_tiny_patch4_window7_224", img_size=64, window_size=2, backbone_weights=tmp_path / "swin.pth.tar"
    ).eval()
    with torch.no_grad():
        expected = full.forward_intermediates(x, indices=3, intermediates_only=True)
        for got, exp in zip(backbone(x), expected, strict=True):
            torch.testing.assert_close(got, exp, rtol=0, atol=1e-5)

    net = timm.create_model("resnet10t", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r10t.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "ddp.pt")
    with torch.no_grad():
        exp = net.forward_intermediates(x, indices=3, intermediates_only=True)[-1]
        for name in ("r10t.safetensors", "ddp.pt"):
            got = build_backbone("resnet10t", backbone_weights=tmp_path / name).eval()(x)[-1]
            torch.testing.assert_close(got, exp, rtol=0, atol=1e-5)


def test_mismatched_checkpoints_are_one_line_errors(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as err:  # ResNet-18 weights for a ResNet-34
        build_backbone("resnet34", backbone_weights=tmp_path / "r18.pth")
    msg = str(err.value)
    assert "\n" not in msg and "r18.pth" in msg and "'resnet34'" in msg
    assert "80 missing keys ['layer1.2.conv1.weight'" in msg and "0 unexpected keys" in msg

    renamed = {("encoder." + k if k.startswith("layer4") else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    n4 = sum(k.startswith("layer4") for k in state)
    n4_missing = n4 - sum(k.startswith("layer4") and k.endswith("num_batches_tracked") for k in state)
    assert n4_missing == 25  # a missing step counter is no missing weight
    with pytest.raises(
        CheckpointError, match=rf"{n4_missing} missing keys .*{n4} unexpected keys \['encoder"
    ):
        build_backbone("resnet18", backbone_weights=tmp_path / "renamed.pth")

    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError, match=r"layer2\.0\.conv1\.weight has shape \(128, 64, 1, 1\) in the "
    ):
        build_backbone("resnet18", backbone_weights=tmp_path / "shape.pth")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save({"epoch": 1}, tmp_path / "nostate.pth")
    for name, pattern in [
        ("missing.pth", "no such file"),
        ("junk.pth", "cannot read it as a state dict"),
        ("nostate.pth", r"expected a state dict .* got \['epoch'\]"),
    ]:
        with pytest.raises(CheckpointError, match=pattern) as err:
            build_backbone("resnet18", backbone_weights=tmp_path / name)
        assert "\n" not in str(err.value)
