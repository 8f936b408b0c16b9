"""The TensorRT API names deploy uses, checked against the real bindings of TensorRT 10.16 and 11.4.

The wheels are fetched by pip from the registry (scripts/trt_bindings.py, cached); without a registry the
tests skip with pip's reason. The checker itself is shown to fail on a misspelled or removed name."""

import importlib.util
import sys
from pathlib import Path

import pytest

from deploy.backends.trt_build import REMOVED_IN_11

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("trt_bindings", ROOT / "scripts" / "trt_bindings.py")
bindings = importlib.util.module_from_spec(_spec)
sys.modules["trt_bindings"] = bindings  # dataclasses look their module up while the file executes
_spec.loader.exec_module(bindings)


@pytest.fixture(scope="module")
def wheels():
    try:
        return {major: bindings.ApiNames.load(bindings.fetch(version), version)
                for major, version in bindings.WHEELS.items()}
    except bindings.FetchError as err:
        pytest.skip(str(err))


def test_every_name_deploy_uses_exists_on_the_paths_that_run_it(wheels):
    uses = bindings.deploy_uses()
    names = {u.name for u in uses}
    # the calls the issue names, on both paths, are really read from the source
    assert {"execute_async_v3", "set_tensor_address", "set_input_shape", "STRONGLY_TYPED", "create_timing_cache",
            "build_serialized_network", "parse_from_file", "set_shape", "deserialize_cuda_engine"} <= names
    assert len(names) >= 45
    assert bindings.problems(uses, wheels[10], wheels[11], REMOVED_IN_11) == []


def test_the_legacy_path_alone_uses_what_11_removed(wheels):
    legacy = {u.name for u in bindings.deploy_uses() if u.legacy}
    shared = {u.name for u in bindings.deploy_uses() if not u.legacy}
    assert {"IInt8EntropyCalibrator2", "int8_calibrator", "FP16", "read_calibration_cache"} <= legacy
    assert not shared & set(REMOVED_IN_11)
    for name in REMOVED_IN_11:  # the list is true of the real wheels
        assert wheels[10].has(name), name
        assert not wheels[11].has(name), name
    assert not wheels[10].has("EXPLICIT_BATCHES") and wheels[10].has("EXPLICIT_BATCH")


def test_the_check_fails_on_a_misspelled_name(wheels):
    source = (
        "def _trt_build(trt, plan):\n"
        "    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "    config = builder.create_builder_config()\n"
        "    config.set_memory_pool_limt(trt.MemoryPoolType.WORKSPACE, 1 << 30)\n"
        "    context = None\n"
        "    context.set_tensor_adress('x', 0)\n")
    found = bindings.problems(bindings.uses_in_source(source), wheels[10], wheels[11], REMOVED_IN_11)
    assert any("'set_memory_pool_limt'" in line and "10.16" in line for line in found)
    assert any("'set_memory_pool_limt'" in line and "11.4" in line for line in found)
    assert any("'set_tensor_adress'" in line for line in found)
    assert len(found) == 4  # two names, each missing from both wheels; the correct names pass


def test_the_check_fails_on_a_removed_name_outside_the_legacy_path(wheels):
    shared = "def _trt_precision(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
    legacy = "def _legacy_precision(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
    found = bindings.problems(bindings.uses_in_source(shared), wheels[10], wheels[11], REMOVED_IN_11)
    assert any("'FP16'" in line and "removed in TensorRT 11" in line for line in found)
    assert any("'FP16'" in line and "not in 11.4" in line for line in found)
    assert bindings.problems(bindings.uses_in_source(legacy), wheels[10], wheels[11], REMOVED_IN_11) == []


def test_calibrator_overrides_are_checked_too(wheels):
    source = ("def _legacy_calibrator(trt):\n"
              "    class C(trt.IInt8EntropyCalibrator2):\n"
              "        def read_calibraton_cache(self):\n"
              "            return b''\n")
    found = bindings.problems(bindings.uses_in_source(source), wheels[10], wheels[11], REMOVED_IN_11)
    assert len(found) == 1 and "'read_calibraton_cache'" in found[0]


def test_names_on_plain_python_objects_are_not_taken_for_tensorrt():
    source = ("def f(plan, shapes, self):\n"
              "    plan.profile.items()\n"
              "    self.profile.items()\n"
              "    shapes.min\n"
              "    self._engine.get_tensor_name(0)\n")
    assert [u.name for u in bindings.uses_in_source(source)] == ["get_tensor_name"]


def test_a_wheel_pip_cannot_fetch_is_a_reason_to_skip(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_CACHE", str(tmp_path))
    with pytest.raises(bindings.FetchError, match="tensorrt-cu12-bindings==0.0.1 failed"):
        bindings.fetch("0.0.1")
