"""What `deploy build` hands TensorRT, decided without it: profiles, both API paths, the calibration cache,
timing caches, the engine record; and the CLI on a machine without TensorRT (this one)."""

import json
import struct

import numpy as np
import onnx
import pytest

from deploy.artifacts.artifact import TensorSpec
from deploy.artifacts.engine_record import EngineRecord, ShapeRange, compatibility_problems, read_sidecar, write_sidecar
from deploy.backends.trt_build import (
    BuildOptions,
    calibration_cache_text,
    graph_precision,
    parse_profile,
    plan_build,
    plan_timing_cache,
    prepare_source,
    profile_for,
    tensorrt_version_number,
    timing_cache_record,
)
from deploy.calib.table import RangesTable, read_trt_cache
from deploy.errors import BadInputError
from deploy.gpu import trt_status

HERE = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "560.35", "cuda": "12.6"}
NO_TRT = not trt_status().ok


@pytest.fixture(scope="module")
def qdq(cli, tiny_onnx, tmp_path_factory):
    """tiny-resnet quantized for TensorRT by `deploy quantize`, with its ranges table beside it."""
    out = tmp_path_factory.mktemp("trt") / "tiny.int8.onnx"
    result = cli("quantize", tiny_onnx, "-o", out, "--target", "trt", "--samples", "24", "--eval-samples", "16")
    assert result.exit_code == 0, result.output
    return out, out.with_name("tiny.int8.ranges.json")


@pytest.fixture(scope="module")
def fp16_file(tiny_onnx, tmp_path_factory):
    from deploy.passes.fp16 import convert_fp16

    out = tmp_path_factory.mktemp("fp16") / "tiny.fp16.onnx"
    onnx.save(convert_fp16(onnx.load(str(tiny_onnx))).model, str(out))
    return out


# --- profiles --------------------------------------------------------------------------------------------

def test_a_dynamic_batch_gets_the_batch_range_and_fixed_dims_stay():
    inputs = [TensorSpec("images", ("batch", 3, 224, 224)), TensorSpec("scale", (1, 2))]
    shapes, notes = profile_for(inputs, (1, 4, 16))
    assert shapes["images"] == ShapeRange((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))
    assert shapes["scale"] == ShapeRange((1, 2), (1, 2), (1, 2))
    assert any("fixed batch of 1" in n for n in notes)


def test_other_dynamic_dims_need_a_profile_and_it_is_checked():
    inputs = [TensorSpec("images", ("N", 3, "H", "W"))]
    with pytest.raises(BadInputError, match=r"dim 2 is dynamic \('H'\).*--profile images=MIN:OPT:MAX"):
        profile_for(inputs, (1, 1, 1))
    given = parse_profile(["images=1x3x320x320:1x3x640x640:2x3x1280x1280"])
    shapes, _ = profile_for(inputs, (1, 1, 1), given)
    assert shapes["images"].max == (2, 3, 1280, 1280) and shapes["images"].contains((1, 3, 640, 480))
    with pytest.raises(BadInputError, match="dim 1 must be 3"):
        profile_for(inputs, (1, 1, 1), parse_profile(["images=1x4x32x32"]))
    with pytest.raises(BadInputError, match="--profile names 'image'"):
        profile_for(inputs, (1, 1, 1), parse_profile(["image=1x3x32x32"]))
    with pytest.raises(BadInputError, match="1 ≤ min ≤ opt ≤ max"):
        profile_for([TensorSpec("x", ("N", 3))], (4, 2, 8))


@pytest.mark.parametrize("text, message", [
    ("images", "NAME=MIN:OPT:MAX"), ("images=1x3:2x3", "one shape or three"), ("images=2x3:1x3:4x3", "MIN ≤ OPT"),
    ("images=1x3:1x3x4:1x3", "different ranks"), ("images=ax3", "not a shape"), ("images=0x3", "≥ 1")])
def test_bad_profiles_say_what_to_write(text, message):
    with pytest.raises(BadInputError, match=message):
        parse_profile([text])


# --- the two API paths --------------------------------------------------------------------------------------

def test_graph_precision_reads_what_the_file_carries(tiny_onnx, fp16_file, qdq):
    assert graph_precision(onnx.load(str(tiny_onnx))).label == "fp32"
    assert graph_precision(onnx.load(str(fp16_file))).label == "fp16"
    assert graph_precision(onnx.load(str(qdq[0]))).quantize_nodes >= 6


@pytest.mark.parametrize("api", [10, 11])
def test_a_file_that_carries_its_precision_is_built_strongly_typed_on_both(api, qdq, fp16_file):
    plan = plan_build(qdq[0], BuildOptions(), api)
    assert (plan.precision, plan.strongly_typed, plan.builder_flags, plan.convert) == ("int8", True, [], None)
    plan = plan_build(fp16_file, BuildOptions(), api)
    assert (plan.precision, plan.strongly_typed, plan.builder_flags, plan.convert) == ("fp16", True, [], None)


def test_fp32_stays_fp32_with_tf32_off_unless_asked(tiny_onnx):
    plan = plan_build(tiny_onnx, BuildOptions(), 11)
    assert (plan.precision, plan.tf32, plan.builder_flags, plan.convert) == ("fp32", False, [], None)
    assert plan_build(tiny_onnx, BuildOptions(tf32=True), 10).tf32 is True
    assert plan_build(tiny_onnx, BuildOptions(), 10).strongly_typed is False  # weakly typed fp32 on 10


def test_one_precision_flag_two_paths(tiny_onnx, qdq):
    _, ranges = qdq
    fp16_10 = plan_build(tiny_onnx, BuildOptions(precision="fp16"), 10)
    fp16_11 = plan_build(tiny_onnx, BuildOptions(precision="fp16"), 11)
    assert (fp16_10.builder_flags, fp16_10.strongly_typed, fp16_10.convert) == (["FP16"], False, None)
    assert (fp16_11.builder_flags, fp16_11.strongly_typed, fp16_11.convert) == ([], True, "fp16")
    table = RangesTable.load(ranges)
    int8_10 = plan_build(tiny_onnx, BuildOptions(precision="int8", ranges=ranges), 10)
    int8_11 = plan_build(tiny_onnx, BuildOptions(precision="int8", ranges=ranges), 11)
    assert int8_10.builder_flags == ["FP16", "INT8"] and int8_10.calibration_tensors == len(table.ranges)
    assert (int8_11.builder_flags, int8_11.convert, int8_11.calibration_tensors) == ([], "int8-qdq", 0)


def test_precisions_that_cannot_be_honoured_are_refused(tiny_onnx, qdq, fp16_file):
    with pytest.raises(BadInputError, match="needs int8 scales: give --ranges"):
        plan_build(tiny_onnx, BuildOptions(precision="int8"), 10)
    with pytest.raises(BadInputError, match="carries int8 Q/DQ and --precision fp32"):
        plan_build(qdq[0], BuildOptions(precision="fp32"), 11)
    with pytest.raises(BadInputError, match="cannot remove it"):
        plan_build(qdq[0], BuildOptions(precision="fp16"), 10)
    with pytest.raises(BadInputError, match="an fp16 file has no int8 scales"):
        plan_build(fp16_file, BuildOptions(precision="int8", ranges=qdq[1]), 11)
    with pytest.raises(BadInputError, match="choose from auto, fp32, fp16, int8"):
        plan_build(tiny_onnx, BuildOptions(precision="bf16"), 11)
    with pytest.raises(BadInputError, match="TensorRT 10 or 11"):
        plan_build(tiny_onnx, BuildOptions(), 9)


def test_a_ranges_table_of_another_model_is_refused(tiny_onnx, tmp_path):
    other = tmp_path / "other.ranges.json"
    RangesTable({"not_here": (-1.0, 1.0)}, "minmax", "trt", "0" * 16, 4, "test").save(other)
    with pytest.raises(BadInputError, match="none of its 1 tensors is in"):
        plan_build(tiny_onnx, BuildOptions(precision="int8", ranges=other), 10)


def test_what_tensorrt_11_parses_is_a_valid_model_close_to_the_original(tiny_onnx, qdq, tmp_path):
    """The converted files (fp16 pass; Q/DQ from the table) run in ONNX Runtime and stay near fp32."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)

    def run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0].ravel()

    reference = run(tiny_onnx)
    for precision, floor in (("fp16", 0.9999), ("int8", 0.995)):
        options = BuildOptions(precision=precision, ranges=qdq[1])
        plan = plan_build(tiny_onnx, options, 11)
        source = prepare_source(plan, options, tmp_path)
        model = onnx.load(str(source))
        counts = [n.op_type for n in model.graph.node]
        if precision == "int8":
            assert counts.count("QuantizeLinear") > 0
            assert counts.count("QuantizeLinear") == [n.op_type for n in onnx.load(str(qdq[0])).graph.node].count(
                "QuantizeLinear")  # the same placement `deploy quantize --target trt` wrote
        else:
            assert "Cast" in counts and graph_precision(model).float16
        got = run(source)
        cosine = float(got @ reference / (np.linalg.norm(got) * np.linalg.norm(reference)))
        assert cosine > floor, (precision, cosine)


# --- calibration cache -----------------------------------------------------------------------------------

def test_calibration_cache_names_the_version_and_holds_symmetric_scales(tmp_path):
    assert tensorrt_version_number("8.6.1") == 8601  # the header seen in the wild: TRT-8601-EntropyCalibration2
    assert tensorrt_version_number("10.16.1.11") == 101601
    ranges = {"input": (-2.5, 1.0), "conv1_out": (0.0, 6.35)}
    text = calibration_cache_text(ranges, "10.16.1.11")
    assert text.splitlines()[0] == "TRT-101601-EntropyCalibration2"
    path = tmp_path / "c.cache"
    path.write_text(text)
    scales = read_trt_cache(path)
    assert scales["input"] == np.float32(2.5 / 127) and scales["conv1_out"] == np.float32(6.35 / 127)
    assert text.splitlines()[1] == f"input: {struct.pack('>f', np.float32(2.5 / 127)).hex()}"


# --- timing cache --------------------------------------------------------------------------------------------

def test_timing_cache_created_reused_or_rebuilt(tmp_path):
    cache = tmp_path / "trt.cache"
    assert plan_timing_cache(None, HERE, "10.16.1").action == "none"
    assert plan_timing_cache(cache, HERE, "10.16.1").action == "create"
    cache.write_bytes(b"\x01\x02timing")
    assert plan_timing_cache(cache, HERE, "10.16.1").reason.startswith("no record")  # trtexec's: TensorRT checks
    record = tmp_path / "trt.cache.json"
    record.write_text(json.dumps(timing_cache_record(cache.read_bytes(), "10.16.1", HERE)))
    assert plan_timing_cache(cache, HERE, "10.16.1").action == "reuse"
    rebuilt = plan_timing_cache(cache, HERE, "11.4.0")
    assert rebuilt.action == "rebuild" and "TensorRT 10.16.1 here 11.4.0" in rebuilt.reason
    other_gpu = plan_timing_cache(cache, {**HERE, "gpu": "NVIDIA A10", "compute_capability": "8.6"}, "10.16.1")
    assert other_gpu.action == "rebuild" and "compute capability 9.0 here 8.6" in other_gpu.reason
    cache.write_bytes(b"edited")
    assert "changed since" in plan_timing_cache(cache, HERE, "11.4.0").reason
    with pytest.raises(BadInputError, match="does not exist"):
        plan_timing_cache(tmp_path / "nope" / "t.cache", HERE, "10.16.1")
    with pytest.raises(BadInputError, match="a folder"):
        plan_timing_cache(tmp_path, HERE, "10.16.1")


# --- the engine record ------------------------------------------------------------------------------------------

def _record(tiny_onnx, engine_bytes: bytes) -> EngineRecord:
    import hashlib

    plan = plan_build(tiny_onnx, BuildOptions(batch=(1, 4, 8)), 11, HERE, "11.4.0.106")
    return EngineRecord(tensorrt="11.4.0.106", api=11, gpu=HERE["gpu"], compute_capability="9.0", driver="560.35",
                        cuda="12.6", onnx=str(tiny_onnx), onnx_sha256=plan.onnx_sha256,
                        engine_sha256=hashlib.sha256(engine_bytes).hexdigest(), timing_cache_sha256=None,
                        build_seconds=1.5, plan=plan.to_dict(), inputs=plan.inputs, outputs=plan.outputs)


def test_the_record_round_trips_and_names_every_mismatch(tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really an engine")
    record = _record(tiny_onnx, engine.read_bytes())
    assert write_sidecar(record, engine) == tmp_path / "tiny.engine.json"
    again = read_sidecar(engine)
    assert again == record and again.profile()["input"].opt[0] == 4
    assert compatibility_problems(again, "11.4.0.106", HERE, engine.read_bytes()) == []
    problems = compatibility_problems(again, "10.16.1.11", {"gpu": "NVIDIA A10", "compute_capability": "8.6"},
                                      b"other bytes")
    assert len(problems) == 3
    assert "changed since" in problems[0] and "TensorRT 11.4.0.106, this machine has 10.16.1.11" in problems[1]
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0), this GPU is NVIDIA A10 (8.6)" in problems[2]


def test_a_missing_or_broken_record_is_one_line(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"x")
    with pytest.raises(BadInputError, match="no x.engine.json beside it"):
        read_sidecar(engine)
    (tmp_path / "x.engine.json").write_text('{"format": "deploy-engine", "version": 1}')
    with pytest.raises(BadInputError, match="incomplete record"):
        read_sidecar(engine)
    (tmp_path / "x.engine.json").write_text("{")
    with pytest.raises(BadInputError, match="x.engine.json"):
        read_sidecar(engine)


# --- the CLI on this machine -------------------------------------------------------------------------------------

@pytest.mark.skipif(not NO_TRT, reason="this machine has TensorRT")
def test_build_without_tensorrt_is_exit_3_naming_what_is_missing(cli, tiny_onnx, tmp_path):
    result = cli("build", tiny_onnx, "-o", tmp_path / "t.engine")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT unavailable" in lines[0] and "tensorrt" in lines[0]
    assert "pip install '.[trt]'" in lines[0]
    assert not list(tmp_path.iterdir())


def test_dry_run_plans_for_either_api_without_tensorrt(cli, tiny_onnx, qdq, tmp_path):
    report = tmp_path / "plan.json"
    result = cli("build", tiny_onnx, "--dry-run", "--api", "10", "--precision", "int8", "--ranges", qdq[1],
                 "--max-batch", "16", "--timing-cache", tmp_path / "t.cache", "--json", report)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"PLANNED {tiny_onnx} for TensorRT 10: int8, flags FP16,INT8"
    plan = json.loads(report.read_text())["plan"]
    assert plan["profile"]["input"]["max"][0] == 16 and plan["timing_cache"]["action"] == "create"
    assert plan["calibration_tensors"] > 0
    assert not (tmp_path / "t.cache").exists()  # a dry run writes nothing but its report
    result = cli("build", qdq[0], "--dry-run", "--api", "11")
    assert result.exit_code == 0 and "int8, strongly typed" in result.output.splitlines()[-1]


def test_engine_artifacts_need_the_trt_backend(cli, tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really an engine")
    write_sidecar(_record(tiny_onnx, engine.read_bytes()), engine)
    from deploy.artifacts.spec import load_artifact

    artifact = load_artifact(str(engine))
    assert artifact.kind == "engine" and artifact.inputs[0].name == "input" and artifact.inputs[0].dynamic_batch
    result = cli("bench", engine, "--backend", "ort-cpu")
    assert result.exit_code == 2 and "engines need trt" in result.stderr
    if NO_TRT:
        result = cli("check", tiny_onnx, engine)
        assert result.exit_code == 3 and "trt" in result.stderr


def test_inspect_shows_an_engine_record_and_transforming_verbs_point_to_its_onnx(cli, tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really an engine")
    write_sidecar(_record(tiny_onnx, engine.read_bytes()), engine)
    result = cli("inspect", engine)
    assert result.exit_code == 0, result.output
    assert "TensorRT: 11.4.0.106 (strongly typed, fp32" in result.output
    assert "profile input: 1x3x32x32 … 4x3x32x32 … 8x3x32x32" in result.output
    for verb in (["fuse", engine, "-o", tmp_path / "f.onnx"], ["quantize", engine, "-o", tmp_path / "q.onnx"]):
        result = cli(*verb)
        assert result.exit_code == 2 and f"works on {tiny_onnx}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.engine", "tiny.engine.json"]


def test_the_trt_runner_builds_onnx_files_with_the_shapes_the_user_gave(tiny_onnx):
    from deploy.artifacts.artifact import Artifact
    from deploy.backends.trt_runner import TrtRunner

    artifact = Artifact("net.onnx", "onnx", [TensorSpec("images", ("batch", 3, 64, 48)), TensorSpec("meta", (1, 4)),
                                            TensorSpec("free", ("batch", 3, "h", "w"))], onnx_path=tiny_onnx)
    shapes = TrtRunner(artifact)._profile_from_specs(16)
    assert shapes["images"] == ShapeRange((1, 3, 64, 48), (16, 3, 64, 48), (16, 3, 64, 48))
    assert shapes["meta"] == ShapeRange((1, 4), (1, 4), (1, 4)) and "free" not in shapes
    assert TrtRunner(artifact)._profile_from_specs(2)["images"].max[0] == 8  # at least batch 8 in one engine


def test_build_never_writes_onto_its_inputs(cli, tiny_onnx, tmp_path):
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, model)
    before = model.read_bytes()
    for args in (("--dry-run", "--json", model), ("--dry-run", "--timing-cache", model)):
        result = cli("build", model, *args)
        assert result.exit_code == 2 and "never overwrites its inputs" in result.stderr
    assert model.read_bytes() == before
