"""Channel pruning: the dependency groups are right on every zoo model, and a record replays exactly.

The central check needs no trained weights: zeroing the channels a plan removes (their producers' rows and
biases, their BN γ and β, their depthwise rows) leaves those channels exactly zero everywhere they flow, so
the zeroed original and the pruned model must compute the same outputs. A wrong group (a residual partner
missed, a concat offset off by one, a shuffle followed wrongly) breaks that at once.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deploy.artifacts.numerics import make_realistic
from deploy.jobs.prune_search import choose_round_to, macs_after, prepare
from deploy.models import create_model, get_model_entry, list_models
from deploy.passes.prune import (
    PruneRecord,
    RecordMismatchError,
    apply_plans,
    apply_record,
    channel_scores,
    count,
    plan_uniform,
    prune,
    replay,
)
from deploy.passes.prune_graph import FxTraceError, analyse

SMALL = (2, 3, 64, 64)


def _shape(name: str) -> tuple[int, ...]:
    entry = get_model_entry(name)
    return entry.input_shape if entry.input_shape[-1] <= 64 else SMALL


def _zeroed(model: nn.Module, plans) -> nn.Module:
    """The original with every removed channel's producers, BN affine and depthwise rows set to zero."""
    z = copy.deepcopy(model)
    names = dict(z.named_modules())
    with torch.no_grad():
        for p in plans:
            dropped = sorted(set(range(p.group.size)) - set(p.keep))
            if not dropped:
                continue
            for m in p.group.members:
                if m.role == "in":
                    continue
                offset, ids = 0, []
                for seg in m.layout:
                    if seg.space == p.group.id:
                        ids += [offset + c for c in dropped]
                    offset += seg.size
                mod = names[m.module]
                if isinstance(mod, _BatchNorm):
                    mod.weight[ids] = 0
                    mod.bias[ids] = 0
                elif isinstance(mod, nn.ConvTranspose2d):
                    mod.weight[:, ids] = 0
                else:
                    mod.weight[ids] = 0
                if not isinstance(mod, _BatchNorm) and mod.bias is not None:
                    mod.bias[ids] = 0
    return z


@pytest.mark.parametrize("name", list_models())
def test_pruned_equals_original_with_those_channels_zeroed(name):
    torch.manual_seed(0)
    shape = _shape(name)
    model = make_realistic(create_model(name), shape)
    x = torch.randn(*shape)
    prepared, graph, steps = prepare(model, (x,))
    assert graph.prunable(), f"{name}: nothing prunable"
    plans = plan_uniform(graph, channel_scores(prepared, graph, "l2"), 0.3)
    pruned, record = apply_plans(prepared, graph, plans)
    assert record.modules, f"{name}: the plan removed nothing"
    with torch.no_grad():
        expected, got, before = _zeroed(prepared, plans)(x), pruned(x), prepared(x)
    scale = expected.abs().max()
    assert float((expected - got).abs().max() / scale) < 1e-5
    assert float((before - got).abs().max() / scale) > 1e-3  # the zeroing changed something: not a no-op test
    params, macs = count(pruned, (x,))
    assert macs == macs_after(graph, record, prepared)  # the record's MACs are the module's
    p0, m0 = count(prepared, (x,))
    assert macs < 0.75 * m0 and params < p0


def test_shufflenet_and_mobilenet_v3_prune_their_branches():
    x = torch.randn(*SMALL)
    shuffle = analyse(create_model("shufflenet_v2_x1_0"), (x,))
    frozen = [g for g in shuffle.groups if g.frozen and g.producers]
    assert any("view" in r for g in frozen for r in g.frozen)  # the channel shuffle is not guessed through
    inside = [g for g in shuffle.prunable() if any(".branch2.0" in p for p in g.producers)]
    assert len(inside) == 16  # the first 1×1 of every block's branch2: its channels are the branch's own
    v3 = analyse(create_model("mobilenet_v3_small"), (x,))
    se = [g for g in v3.prunable() if any(p.endswith("fc2") for p in g.producers)]
    assert se and all(any(m.role == "dw" for m in g.members) for g in se)  # SE gate tied to the block's channels


def test_one_output_channel_conv_is_not_taken_for_depthwise():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.score = nn.Conv2d(8, 1, 1)  # 1 output channel, groups=1 (Torch-Pruning #126)
            self.refine = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            return self.refine(torch.relu(self.score(torch.relu(self.conv(x)))))

    graph = analyse(Head(), (torch.randn(1, 3, 16, 16),))
    groups = {g.producers[0]: g for g in graph.groups if g.producers}
    assert groups["conv"].prunable and groups["conv"].size == 8
    assert not groups["score"].prunable  # one channel: nothing to remove, and not merged with anything
    assert {m.role for m in groups["score"].members} == {"out", "in"}


def test_concat_offsets_are_followed():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 12, 1)
            self.bn = nn.BatchNorm2d(20)
            self.fuse = nn.Conv2d(20, 6, 1)

        def forward(self, x):
            return self.fuse(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))

    model = make_realistic(Cat(), (1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    graph = analyse(model, (x,))
    plans = plan_uniform(graph, channel_scores(model, graph), 0.5)
    pruned, record = apply_plans(model, graph, plans)
    assert pruned.fuse.in_channels == 10 and pruned.bn.num_features == 10
    with torch.no_grad():
        assert torch.allclose(_zeroed(model, plans)(x), pruned(x), atol=1e-5)


def test_record_replays_on_a_fresh_model_and_mismatches_name_the_layer():
    x = torch.randn(*SMALL)
    model = make_realistic(create_model("resnet18"), SMALL)
    graph = analyse(model, (x,))
    pruned, record = apply_plans(model, graph, plan_uniform(graph, channel_scores(model, graph), 0.3, 8))
    record = PruneRecord.from_json(record.to_json())
    fresh = create_model("resnet18")
    apply_record(fresh, record)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned(x))
    assert pruned.layer1[0].conv1.out_channels % 8 == 0
    with pytest.raises(RecordMismatchError, match="layer 'fc' has 10 output channels; the pruning record was made "
                                                   "for 1000"):
        apply_record(create_model("resnet18", num_classes=10), _only(record, "fc"))
    with pytest.raises(RecordMismatchError, match="names layer 'layer1.0.conv1', which this model does not have"):
        apply_record(create_model("mobilenet_v2"), record)


def _only(record: PruneRecord, name: str) -> PruneRecord:
    """A record whose one entry says ``name`` had 1000 outputs (a 1000-class head)."""
    return PruneRecord({name: {"out": [0, 1]}}, {name: {"out": 1000}})


def test_dbb_prunes_after_reparameterisation_and_replays():
    x = torch.randn(*SMALL)
    model = make_realistic(create_model("dbb_resnet18"), SMALL)
    prepared, graph, steps = prepare(model, (x,))
    assert steps == ["reparameterize"]
    plans = plan_uniform(graph, channel_scores(prepared, graph), 0.3)
    pruned, record = apply_plans(prepared, graph, plans)
    rebuilt = replay(create_model("dbb_resnet18"), record, steps)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))


def test_bad_ratio_and_ignore_and_untraceable():
    x = torch.randn(*SMALL)
    model = create_model("resnet18")
    for ratio in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            prune(model, (x,), ratio=ratio)
    with pytest.raises(ValueError, match="matches no layer"):
        prune(model, (x,), ratio=0.3, ignore=["layer9.*"])
    kept = prune(model, (x,), ratio=0.3, ignore=["layer4.*"]).model
    assert kept.layer4[0].conv1.out_channels == 512 and kept.layer3[0].conv1.out_channels < 256

    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return self.conv(-x)

    with pytest.raises(FxTraceError, match="torch.fx cannot trace Dynamic.*control flow"):
        analyse(Dynamic(), (x,))


def test_round_to_reads_the_steps_of_a_blocked_kernel():
    # a kernel that pads to blocks of 16: time depends on ceil(w / 16) only
    blocked = {w: 1.0 + ((w + 15) // 16) * 0.25 for w in range(64, 130)}
    assert choose_round_to(blocked) == 16
    linear = {w: 1.0 + w * 0.01 for w in range(64, 130)}
    assert choose_round_to(linear) == 1
    eight = {w: float((w + 7) // 8) for w in range(64, 130)}
    assert choose_round_to(eight) == 8
    # ONNX Runtime's CPU convs at batch 1 here: flat from 65 to 96, steps past 64, 96 and 128
    thirty_two = {w: 1.0 + ((w + 31) // 32) * 0.4 for w in range(64, 130)}
    assert choose_round_to(thirty_two) == 32


def test_user_unet_groups_are_exact():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "fixtures" / "prune_unet.py"
    spec = importlib.util.spec_from_file_location("prune_unet_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = make_realistic(module.build(), (1, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    graph = analyse(model, (x,))
    plans = plan_uniform(graph, channel_scores(model, graph), 0.5)
    pruned, _ = apply_plans(model, graph, plans)
    assert pruned.dec[0].in_channels == 16 and pruned.up.out_channels == 8  # concat of 8 + 8 kept channels
    with torch.no_grad():
        expected, got = _zeroed(model, plans)(x), pruned(x)
    assert float((expected - got).abs().max()) < 1e-5


def _fixture(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "fixtures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_user_fpn_with_flatten_upsample_interpolate_and_pad():
    model = make_realistic(_fixture("prune_fpn").build(), (1, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    graph = analyse(model, (x,))
    reasons = [r for g in graph.groups for r in g.frozen]
    assert set(reasons) <= {"a graph input", "a graph output"}, reasons  # every op understood
    plans = plan_uniform(graph, channel_scores(model, graph), 0.5)
    pruned, _ = apply_plans(model, graph, plans)
    assert pruned.fc.in_features == 32 and pruned.lat3.out_channels == 16 == pruned.lat2.out_channels
    with torch.no_grad():
        for expected, got in zip(_zeroed(model, plans)(x), pruned(x)):
            assert float((expected - got).abs().max() / expected.abs().max()) < 1e-5


class _Two(nn.Module):
    """Two 8-channel convs of one input, combined by ``combine`` (the traps found in review)."""

    def __init__(self, combine, bn: nn.Module | None = None, head: nn.Module | None = None):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Parameter(torch.rand(8, 1, 1) + 0.5)  # a layer scale
        self.bn = bn or nn.Identity()
        self.combine = combine
        self.c = head or nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.combine(self, self.a(x), self.b(x)))


TRAPS = {
    "clamp by a tensor": (lambda m, a, b: a.clamp(max=b), None, None),
    "max over channels": (lambda m, a, b: a - torch.max(a, 1, keepdim=True)[0] + b, None, None),
    "tensor_split of channels": (lambda m, a, b: torch.tensor_split(a, 2, 1)[0].repeat(1, 2, 1, 1) * b, None, None),
    "layer scale (C,1,1)": (lambda m, a, b: a * m.g + b, None, None),
    "shared BN without affine": (lambda m, a, b: torch.cat([m.bn(a), m.bn(b)], 1), nn.BatchNorm2d(8, affine=False),
                                 nn.Conv2d(16, 4, 1)),
    "lower-rank channel operand": (lambda m, a, b: a * b.mean((2, 3))[:, :, None, None] + b, None, None),
}


@pytest.mark.parametrize("trap", list(TRAPS))
def test_review_traps_prune_exactly_or_stay_whole(trap):
    combine, bn, head = TRAPS[trap]
    model = make_realistic(_Two(combine, bn, head), (1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    graph = analyse(model, (x,))
    plans = plan_uniform(graph, channel_scores(model, graph), 0.5)
    pruned, _ = apply_plans(model, graph, plans)
    with torch.no_grad():
        expected, got = _zeroed(model, plans)(x), pruned(x)
    assert float((expected - got).abs().max() / expected.abs().max()) < 1e-5, trap


def test_pool_on_an_unbatched_looking_tensor_is_not_taken_for_channelwise():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.pool, self.b = nn.Linear(12, 8), nn.MaxPool1d(3, 1, 1), nn.Linear(8, 4)

        def forward(self, x):
            return self.b(self.pool(self.a(x)))  # MaxPool1d on (N, 8) pools over the features

    model = Seq()
    x = torch.randn(2, 12)
    graph = analyse(model, (x,))
    assert not graph.prunable()
    assert any("MaxPool1d" in r for g in graph.groups for r in g.frozen)
