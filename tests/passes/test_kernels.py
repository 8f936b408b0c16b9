"""The fusion maths against direct float64 evaluation: every identity exact to rounding."""

import pytest
import torch
import torch.nn.functional as F

from deploy.passes import kernels
from deploy.passes.kernels import BNParams


def random_bn(c: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(c).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn.eval()


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


X = lambda c=6: torch.randn(2, c, 9, 9, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_fold_bn_after_conv(groups):
    conv, bn, x = torch.nn.Conv2d(6, 6, 3, padding=1, groups=groups).double(), random_bn(6), X()
    w, b = kernels.fold_bn(conv.weight, conv.bias, BNParams.from_module(bn))
    assert torch.allclose(F.conv2d(x, w, b, padding=1, groups=groups), bn(conv(x)), atol=1e-12)


def test_fold_bn_linear_and_transposed():
    lin, bn1 = torch.nn.Linear(5, 4).double(), torch.nn.BatchNorm1d(4).double().eval()
    with torch.no_grad():
        bn1.running_var.uniform_(0.5, 2)
        bn1.running_mean.normal_()
    x = torch.randn(3, 5, dtype=torch.float64)
    w, b = kernels.fold_bn(lin.weight, lin.bias, BNParams.from_module(bn1))
    assert torch.allclose(F.linear(x, w, b), bn1(lin(x)), atol=1e-12)
    ct, bn = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2).double(), random_bn(4)
    w, b = kernels.fold_bn_transposed(ct.weight, ct.bias, BNParams.from_module(bn), groups=2)
    x = X()
    assert torch.allclose(F.conv_transpose2d(x, w, b, stride=2, groups=2), bn(ct(x)), atol=1e-12)


def test_bn_before_unpadded_conv():
    bn, conv, x = random_bn(6), torch.nn.Conv2d(6, 4, 3, groups=2).double(), X()
    w, b = kernels.fold_bn_into_next(conv.weight, conv.bias, BNParams.from_module(bn), groups=2)
    assert torch.allclose(F.conv2d(x, w, b, groups=2), conv(bn(x)), atol=1e-12)


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_identity_and_avgpool_kernels(groups):
    x = X()
    ident = kernels.identity_kernel(6, groups, (3, 3), torch.float64)
    assert torch.equal(F.conv2d(x, ident, padding=1, groups=groups), x)
    avg = kernels.avgpool_kernel(6, groups, (3, 3), torch.float64)
    assert torch.allclose(F.conv2d(x, avg, stride=2, padding=1, groups=groups), F.avg_pool2d(x, 3, 2, 1), atol=1e-12)


def test_embedding_offsets():
    assert kernels.embedding_offset(1, 0, 3, 1) == 1  # 1×1 pad 0 sits at the centre of 3×3 pad 1
    assert kernels.embedding_offset(3, 0, 3, 1) is None  # 3×3 pad 0 is shifted: does not fit
    assert kernels.embedding_offset(3, 1, 5, 2) == 1
    with pytest.raises(ValueError):
        kernels.embed_kernel(torch.zeros(2, 2, 3, 3), (3, 3), (1, 0))


@pytest.mark.parametrize("groups", [1, 2])
def test_sequential_1x1_then_kxk(groups):
    c1, c2, x = torch.nn.Conv2d(6, 8, 1, groups=groups).double(), torch.nn.Conv2d(8, 4, 3, groups=groups).double(), X()
    w, b = kernels.compose_sequential(c1.weight, c1.bias, c2.weight, c2.bias, groups)
    assert torch.allclose(F.conv2d(x, w, b, groups=groups), c2(c1(x)), atol=1e-12)
    # with padding, exact only if the border holds the first conv's bias (DBB's pad-with-values)
    padded = F.pad(c1(x), [1] * 4) + F.pad(torch.zeros_like(c1(x)), [1] * 4, value=1.0) * c1.bias.view(1, -1, 1, 1)
    assert torch.allclose(F.conv2d(x, w, b, padding=1, groups=groups), F.conv2d(padded, c2.weight, c2.bias,
                                                                                   groups=groups), atol=1e-12)


def test_merge_parallel_needs_one_shape():
    a = torch.randn(4, 6, 3, 3)
    w, b = kernels.merge_parallel([(a, None), (a, torch.ones(4))])
    assert torch.allclose(w, 2 * a) and torch.equal(b, torch.ones(4))
    with pytest.raises(ValueError):
        kernels.merge_parallel([(a, None), (torch.randn(4, 6, 1, 1), None)])
