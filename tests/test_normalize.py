"""Files other exporters write: opset 11, weights as Constant nodes, a literal −1 batch, another input name.
Every verb reads them through one normalization (deploy/normalize.py), checked equal on load."""

import numpy as np
import onnx
import pytest
import torch

from deploy.artifacts.normalize import needs_normalizing, normalize_onnx, verify_same
from deploy.artifacts.spec import load_artifact
from deploy.errors import BadInputError

FAST_Q = ("--samples", "24", "--eval-samples", "16")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """tiny-resnet as an old exporter writes it: opset 11, Constant-node weights, batch dim −1, 'images'."""
    folder = tmp_path_factory.mktemp("foreign")
    module = load_artifact("tiny-resnet").module.eval()
    path = folder / "opset11.onnx"
    torch.onnx.export(module, torch.zeros(1, 3, 32, 32), str(path), opset_version=11, dynamo=False,
                      input_names=["images"], output_names=["logits"], dynamic_axes={"images": {0: "n"}})
    model = onnx.load(str(path))
    constants = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(constants + nodes)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = -1
    onnx.save(model, str(path))
    return path


def test_the_fixture_is_what_other_exporters_write(foreign):
    model = onnx.load(str(foreign))
    assert model.opset_import[0].version == 11 and not model.graph.initializer
    assert sum(n.op_type == "Constant" for n in model.graph.node) >= 14
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    assert needs_normalizing(model)


def test_normalization_upgrades_moves_weights_and_frees_the_batch(foreign):
    normalized = normalize_onnx(foreign)
    model = onnx.load(str(normalized.path))
    assert model.opset_import[0].version == 13
    assert not any(n.op_type == "Constant" for n in model.graph.node) and len(model.graph.initializer) >= 14
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert normalized.verified.startswith("checked in ONNX Runtime") and "max rel 0.0e+00" in normalized.verified
    artifact = load_artifact(str(foreign))
    assert artifact.inputs[0].dynamic_batch and artifact.source_path == foreign
    assert artifact.files[0] == ("model", foreign)  # inputs-are-sacred and provenance name the user's file


def test_a_regular_file_is_read_as_it_is(tiny_onnx):
    assert not needs_normalizing(onnx.load(str(tiny_onnx)))
    artifact = load_artifact(str(tiny_onnx))
    assert artifact.onnx_path == tiny_onnx and artifact.source_path is None


def test_a_normalization_that_changed_the_model_is_refused(tiny_onnx):
    original = onnx.load(str(tiny_onnx))
    changed = onnx.load(str(tiny_onnx))
    weight = changed.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    with pytest.raises(BadInputError, match="differs from the file"):
        verify_same(original, changed, "x.onnx")


def test_every_verb_runs_on_the_foreign_file_without_a_manual_step(cli, foreign, tiny_onnx, tmp_path):
    result = cli("inspect", foreign, "--no-layers")
    assert result.exit_code == 0, result.output
    ours = cli("inspect", tiny_onnx, "--no-layers")
    assert result.output.splitlines()[-1].split(": ", 1)[1] == ours.output.splitlines()[-1].split(": ", 1)[1]
    assert "opset 11 → 13" in result.stderr and "Constant-node weights" in result.stderr
    result = cli("check", "tiny-resnet", foreign)  # 'images' ↔ 'input', paired by position
    assert result.exit_code == 0, result.output
    result = cli("fuse", foreign, "-o", tmp_path / "fused.onnx")
    assert result.exit_code == 0, result.output
    result = cli("quantize", foreign, "-o", tmp_path / "int8.onnx", *FAST_Q)
    assert result.exit_code == 0, result.output
    assert onnx.load(str(tmp_path / "int8.onnx")).opset_import[0].version >= 13
    result = cli("quantize", foreign, "-o", tmp_path / "fp16.onnx", "--precision", "fp16")
    assert result.exit_code == 0, result.output


def test_export_converts_an_onnx_file_to_the_opset_asked(cli, foreign, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "opset17.onnx"
    result = cli("export", foreign, "-o", out, "--opset", "17")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith(f"CONVERTED {out}: opset 17, checked in ONNX Runtime")
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 17 and not any(n.op_type == "Constant" for n in model.graph.node)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    (a,) = ort.InferenceSession(str(foreign), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    (b,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    result = cli("export", foreign, "-o", tmp_path / "old.onnx", "--opset", "9")
    assert result.exit_code == 2 and "downgrade" in result.stderr
