"""Structural reparameterization: each block's fuse() equals it (borders included), and each zoo family
converts whole to its deploy=True architecture with exactly its parameters; official names; ONNX export."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from deploy.models import create_model
from deploy.models.blocks import ACBlock, DiverseBranchBlock, MobileOneBlock, RepVGGBlock

TOL = 1e-5
ZOO = ["repvgg_a0", "repvgg_a1", "repvgg_b0", "acnet_resnet18", "dbb_resnet18", "mobileone_s0"]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rel_err(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).abs().max() / reference.abs().max())


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine and running statistics (means far from zero: BN(0) borders are non-trivial), and
    random non-identity weights for DBB's identity-based 1×1; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            elif type(m).__name__ == "IdentityBasedConv1x1":
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
    return model.eval()


def _fuse_all(module: nn.Module) -> nn.Module:
    """Replace, recursively, every submodule that has ``fuse`` by its fused form (in place)."""
    for name, child in module.named_children():
        if hasattr(child, "fuse"):
            setattr(module, name, child.fuse())
        else:
            _fuse_all(child)
    return module


# ------------------------------------------------------------------------------------------- blocks

# (in, out, kernel, stride, padding, groups); padding None means kernel // 2
COMMON = [
    (8, 8, 3, 1, None, 1),    # identity branch where the block has one
    (8, 16, 3, 2, None, 1),
    (8, 8, 3, 1, None, 2),    # grouped identity
    (8, 8, 5, 1, None, 1),
    (8, 16, 5, 2, None, 2),
    (8, 8, 3, 1, None, 8),    # depthwise
    (8, 8, 3, 2, None, 8),
    (6, 12, 5, 1, None, 3),
]
CASES = {
    RepVGGBlock: COMMON + [(8, 16, 3, 1, 2, 1)],  # padding > k//2: the 1×1 branch is padded too
    ACBlock: COMMON + [(8, 8, 3, 1, 2, 1), (8, 16, 5, 2, 3, 2)],
    DiverseBranchBlock: COMMON + [(16, 16, 5, 2, None, 16)],
    MobileOneBlock: COMMON + [(8, 8, 1, 1, 0, 1), (8, 16, 1, 1, 0, 1), (8, 16, 1, 2, 0, 2)],
}
PARAMS = [(cls, case) for cls, cases in CASES.items() for case in cases]


def _build(cls: type[nn.Module], case: tuple, **kwargs) -> nn.Module:
    cin, cout, k, stride, padding, groups = case
    padding = k // 2 if padding is None else padding
    if cls is MobileOneBlock:
        kwargs.setdefault("num_conv_branches", 3 if groups > 1 else 1)
    return cls(cin, cout, k, stride=stride, padding=padding, groups=groups, **kwargs)


@pytest.mark.parametrize(("cls", "case"), PARAMS, ids=[f"{c.__name__}-{'-'.join(map(str, p))}" for c, p in PARAMS])
def test_block_fuse_is_exact(cls: type[nn.Module], case: tuple) -> None:
    torch.manual_seed(0)
    block = _randomize(_build(cls, case))
    fused = block.fuse()
    x = torch.randn(2, case[0], 11, 13)  # odd sizes: strided windows meet the right/bottom borders unevenly
    with torch.no_grad():
        expected, got = block(x), fused(x)
    assert got.shape == expected.shape
    assert _rel_err(expected, got) <= TOL
    # the border alone (DBB pads with BN(0) there, not zero)
    assert _rel_err(expected[..., 0, :], got[..., 0, :]) <= TOL
    assert _rel_err(expected[..., :, -1], got[..., :, -1]) <= TOL

    # the fused module is exactly the deploy=True architecture
    deployed = _build(cls, case, deploy=True).eval()
    state = fused.state_dict()
    if isinstance(fused, nn.Conv2d):  # ACBlock / DBB fuse to a plain conv
        inner = {ACBlock: "fused_conv", DiverseBranchBlock: "dbb_reparam"}[cls]
        state = {f"{inner}.{k}": v for k, v in state.items()}
    else:
        assert type(fused) is cls and fused.deploy
    deployed.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(deployed(x), got)
    assert _num_params(deployed) == _num_params(fused) < _num_params(block)


@pytest.mark.parametrize("cls", list(CASES))
def test_fuse_refuses_training_mode(cls: type[nn.Module]) -> None:
    block = _build(cls, COMMON[0]).train()
    with pytest.raises(RuntimeError, match="eval"):
        block.fuse()


def test_fuse_leaves_the_global_rng_alone() -> None:
    block = _randomize(RepVGGBlock(8, 8))
    torch.manual_seed(1)
    block.fuse()
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)


def test_block_official_names() -> None:
    names = set(RepVGGBlock(8, 8).state_dict())
    assert {"rbr_dense.conv.weight", "rbr_dense.bn.running_var", "rbr_1x1.conv.weight", "rbr_identity.weight"} <= names
    assert set(ACBlock(8, 8).state_dict()) >= {"square_conv.weight", "square_bn.bias", "ver_conv.weight",
                                                 "ver_bn.running_mean", "hor_conv.weight", "hor_bn.weight"}
    dbb = set(DiverseBranchBlock(8, 8).state_dict())
    assert {"dbb_origin.conv.weight", "dbb_avg.conv.weight", "dbb_avg.bn.bn.running_mean", "dbb_avg.avgbn.weight",
            "dbb_1x1.conv.weight", "dbb_1x1_kxk.idconv1.weight", "dbb_1x1_kxk.bn1.bn.weight",
            "dbb_1x1_kxk.conv2.weight", "dbb_1x1_kxk.bn2.running_var"} <= dbb
    assert not any("id_tensor" in n for n in dbb)
    depthwise = set(DiverseBranchBlock(8, 8, groups=8).state_dict())
    assert "dbb_1x1_kxk.conv1.weight" in depthwise and not any(n.startswith("dbb_1x1.") for n in depthwise)
    mob = set(MobileOneBlock(8, 8, 3, padding=1, num_conv_branches=2).state_dict())
    assert {"rbr_conv.0.conv.weight", "rbr_conv.1.bn.weight", "rbr_scale.conv.weight", "rbr_skip.running_mean"} <= mob
    assert set(MobileOneBlock(8, 8, 3, padding=1, deploy=True).state_dict()) == {"reparam_conv.weight",
                                                                                  "reparam_conv.bias"}


# ------------------------------------------------------------------------------------------- zoo


@functools.cache
def _train_and_fused(name: str) -> tuple[nn.Module, nn.Module]:
    model = _randomize(create_model(name))
    return model, _fuse_all(copy.deepcopy(model))


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_converts_to_its_deploy_form(name: str) -> None:
    model, fused = _train_and_fused(name)
    deployed = create_model(name, deploy=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        got = fused(x)
    assert expected.shape == (1, 1000)
    assert torch.isfinite(expected).all()
    assert _rel_err(expected, got) <= TOL
    assert _num_params(deployed) == _num_params(fused) < _num_params(model)
    # same names and shapes: the converted weights load into the deploy=True model and compute the same
    deployed.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert torch.equal(deployed(x), got)


def test_repvgg_a0_parameter_counts() -> None:
    train, deploy = _num_params(create_model("repvgg_a0")), _num_params(create_model("repvgg_a0", deploy=True))
    assert (train, deploy) == (9_108_968, 8_309_384)
    assert round(train / 1e6, 2) == 9.11 and round(deploy / 1e6, 2) == 8.31  # the paper's / repo's numbers


def test_repvgg_official_names() -> None:
    state = create_model("repvgg_a0").state_dict()
    for key in ["stage0.rbr_dense.conv.weight", "stage1.0.rbr_1x1.bn.running_mean", "stage1.1.rbr_identity.weight",
                "linear.weight"]:
        assert key in state, key
    assert "stage0.rbr_reparam.bias" in create_model("repvgg_a0", deploy=True).state_dict()


def test_other_families_official_names() -> None:
    mob = create_model("mobileone_s0").state_dict()
    assert {"stage0.rbr_conv.0.conv.weight", "stage1.0.rbr_conv.3.conv.weight", "stage1.0.rbr_scale.bn.weight",
            "stage1.3.rbr_skip.running_var", "linear.weight"} <= set(mob)
    assert len(create_model("mobileone_s0").stage0.rbr_conv) == 1  # the official stem keeps one branch
    assert "stage4.1.reparam_conv.weight" in create_model("mobileone_s0", deploy=True).state_dict()
    acnet = create_model("acnet_resnet18").state_dict()
    assert {"conv1.weight", "layer1.0.conv1.ver_conv.weight", "layer2.0.downsample.1.running_mean"} <= set(acnet)
    assert "layer3.1.conv2.bias" in create_model("acnet_resnet18", deploy=True).state_dict()
    assert "layer4.0.conv1.dbb_1x1_kxk.idconv1.weight" in create_model("dbb_resnet18").state_dict()


@pytest.mark.parametrize("name", ZOO)
def test_train_form_exports_to_onnx(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, _ = _train_and_fused(name)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # batch 2: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    assert got.shape == (2, 1000)
    assert float(np.abs(expected - got).max() / np.abs(expected).max()) <= TOL
