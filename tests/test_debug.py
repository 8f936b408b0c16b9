"""`deploy debug`: planted bugs are found where they were planted, healthy exports align and pass, int8
rankings pay off when fed to --keep-float, and the reproducer reproduces."""

import json
import random

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from deploy.artifacts.spec import load_artifact
from deploy.jobs.debug import _scope, debug_artifacts

PERTURBED = "/layer2/layer2.1/conv2/Conv"


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    from deploy.jobs.export import export_onnx

    path = tmp_path_factory.mktemp("debug") / "r18.onnx"
    export_onnx(load_artifact("resnet18"), path, verify=False)
    return path


@pytest.fixture(scope="module")
def r18_bad(r18):
    """A copy with one Conv's first filter moved by 0.1 % of the weights' spread."""
    model = onnx.load(str(r18))
    conv = next(n for n in model.graph.node if n.name == PERTURBED)
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    values = numpy_helper.to_array(weight).copy()
    values[0] += 1e-3 * values.std()
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    path = r18.with_name("r18.bad.onnx")
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def r18_int8(cli, r18):
    out = r18.with_name("r18.int8.onnx")
    result = cli("quantize", r18, "-o", out, "--method", "mse", "--samples", "32", "--eval-samples", "32")
    assert result.exit_code == 0, result.output
    return out


def test_scopes_name_module_calls():
    modules = {"conv1", "layer1", "layer1.0", "layer1.0.relu", "layer2", "layer2.0", "layer2.0.downsample",
               "layer2.0.downsample.0", "conv_1"}
    assert _scope("/layer1/layer1.0/relu_1/Relu", modules) == ("layer1.0.relu", 1)
    assert _scope("/layer1/layer1.0/relu/Relu", modules) == ("layer1.0.relu", 0)
    assert _scope("/layer2/layer2.0/downsample/downsample.0/Conv", modules) == ("layer2.0.downsample.0", 0)
    assert _scope("/conv_1/Conv", modules) == ("conv_1", 0)  # a module whose own name ends in _1
    assert _scope("/Flatten", modules) is None and _scope("node_Conv_96", modules) is None


def test_a_perturbed_conv_is_the_first_divergence_and_the_worst_local_error(r18, r18_bad):
    report, _ = debug_artifacts(load_artifact(str(r18)), load_artifact(str(r18_bad)), samples=4)
    assert not report.passed
    assert report.first.node == PERTURBED
    assert report.ranked()[0].node == PERTURBED
    assert not report.first.local.passed  # bad by itself, not by inheritance
    downstream = [e for e in report.layers if e.position > report.first.position]
    assert downstream and all(e.local.max_rel < 1e-5 for e in downstream)  # they only inherit its error
    assert len(report.layers) == report.candidate_tensors  # ONNX ↔ a copy: every tensor aligned


def test_a_wrong_bn_epsilon_is_found_through_the_folded_conv(r18):
    reference = load_artifact("resnet18")
    reference.module.layer3[0].bn2.eps = 1e-2  # the export folded eps = 1e-5 into the Conv before it
    report, _ = debug_artifacts(reference, load_artifact(str(r18)), samples=4)
    assert report.first.reference == "layer3.0.bn2#0"
    assert report.first.node == "/layer3/layer3.0/conv2/Conv"
    assert report.ranked()[0].reference == "layer3.0.bn2#0"


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2", "tiny-resnet"])
def test_a_healthy_export_aligns_and_does_not_diverge(model, r18, tmp_path):
    from deploy.jobs.export import export_onnx

    artifact = load_artifact(model)
    if model == "resnet18":
        path = r18
    else:
        path = tmp_path / f"{model}.onnx"
        export_onnx(artifact, path, verify=False)
    report, _ = debug_artifacts(artifact, load_artifact(str(path)), samples=4)
    assert report.passed, report.summary()
    assert report.convs_aligned / report.convs_total >= 0.95
    assert report.final and all(d.max_rel < 1e-4 for d in report.final)


def test_int8_aligns_every_quantized_conv_and_names_the_lost_fusions(r18, r18_int8):
    report, _ = debug_artifacts(load_artifact(str(r18)), load_artifact(str(r18_int8)), samples=8, precision="int8")
    assert report.convs_aligned == report.convs_total == 21
    assert r18_int8.stat().st_size <= 0.3 * r18.stat().st_size  # no dead float weights left in the int8 file
    assert report.qdq_tensors > 0 and all(why.startswith("Q/DQ") or "added" in why for why in report.unaligned.values())
    assert report.perturbation["fused_ops_lost"]["QLinearConv"] == [20, 0]
    assert len(report.keep_float()) == 3 and all(e.impact_db is not None for e in report.ranked()[:3])


def test_keeping_the_top_local_error_layers_float_beats_keeping_random_ones(cli, r18, r18_int8, tmp_path):
    """Held-out photos: quantize's eval samples start after its 32 calibration samples."""
    report, _ = debug_artifacts(load_artifact(str(r18)), load_artifact(str(r18_int8)), samples=8, precision="int8")

    def sqnr(keep: list[str], tag: str) -> float:
        out = tmp_path / f"{tag}.onnx"
        result = cli("quantize", r18, "-o", out, "--method", "mse", "--samples", "32", "--eval-samples", "32",
                     "--keep-float", ",".join(keep), "--json", tmp_path / f"{tag}.json")
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / f"{tag}.json").read_text())["final"]["centred_sqnr_db"]

    convs = [n.name for n in onnx.load(str(r18)).graph.node if n.op_type in ("Conv", "Gemm")]
    ours = sqnr(report.keep_float(3), "top")
    rng = random.Random(0)
    randoms = [sqnr(rng.sample(convs, 3), f"random{i}") for i in range(2)]
    assert ours > max(randoms) + 0.3, (ours, randoms)


def test_the_reproducer_reproduces_the_divergence_alone(cli, r18, r18_bad, tmp_path):
    import onnxruntime as ort

    folder = tmp_path / "repro"
    report_path = tmp_path / "debug.json"
    result = cli("debug", r18, r18_bad, "--samples", "4", "--extract", folder, "--json", report_path,
                 "--plot", tmp_path / "debug.png")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith(f"FAILED {r18_bad} vs {r18}: first divergence at {PERTURBED}")
    sub = onnx.load(str(folder / "subgraph.onnx"))
    assert [n.op_type for n in sub.graph.node] == ["Conv"]
    inputs = dict(np.load(folder / "inputs.npz"))
    candidate = dict(np.load(folder / "candidate.npz"))
    reference = dict(np.load(folder / "reference.npz"))
    session = ort.InferenceSession(str(folder / "subgraph.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, inputs)
    (name,) = candidate
    assert np.abs(got - candidate[name]).max() <= 1e-5 * np.abs(candidate[name]).max()  # the recorded output
    assert np.abs(got - reference[name]).max() > 1e-4 * np.abs(reference[name]).max()  # and the divergence
    data = json.loads(report_path.read_text())
    assert data["first_divergence"]["node"] == PERTURBED and len(data["layers"]) == 49
    assert {"accumulated", "local", "boundary"} <= set(data["layers"][0])
    assert (tmp_path / "debug.png").read_bytes()[:4] == b"\x89PNG"


def test_check_localize_names_the_layer_when_the_check_fails(cli, r18, r18_bad, tmp_path):
    result = cli("check", r18, r18_bad, "--samples", "4", "--localize", "--json", tmp_path / "c.json")
    assert result.exit_code == 1
    assert f"first divergence: {PERTURBED}" in result.output
    assert result.output.splitlines()[-1].startswith("FAILED")  # the check's own verdict stays last
    assert json.loads((tmp_path / "c.json").read_text())["localize"]["first_divergence"]["node"] == PERTURBED


def test_bad_pairs_are_one_line_errors(cli, r18, tiny_onnx, tmp_path):
    result = cli("debug", r18, tiny_onnx)
    assert result.exit_code == 2 and "not the same model's inputs" in result.stderr
    result = cli("debug", "resnet18", r18, "--extract", tmp_path / "no" / "such")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    renamed = onnx.load(str(tiny_onnx))  # the same network with every tensor renamed: nothing to align
    mapping = {t: f"t{i}" for i, t in enumerate(t for n in renamed.graph.node for t in n.output)}
    for node in renamed.graph.node:
        node.input[:] = [mapping.get(t, t) for t in node.input]
        node.output[:] = [mapping.get(t, t) for t in node.output]
    for value in renamed.graph.output:
        value.name = mapping.get(value.name, value.name)
    path = tmp_path / "renamed.onnx"
    onnx.save(renamed, str(path))
    result = cli("debug", tiny_onnx, path)
    assert result.exit_code == 2 and "no tensor aligns" in result.stderr
    result = cli("debug", "tiny-resnet", path)  # torch ↔ ONNX aligns by node scopes, which are still there
    assert result.exit_code == 0, result.output
    for i, node in enumerate(renamed.graph.node):
        node.name = f"node_{i}"  # what other exporters write
    onnx.save(renamed, str(path))
    result = cli("debug", "tiny-resnet", path)
    assert result.exit_code == 2 and "no PyTorch module scopes" in result.stderr


def test_an_in_place_change_is_not_taken_for_a_folded_module(tmp_path):
    """Dropout reads the BN output after `out += x`: it must not inherit the Conv the BN was folded into."""
    from pathlib import Path

    from deploy.jobs.export import export_onnx

    spec = f"{Path(__file__).parent / 'fixtures' / 'debug_inplace.py'}:block"
    artifact = load_artifact(spec, shape=(1, 3, 16, 16))
    export_onnx(artifact, tmp_path / "block.onnx", verify=False)
    report, _ = debug_artifacts(artifact, load_artifact(str(tmp_path / "block.onnx")), samples=2, data=None)
    assert report.passed, report.summary()
    assert {e.reference for e in report.layers} == {"stem#0", "bn#0", "head#0"}


def test_a_layer_bad_by_itself_ranks_first_even_without_weights(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "LeakyRelu"
    relu.attribute.append(onnx.helper.make_attribute("alpha", 0.5))
    onnx.save(model, str(tmp_path / "leaky.onnx"))
    report, _ = debug_artifacts(load_artifact("tiny-resnet"), load_artifact(str(tmp_path / "leaky.onnx")),
                                samples=2, data=None)
    assert report.first.node == relu.name == report.ranked()[0].node


def test_a_deep_chain_and_a_fixed_batch_candidate(tmp_path):
    from onnx import TensorProto, helper

    def chain(prefix: str, batch, path):
        nodes, previous = [], "input"
        for i in range(1500):  # deeper than Python's recursion limit
            out = "output" if i == 1499 else f"{prefix}{i}"
            nodes.append(helper.make_node("Sigmoid" if i % 2 else "Neg", [previous], [out], name=f"n{i}"))
            previous = out
        io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 4]) for name in ("input", "output")]
        graph = helper.make_graph(nodes, "chain", io[:1], io[1:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(path))

    chain("t", "N", tmp_path / "a.onnx")
    chain("u", 2, tmp_path / "b.onnx")  # other tensor names, a fixed batch of 2
    report, _ = debug_artifacts(load_artifact(str(tmp_path / "a.onnx")), load_artifact(str(tmp_path / "b.onnx")),
                                samples=4, data=None)
    assert report.passed and len(report.layers) == 1 and report.layers[0].boundary == ["input"]
