"""Our own trained digits nets: splits, deterministic cached training, accuracy in torch, deploy form and ONNX.

Both nets train once per session at their default epochs (about 5 s + 8 s on a 2-core CPU) into a
temporary cache, so CI always exercises the training and never trusts a stale checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploy.jobs import digits
from deploy.models import create_model, get_model_entry

MIN_ACCURACY = 95.0
TRAIN_PARAMS = {"digits-resnet": 77_754, "digits-repvgg": 83_946}
REPVGG_DEPLOY_PARAMS = 74_762  # each block's 1×1 and identity branches and its BNs fold into one biased 3×3


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def splits() -> digits.DigitsSplits:
    return digits.digits_splits()


# ------------------------------------------------------------------------------------------- data


def test_splits_are_disjoint_stratified_and_deterministic(splits) -> None:
    idx = splits.indices
    assert {k: len(v) for k, v in idx.items()} == {"train": 1197, "calib": 200, "test": 400}
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(1797))  # disjoint, covering
    for name in ("train", "calib", "test"):
        x, y = getattr(splits, name)
        assert x.shape == (len(idx[name]), 1, 32, 32) and x.dtype == np.float32
        assert y.shape == (len(idx[name]),) and y.dtype == np.int64
        assert x.min() >= digits.BACKGROUND - 1e-6 and x.max() <= (1 - digits.MEAN) / digits.STD + 1e-6
    assert np.bincount(splits.test[1], minlength=10).min() >= 39  # stratified: 40 per class, give or take one
    assert np.bincount(splits.calib[1], minlength=10).min() >= 19
    again = digits.digits_splits()
    for name in ("train", "calib", "test"):
        assert np.array_equal(again.indices[name], idx[name])
        assert np.array_equal(getattr(again, name)[0], getattr(splits, name)[0])
    other = digits.digits_splits(seed=1)
    assert not np.array_equal(other.indices["test"], idx["test"])


def test_write_digits_npz_round_trips(splits, tmp_path) -> None:
    path = digits.write_digits_npz(tmp_path / "calib.npz", splits.calib)
    with np.load(path) as data:
        assert set(data.files) == {"input", "y"}
        assert np.array_equal(data["input"], splits.calib[0]) and np.array_equal(data["y"], splits.calib[1])
    assert [p.name for p in tmp_path.iterdir()] == ["calib.npz"]  # no temporary file left behind


def test_evaluate_counts_correct_argmax() -> None:
    """Each fake input carries the class its "model" predicts in its first pixel; batches of 3 over 7 samples."""
    y = np.array([0, 1, 2, 3, 4, 5, 6])
    x = np.zeros((7, 1, 32, 32), dtype=np.float32)
    x[:, 0, 0, 0] = [0, 1, 2, 3, 4, 9, 9]  # two wrong
    sizes = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return np.eye(10, dtype=np.float32)[batch[:, 0, 0, 0].astype(int)]

    assert digits.evaluate(run, x, y, batch=3) == pytest.approx(500 / 7)
    assert sizes == [3, 3, 1]


# ------------------------------------------------------------------------------------------- training


def test_models_are_small_digits_models() -> None:
    for name, count in TRAIN_PARAMS.items():
        entry = get_model_entry(name)
        assert (entry.family, entry.input_shape, entry.num_classes) == ("digits", (1, 1, 32, 32), 10)
        assert _num_params(create_model(name)) == count < 100_000


@pytest.mark.parametrize("name", digits.MODELS)
def test_trained_accuracy(trained, name: str) -> None:
    run = trained[name]
    assert not run.from_cache
    assert not run.model.training
    assert run.test_accuracy >= MIN_ACCURACY
    assert run.train_seconds > 0
    assert run.checkpoint.is_file() and run.checkpoint.parent.name == "digits"
    assert run.checkpoint.name.startswith(f"{name}-seed0-")


@pytest.mark.parametrize("name", digits.MODELS)
def test_second_call_loads_the_cache(trained, cache_dir, name: str) -> None:
    first = trained[name]
    start = time.perf_counter()
    again = digits.train_digits(name, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    assert again.from_cache and again.checkpoint == first.checkpoint
    assert seconds < max(2.0, first.train_seconds / 2)
    assert again.train_seconds == pytest.approx(first.train_seconds)  # read from the record beside it
    assert again.test_accuracy == first.test_accuracy
    for key, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key


def test_checkpoint_is_a_plain_state_dict_for_weights(trained, splits) -> None:
    """`deploy … --weights <checkpoint>` takes it: tensors only, weights-only unpickling, strict keys."""
    from deploy.artifacts.spec import load_artifact

    run = trained["digits-resnet"]
    state = torch.load(run.checkpoint, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    artifact = load_artifact("digits-resnet", weights=str(run.checkpoint))
    assert digits.evaluate(digits.torch_logits(artifact.module), *splits.test) == run.test_accuracy


def test_cache_key_follows_the_hyperparameters(tmp_path) -> None:
    paths = {digits.checkpoint_path("digits-resnet", digits.TrainConfig(epochs=e), seed, tmp_path)
             for e in (1, 2) for seed in (0, 1)}
    assert len(paths) == 4
    assert digits.checkpoint_path("digits-resnet", digits.TrainConfig(epochs=1), 0, tmp_path) in paths


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DEPLOY_CACHE", str(tmp_path))
    assert digits.default_cache_dir() == tmp_path
    monkeypatch.delenv("DEPLOY_CACHE")
    assert digits.default_cache_dir() == Path.home() / ".cache" / "deploy"


def test_corrupt_checkpoint_is_retrained(tmp_path) -> None:
    path = digits.checkpoint_path("digits-resnet", digits.TrainConfig(epochs=1), 0, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    run = digits.train_digits("digits-resnet", epochs=1, cache_dir=tmp_path)
    assert not run.from_cache
    assert digits.train_digits("digits-resnet", epochs=1, cache_dir=tmp_path).from_cache


def test_training_is_deterministic(tmp_path) -> None:
    """Two cold runs (separate caches) give bit-identical weights; the caller's torch settings survive."""
    threads = torch.get_num_threads()
    a = digits.train_digits("digits-repvgg", epochs=1, cache_dir=tmp_path / "a").model.state_dict()
    b = digits.train_digits("digits-repvgg", epochs=1, cache_dir=tmp_path / "b").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_rejects_other_models() -> None:
    with pytest.raises(ValueError, match="not a digits model"):
        digits.train_digits("tiny-resnet")


# ------------------------------------------------------------------------------------------- deploy form


def test_reparameterized_repvgg_matches(trained, splits) -> None:
    run = trained["digits-repvgg"]
    fused = run.deploy_form()
    x = torch.from_numpy(splits.test[0])
    with torch.inference_mode():
        expected, got = run.model(x), fused(x)
    assert float((expected - got).abs().max() / expected.abs().max()) <= 1e-4
    assert torch.equal(expected.argmax(1), got.argmax(1))
    assert digits.evaluate(digits.torch_logits(fused), *splits.test) == run.test_accuracy
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # exactly the deploy=True architecture, with fewer parameters
    deployed = create_model("digits-repvgg", deploy=True)
    deployed.load_state_dict(fused.state_dict())
    assert _num_params(fused) == _num_params(deployed) == REPVGG_DEPLOY_PARAMS
    assert _num_params(run.model) == TRAIN_PARAMS["digits-repvgg"]
    assert REPVGG_DEPLOY_PARAMS < TRAIN_PARAMS["digits-repvgg"]


def test_reparameterizing_the_resnet_changes_nothing(trained) -> None:
    model = trained["digits-resnet"].model
    assert type(digits.deploy_form(model)) is type(model)
    assert _num_params(digits.deploy_form(model)) == _num_params(model)


# ------------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("form", ["digits-resnet", "digits-repvgg", "digits-repvgg (deploy form)"])
def test_onnx_runtime_accuracy_equals_torch(trained, splits, tmp_path, form: str) -> None:
    from deploy.artifacts.spec import load_artifact
    from deploy.jobs.export import export_onnx

    name = form.split()[0]
    run = trained[name]
    artifact = load_artifact(name, weights=str(run.checkpoint))
    if "deploy" in form:
        artifact.module = run.deploy_form()
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(artifact, path, verify_samples=4)
    assert report.passed
    x, y = splits.test
    torch_logits = digits.torch_logits(artifact.module)(x)
    ort_logits = digits.onnx_logits(path)(x)
    assert np.array_equal(torch_logits.argmax(1), ort_logits.argmax(1))
    assert digits.evaluate(digits.onnx_logits(path), x, y) == digits.evaluate(digits.torch_logits(artifact.module),
                                                                               x, y) == run.test_accuracy
