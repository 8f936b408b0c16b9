"""User code as people write it: a torchvision-style package with relative imports and factories that take
arguments, a two-input model, and exports whose height and width stay free."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from deploy.artifacts.spec import load_artifact, parse_shapes, split_call
from deploy.errors import BadInputError


def write_vision_package(root: Path) -> Path:
    """vision/models/resnet.py as torchvision lays it out: relative imports of a sibling and of the parent
    package, keyword-only factory arguments (num_classes, width). Returns the resnet.py path."""
    pkg = root / "vision"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import models\n")
    (pkg / "_meta.py").write_text("DEFAULT_WIDTH = 8\n")
    (pkg / "models" / "__init__.py").write_text("from .resnet import resnet_tiny\n")
    (pkg / "models" / "_utils.py").write_text(textwrap.dedent("""
        from torch import nn

        def conv3x3(cin, cout, stride=1):
            return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    """))
    (pkg / "models" / "resnet.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        from .._meta import DEFAULT_WIDTH
        from ._utils import conv3x3


        class Block(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.conv1, self.bn1 = conv3x3(c, c), nn.BatchNorm2d(c)
                self.conv2, self.bn2 = conv3x3(c, c), nn.BatchNorm2d(c)

            def forward(self, x):
                y = torch.relu(self.bn1(self.conv1(x)))
                return torch.relu(x + self.bn2(self.conv2(y)))


        class TinyResNet(nn.Module):
            def __init__(self, num_classes, width):
                super().__init__()
                self.stem = nn.Sequential(conv3x3(3, width, 2), nn.BatchNorm2d(width), nn.ReLU())
                self.layer1 = Block(width)
                self.fc = nn.Linear(width, num_classes)

            def forward(self, x):
                return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


        def resnet_tiny(*, num_classes=1000, width=DEFAULT_WIDTH):
            return TinyResNet(num_classes, width)
    """))
    return pkg / "models" / "resnet.py"


TWO_INPUTS = textwrap.dedent("""
    import torch
    from torch import nn


    class ImageAndMeta(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.meta = nn.Linear(10, 6)  # a child named like a torch.fx.GraphModule attribute

        def forward(self, image, meta):
            return self.bn(self.conv(image)).mean((2, 3)) * torch.sigmoid(self.meta(meta))


    def build():
        return ImageAndMeta()
""")


@pytest.fixture(scope="module")
def vision(tmp_path_factory) -> Path:
    return write_vision_package(tmp_path_factory.mktemp("user"))


def test_package_file_with_factory_arguments_exports_quantizes_and_benches(cli, vision, tmp_path):
    spec = f"{vision}:resnet_tiny(num_classes=10)"
    out = tmp_path / "r.onnx"
    result = cli("export", spec, "-o", out, "--shape", "1,3,32,32", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED")
    dims = onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 10  # the factory argument reached the model
    report = json.loads((tmp_path / "e.json").read_text())
    files = {f["role"]: f for f in report["provenance"]["inputs"]}
    assert files["MODEL code"]["path"] == str(vision) and len(files["MODEL code"]["sha256"]) == 64

    q = tmp_path / "r.int8.onnx"
    result = cli("quantize", spec, "-o", q, "--shape", "1,3,32,32", "--samples", "8", "--eval-samples", "8",
                 "--method", "minmax")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED") and q.is_file()
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(q)).graph.node)

    result = cli("bench", spec, out, "--backend", "ort-cpu", "--shape", "1,3,32,32", "--min-runs", "3",
                 "--min-time", "0", "--warmup", "2", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert len(rows) == 2 and all(r["memory"]["rss_mb"] is not None for r in rows)  # the fresh process reloads it


def test_relative_import_in_a_loose_file_names_the_fix(cli, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "net.py").write_text("from .blocks import Block\n")
    result = cli("export", f"{loose / 'net.py'}:build", "-o", tmp_path / "n.onnx", "--shape", "1,3,8,8")
    assert result.exit_code == 2
    assert "add an __init__.py" in result.stderr


def test_missing_factory_suggests_close_names(vision):
    with pytest.raises(BadInputError) as info:
        load_artifact(f"{vision}:resnet_tiniest", shape=(1, 3, 32, 32))
    assert "did you mean resnet_tiny" in str(info.value)


def test_factory_arguments_are_literals_only():
    assert split_call("a.py:f(3, widths=[8, 16], name='x')") == ("a.py:f", ([3], {"widths": [8, 16], "name": "x"}))
    assert split_call("resnet18") == ("resnet18", None)
    assert split_call("runs(2)/net.py:f(n=3)") == ("runs(2)/net.py:f", ([], {"n": 3}))  # parens in the path
    assert split_call("a.py:f(d={'k': 1})") == ("a.py:f", ([], {"d": {"k": 1}}))
    for bad in ("a.py:f(1)(2)", "a.py:f({[1]: 2})"):
        with pytest.raises(BadInputError, match="literals"):
            split_call(bad)
    with pytest.raises(BadInputError, match="literals"):
        split_call("a.py:f(num_classes=__import__('os').getpid())")


def test_zoo_name_takes_keyword_arguments(cli, tmp_path):
    out = tmp_path / "z.onnx"
    result = cli("export", "tiny-resnet(num_classes=3)", "-o", out)
    assert result.exit_code == 0, result.output
    assert onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_shapes_per_input_and_repeats():
    assert parse_shapes(["x=1,3,8,8", "y=1,10"]) == {"x": (1, 3, 8, 8), "y": (1, 10)}
    assert parse_shapes(["1,3,8,8"]) == {None: (1, 3, 8, 8)}
    with pytest.raises(BadInputError, match="given twice"):
        parse_shapes(["1,3,8,8", "1,3,16,16"])
    with pytest.raises(BadInputError, match="given twice for input 'x'"):
        parse_shapes(["x=1,3,8,8", "x=1,3,16,16"])


def test_two_input_model_exports_and_checks(cli, tmp_path):
    src = tmp_path / "two.py"
    src.write_text(TWO_INPUTS)
    spec = f"{src}:build"
    shapes = ("--shape", "image=1,3,16,16", "--shape", "meta=1,10")
    out = tmp_path / "two.onnx"
    result = cli("export", spec, "-o", out, *shapes)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED")
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["image", "meta"]
    result = cli("check", spec, out, *shapes, "--samples", "6")
    assert result.exit_code == 0, result.output
    assert "6 samples" in result.output.strip().splitlines()[-1]
    result = cli("fuse", spec, "-o", tmp_path / "two.fused.onnx", *shapes, "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f.json").read_text())["after"].get("BatchNormalization", 0) == 0
    result = cli("inspect", spec, *shapes, "--json", tmp_path / "i.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "i.json").read_text())["params"] == 18 * 9 + 6 + 12 + 66
    # one shape for a two-input model: the error names both inputs
    result = cli("export", spec, "-o", tmp_path / "bad.onnx", "--shape", "1,3,16,16")
    assert result.exit_code == 2 and "--shape image=" in result.stderr and "--shape meta=" in result.stderr


def test_dynamic_height_and_width_run_at_two_resolutions(cli, tmp_path):
    out = tmp_path / "dyn.onnx"
    result = cli("export", "tiny-resnet", "-o", out, "--dynamic", "batch,height,width")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED")
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, side in ((1, 32), (3, 64)):
        logits = session.run(None, {"input": np.random.default_rng(0).standard_normal(
            (batch, 3, side, side)).astype(np.float32)})[0]
        assert logits.shape == (batch, 10) and np.isfinite(logits).all()
    # the fused file keeps the free axes, and check runs it at a resolution the export never saw
    fused = tmp_path / "dyn.fused.onnx"
    result = cli("fuse", out, "-o", fused, "--shape", "1,3,48,48", "--data", "random")
    assert result.exit_code == 0, result.output
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(fused)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    result = cli("check", out, fused, "--shape", "1,3,48,48", "--samples", "4")
    assert result.exit_code == 0, result.output
    assert "4 samples" in result.output.strip().splitlines()[-1]


def test_quantize_keeps_free_axes_and_asks_for_a_resolution(cli, tmp_path):
    out = tmp_path / "dyn.onnx"
    assert cli("export", "tiny-resnet", "-o", out, "--dynamic", "batch,height,width").exit_code == 0
    q = tmp_path / "dyn.int8.onnx"
    result = cli("quantize", out, "-o", q, "--samples", "8", "--eval-samples", "8", "--method", "minmax")
    assert result.exit_code == 2 and "--shape" in result.stderr and not q.exists()
    result = cli("quantize", out, "-o", q, "--shape", "1,3,32,32", "--samples", "8", "--eval-samples", "8",
                 "--method", "minmax")
    assert result.exit_code == 0, result.output
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(q)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    for side in (32, 48):
        x = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
        assert session.run(None, {"input": x})[0].shape == (2, 10)


def test_zoo_factory_that_refuses_its_arguments_is_bad_input(cli, tmp_path):
    result = cli("inspect", "tiny-resnet(num_classes=-1)")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: 'tiny-resnet(num_classes=-1)'")


def test_json_never_overwrites_the_source_of_a_module_spec(cli, tmp_path, monkeypatch):
    pkg = tmp_path / "jsonguardpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = "from torch import nn\n\ndef f():\n    return nn.Conv2d(3, 4, 3)\n"
    (pkg / "net.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    result = cli("inspect", "jsonguardpkg.net:f", "--shape", "1,3,8,8", "--json", pkg / "net.py")
    assert result.exit_code == 2 and "never overwrites its inputs" in result.stderr
    assert (pkg / "net.py").read_text() == source
