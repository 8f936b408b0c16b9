"""FLOPs and parameters by the formulas, on hand-computable layers and on the zoo."""

import pytest
import torch

from deploy.jobs.inspection import conv_flops, count_model, inspect_module, inspect_onnx
from deploy.models import get_model_entry


def test_conv_formula_by_hand():
    # 3→16, 3×3, output 32×32: 2 · 3 · 9 · 16 · 1024
    assert conv_flops(3, 16, 1, (3, 3), (32, 32)) == 2 * 3 * 9 * 16 * 1024
    # depthwise 32 channels: Cin/g = 1
    assert conv_flops(32, 32, 32, (3, 3), (10, 10)) == 2 * 9 * 32 * 100


def test_module_walk_counts_conv_and_linear():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, groups=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 10))
    report = inspect_module(net, (1, 3, 16, 16))
    assert report.flops == 2 * 3 * 9 * 8 * 256 + 2 * 2048 * 10
    assert report.params == 3 * 9 * 8 + 8 + 2048 * 10 + 10
    assert report.layers[0].output_shape == [1, 8, 16, 16]


@pytest.mark.parametrize("name,gmacs", [("resnet18", 1.814), ("resnet50", 4.089), ("mobilenet_v2", 0.300),
                                        ("vgg16_bn", 15.47), ("alexnet", 0.714)])
def test_zoo_flops_match_torchvision_gmacs(name, gmacs):
    entry = get_model_entry(name)
    _, flops = count_model(entry.factory, entry.input_shape)
    assert flops / 2e9 == pytest.approx(gmacs, rel=0.01)


def test_onnx_inspection_agrees_with_torch(tiny_onnx):
    from deploy.artifacts.spec import load_artifact

    artifact = load_artifact("tiny-resnet")
    torch_report = inspect_module(artifact.module, artifact.example_shape)
    onnx_report = inspect_onnx(tiny_onnx)
    assert onnx_report.flops == torch_report.flops  # BN folded away costs no counted FLOPs
    bn_params = sum(p.numel() for m in artifact.module.modules() if isinstance(m, torch.nn.BatchNorm2d)
                    for p in m.parameters())
    convs_without_bias = sum(1 for m in artifact.module.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is None)
    assert convs_without_bias > 0
    # folding BN gives each conv a bias of Cout: params = torch − BN affine + conv biases
    conv_bias = sum(m.out_channels for m in artifact.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert onnx_report.params == torch_report.params - bn_params + conv_bias
    assert onnx_report.ops.get("Conv") and "BatchNormalization" not in onnx_report.ops
