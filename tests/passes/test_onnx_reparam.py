"""The generic ONNX branch merge on generated blocks (hypothesis): random branch sets exported by the real
TorchScript exporter merge into one Conv that ONNX Runtime runs within 1e-5; traps (a zero-padded border
after a bias, a circular shift) are skipped with a reason and never merged wrongly."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from deploy.passes.onnx_fuse import onnx_fuse_bn
from deploy.passes.onnx_reparam import NotMergeable, Window, merged_geometry, onnx_reparam

SIZE = 11  # odd on purpose: stride-2 borders differ from even sizes


def _bn(c: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.3)
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return bn


class PadWithBN(nn.Module):
    """BN, then pad with the BN's output for a zero input (DBB's rule that makes 1×1 → K×K exact)."""

    def __init__(self, bn: nn.BatchNorm2d, pad: int):
        super().__init__()
        self.bn, self.pad = bn, pad

    def forward(self, x):
        y = self.bn(x)
        value = self.bn.bias - self.bn.running_mean * self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        border = F.pad(torch.zeros_like(y[:, :1]), [self.pad] * 4, value=1.0)
        return F.pad(y, [self.pad] * 4) + border * value.view(1, -1, 1, 1)


class Roll(nn.Module):
    def forward(self, x):
        return torch.roll(x, shifts=1, dims=3)


def make_branch(kind: str, k: int, cin: int, cout: int, stride: int, groups: int, bn: bool, bias: bool,
                gen: torch.Generator) -> nn.Module:
    p = k // 2
    layers: list[nn.Module]
    if kind == "conv":
        layers = [nn.Conv2d(cin, cout, k, stride, p, groups=groups, bias=bias)]
    elif kind == "hor":
        layers = [nn.Conv2d(cin, cout, (1, k), stride, (0, p), groups=groups, bias=bias)]
    elif kind == "ver":
        layers = [nn.Conv2d(cin, cout, (k, 1), stride, (p, 0), groups=groups, bias=bias)]
    elif kind == "identity":
        layers = [nn.Identity()]
    elif kind == "avg":
        layers = [nn.AvgPool2d(3, stride, 1, count_include_pad=True)]
    elif kind == "1x1-kxk":  # no bias between them: zero padding of the intermediate is exact
        layers = [nn.Conv2d(cin, cout, 1, groups=groups, bias=False), nn.Conv2d(cout, cout, k, stride, p,
                                                                                groups=groups, bias=bias)]
    elif kind == "1x1-bnpad-kxk":  # DBB
        layers = [nn.Conv2d(cin, cout, 1, groups=groups, bias=False), PadWithBN(_bn(cout, gen), p),
                  nn.Conv2d(cout, cout, k, stride, 0, groups=groups, bias=bias)]
    elif kind == "1x1-bnpad-avg":  # DBB's average branch
        layers = [nn.Conv2d(cin, cout, 1, groups=groups, bias=False), PadWithBN(_bn(cout, gen), 1),
                  nn.AvgPool2d(3, stride, 0)]
    elif kind == "trap-zero-border":  # bias, then zero padding: a conv only away from the border
        layers = [nn.Conv2d(cin, cout, 1, groups=groups, bias=False), _bn(cout, gen),
                  nn.Conv2d(cout, cout, max(k, 3), stride, max(k, 3) // 2, groups=groups, bias=bias)]
    elif kind == "trap-roll":  # a circular shift: linear, not a convolution
        layers = [nn.Conv2d(cin, cout, k, stride, p, groups=groups, bias=bias), Roll()]
    else:
        raise ValueError(kind)
    if bn and kind not in ("trap-zero-border",):
        layers.append(_bn(cout, gen))
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


@st.composite
def blocks(draw, trap: bool = False):
    cin = draw(st.sampled_from([4, 6, 8]))
    stride = draw(st.sampled_from([1, 2]))
    cout = cin if draw(st.booleans()) else draw(st.sampled_from([4, 8]))
    groups = draw(st.sampled_from(sorted({g for g in (1, 2, cin) if cin % g == 0 and cout % g == 0})))
    square = cin == cout
    kinds = ["conv", "hor", "ver", "1x1-kxk", "1x1-bnpad-kxk"]
    if square:
        kinds += ["avg", "1x1-bnpad-avg"] + (["identity"] if stride == 1 else [])
    n = draw(st.integers(2, 4))
    specs = [(draw(st.sampled_from(kinds)), draw(st.sampled_from([1, 3, 5])), draw(st.booleans()),
              draw(st.booleans())) for _ in range(n)]
    if all(kind == "identity" for kind, *_ in specs):  # x + x: nothing to merge into
        specs[0] = ("conv", *specs[0][1:])
    if trap:
        specs[draw(st.integers(0, n - 1))] = (draw(st.sampled_from(["trap-zero-border", "trap-roll"])),
                                              draw(st.sampled_from([1, 3])), False, True)
    seed = draw(st.integers(0, 2**16))
    return cin, cout, stride, groups, specs, seed


def build(cin, cout, stride, groups, specs, seed) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    block = Block([make_branch(kind, k, cin, cout, stride, groups, bn, bias, gen) for kind, k, bn, bias in specs])
    return block.eval()


def export(module: nn.Module, cin: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, cin, SIZE, SIZE),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


def check_mergeable(case) -> None:
    cin, cout, stride, groups, specs, seed = case
    module = build(*case)
    original = export(module, cin)
    result = onnx_reparam(original)
    ops = [n.op_type for n in result.model.graph.node]
    reasons = [s.what for s in result.report.skipped]
    if ops != ["Conv"]:  # only refusal allowed: one conv would cost more than the branches (e.g. 1×1 + avg-pool)
        assert any("would cost" in r for r in reasons), (specs, ops, reasons)
    x = np.random.default_rng(seed).standard_normal((2, cin, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert relative_error(expected, run(result.model, x)) <= 1e-5


def check_trap(case) -> None:
    cin, cout, stride, groups, specs, seed = case
    module = build(*case)
    original = export(module, cin)
    result = onnx_reparam(original)
    x = np.random.default_rng(seed).standard_normal((2, cin, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert relative_error(expected, run(result.model, x)) <= 1e-5  # never merged wrongly
    ops = [n.op_type for n in result.model.graph.node]
    assert "Add" in ops, specs  # the sum holding the trap survives …
    assert result.report.skipped and all(s.what for s in result.report.skipped)  # … with a reason


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(blocks())
def test_generated_branch_sets_merge_exactly(case):
    check_mergeable(case)


@FAST
@given(blocks(trap=True))
def test_traps_are_skipped_never_merged_wrongly(case):
    check_trap(case)


@pytest.mark.slow
@SLOW
@given(blocks())
def test_generated_branch_sets_merge_exactly_thousand(case):
    check_mergeable(case)


@pytest.mark.slow
@SLOW
@given(blocks(trap=True))
def test_traps_thousand(case):
    check_trap(case)


def test_unequal_strides_are_refused_with_a_reason():
    with pytest.raises(NotMergeable, match="unequal strides"):
        merged_geometry([[Window(1, 1, 3)] * 2, [Window(2, 0, 1)] * 2])


def test_merged_geometry_is_the_union_of_windows():
    # 3×3 pad 1, 1×1 pad 0, and a 5×1 / 1×5 pair: merged 5×5 pad 2
    paths = [[Window(1, 1, 3)] * 2, [Window(1, 0, 1)] * 2, [Window(1, 2, 5), Window(1, 0, 1)]]
    g = merged_geometry(paths)
    assert g.kernel == (5, 3) and g.pad_begin == (2, 1) and g.stride == (1, 1)


def test_fuse_bn_folds_conv_gemm_and_reports_the_rest():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.bn0, self.conv, self.bn1 = _bn(3, gen), nn.Conv2d(3, 4, 3), _bn(4, gen)
            self.fc, self.bn2 = nn.Linear(4, 5), nn.BatchNorm1d(5).eval()
            self.conv2, self.bn3 = nn.Conv2d(4, 4, 3, padding=1), _bn(4, gen)

        def forward(self, x):
            y = self.bn1(self.conv(self.bn0(x)))  # BN before an unpadded conv, and after it
            y = torch.relu(y)
            z = self.conv2(y)
            y = self.bn3(z) + z  # conv output used twice: BN cannot fold into it
            return self.bn2(self.fc(y.mean((2, 3))))

    module = Net().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 9, 9),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 4
    result = onnx_fuse_bn(model)
    left = [n for n in result.model.graph.node if n.op_type == "BatchNormalization"]
    assert len(left) == 1 and len(result.report.sites) == 3 and len(result.report.skipped) == 1
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert relative_error(expected, run(result.model, x)) <= 1e-5


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_dbb_as_its_authors_wrote_it_merges_to_one_conv_per_block(cli, exporter, tmp_path):
    """BN-then-pad by slice assignment (ScatterND over shapes the exporter takes from Shape(input)):
    shape arithmetic is a constant for the file's input size, never a second source of the branches."""
    from pathlib import Path

    spec = f"{Path(__file__).parents[1] / 'fixtures' / 'dbb_authors.py'}:net"
    exported = tmp_path / f"{exporter}.onnx"
    assert cli("export", spec, "-o", exported, "--shape", "1,3,32,32", "--exporter", exporter).exit_code == 0
    assert sum(n.op_type == "Conv" for n in onnx.load(str(exported)).graph.node) == 16
    fused = tmp_path / "fused.onnx"
    result = cli("fuse", exported, "-o", fused)
    assert result.exit_code == 0, result.output
    ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    assert ops.count("Conv") == 4 and "ScatterND" not in ops  # three blocks and the head
