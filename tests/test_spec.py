"""Model specs and weights: user files that keep their own `models` package, modules, checkpoints."""

import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deploy.artifacts.spec import load_artifact, parse_shape, read_state_dict
from deploy.errors import BadInputError
from deploy.models import create_model


def test_parse_shape():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("2x3x32x32") == (2, 3, 32, 32)
    assert parse_shape(None) is None
    for bad in ["", "a", "1,,2", "1,0", "1;3"]:
        with pytest.raises(BadInputError):
            parse_shape(bad)


def test_user_file_whose_project_has_its_own_models_package(tmp_path, cli):
    """A YOLO-style project: `models/` at its top level, imported by the file we are pointed at."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("")
    (project / "models" / "net.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.bn = torch.nn.BatchNorm2d(8)\n"
        "        self.head = torch.nn.Linear(8, 5)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.bn(self.conv(x)).relu().mean((2, 3)))\n"
    )
    (project / "build.py").write_text("from models.net import Net\n\ndef make():\n    return Net()\n")
    out = tmp_path / "net.onnx"
    result = cli("export", f"{project / 'build.py'}:make", "-o", out, "--shape", "1,3,32,32")
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "models" not in sys.modules or "project" in str(getattr(sys.modules["models"], "__file__", ""))
    result = cli("check", f"{project / 'build.py'}:make", out, "--shape", "1,3,32,32")
    assert result.exit_code == 0, result.output


def test_module_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "zoo.py").write_text(
        "import torch\ndef small():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))\n"
    )
    monkeypatch.chdir(tmp_path)
    artifact = load_artifact("mypkg.zoo:small", shape=(1, 3, 2, 2))
    assert artifact.kind == "torch" and artifact.example_shape == (1, 3, 2, 2)
    again = load_artifact("mypkg.zoo:small", shape=(1, 3, 2, 2))  # seeded: the same weights twice
    assert torch.equal(artifact.module[1].weight, again.module[1].weight)
    with pytest.raises(BadInputError, match="no callable 'large'"):
        load_artifact("mypkg.zoo:large", shape=(1, 3, 2, 2))


def test_zoo_load_is_deterministic_and_realistic():
    a, b = load_artifact("tiny-resnet"), load_artifact("tiny-resnet")
    for (k, va), vb in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(va, vb), k
    bn = a.module.bn1 if hasattr(a.module, "bn1") else next(m for m in a.module.modules()
                                                          if isinstance(m, torch.nn.BatchNorm2d))
    # realistic numerics: statistics were measured, not the init's (0, 1); the affine is not (1, 0)
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


def test_safetensors_and_wrapped_checkpoints(tmp_path):
    model = create_model("tiny-convnet", seed=7)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = load_artifact("tiny-convnet", weights=str(tmp_path / name))
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            np.testing.assert_array_equal(loaded.module(x).numpy(), model.eval()(x).numpy())
    assert set(read_state_dict(tmp_path / "w.pth")) == set(state)


def test_onnx_spec_rejects_weights(tiny_onnx):
    with pytest.raises(BadInputError, match="carries its weights"):
        load_artifact(str(tiny_onnx), weights="x.pt")
