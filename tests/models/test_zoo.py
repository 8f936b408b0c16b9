"""The model zoo: torchvision-exact parameter counts and names, forward shapes, determinism, lookup."""

from __future__ import annotations

import functools

import pytest
import torch

from deploy.models import UnknownModelError, create_model, get_model_entry, list_models

PARAM_COUNTS = {
    "alexnet": 61_100_840,
    "vgg11_bn": 132_868_840,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "shufflenet_v2_x1_0": 2_278_604,
}

TINY = ["tiny-convnet", "tiny-mobilenet", "tiny-resnet"]

# Our own small nets for scikit-learn's digits (deploy.jobs.digits trains them); train form, and digits-repvgg's
# deploy form with each RepVGG block fused into one biased 3x3 conv.
DIGITS_PARAM_COUNTS = {"digits-resnet": 77_754, "digits-repvgg": 83_946}
DIGITS_REPVGG_DEPLOY_PARAMS = 74_762


@functools.cache
def _built(name: str) -> torch.nn.Module:
    """One shared instance per name for the read-only tests (the big models take a second to build)."""
    return create_model(name)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_matches_torchvision(name: str) -> None:
    assert _num_params(_built(name)) == PARAM_COUNTS[name]


def test_mobilenet_v1_param_count() -> None:
    assert _num_params(_built("mobilenet_v1")) == 4_231_976


def test_every_known_model_is_registered() -> None:
    assert set(PARAM_COUNTS) | set(TINY) | set(DIGITS_PARAM_COUNTS) <= set(list_models())


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_small_and_described(name: str) -> None:
    entry = get_model_entry(name)
    assert entry.family == "tiny"
    assert entry.input_shape == (1, 3, 32, 32)
    assert entry.num_classes == 10
    assert entry.description
    assert _num_params(_built(name)) < 100_000


@pytest.mark.parametrize("name", sorted(DIGITS_PARAM_COUNTS))
def test_digits_models(name: str) -> None:
    entry = get_model_entry(name)
    assert (entry.family, entry.input_shape, entry.num_classes) == ("digits", (1, 1, 32, 32), 10)
    assert entry.description
    assert _num_params(_built(name)) == DIGITS_PARAM_COUNTS[name] < 100_000


def test_digits_repvgg_deploy_form_param_count() -> None:
    assert _num_params(create_model("digits-repvgg", deploy=True)) == DIGITS_REPVGG_DEPLOY_PARAMS


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name: str) -> None:
    entry = get_model_entry(name)
    model = _built(name)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(*entry.input_shape))
    assert out.shape == (1, entry.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TINY)
def test_forward_any_batch_and_num_classes(name: str) -> None:
    model = create_model(name, num_classes=7)
    with torch.no_grad():
        assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", *TINY])
def test_create_model_is_deterministic(name: str) -> None:
    a, b = create_model(name).state_dict(), create_model(name).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_list_models_glob() -> None:
    assert list_models("resnet*") == ["resnet18", "resnet34", "resnet50"]


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_model_entry("resnet81")
    assert "resnet18" in str(info.value)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("resnet18", ["layer1.0.conv1.weight", "fc.weight", "bn1.running_mean"]),
        ("mobilenet_v2", ["features.0.0.weight", "classifier.1.weight"]),
        ("mobilenet_v3_large", ["features.4.block.2.fc1.weight"]),
        ("shufflenet_v2_x1_0", ["stage2.0.branch1.0.weight", "conv5.0.weight", "fc.weight"]),
    ],
)
def test_torchvision_parameter_names(name: str, keys: list[str]) -> None:
    state = _built(name).state_dict()
    for key in keys:
        assert key in state, key
