"""Int8 accuracy on real labelled data (the issue's acceptance): the digits-trained nets, quantized by
`deploy quantize`, scored on the test split that neither calibration nor the method choice saw."""

from __future__ import annotations

import json

import pytest

from deploy.jobs.digits_accuracy import BUDGET_POINTS, run_digits_accuracy


@pytest.fixture(scope="module")
def rows(trained, cache_dir, tmp_path_factory):
    return run_digits_accuracy(tmp_path_factory.mktemp("digits"), cache_dir=cache_dir)


def test_resnet_style_net_loses_at_most_half_a_point(rows):
    (resnet,) = [r for r in rows if r.model == "digits-resnet"]
    assert resnet.fp32_accuracy >= 97.0
    assert resnet.drop <= 0.5, resnet
    assert resnet.centred_sqnr_db > 25


def test_repvgg_rows_train_form_fused_and_fallbacks(rows):
    forms = [r.form for r in rows if r.model == "digits-repvgg"]
    assert forms[:3] == ["train form", "reparameterized", f"reparameterized, --max-drop {BUDGET_POINTS:g}"]
    train, fused, drop, sqnr = [r for r in rows if r.model == "digits-repvgg"]
    assert train.fp32_accuracy == fused.fp32_accuracy  # the fusion is exact
    assert drop.budget_met is True and drop.drop <= BUDGET_POINTS + 1e-9  # on the selection slice; test agrees
    # the fused kernels quantize worse than the branches they replace (the QARepVGG effect, in SQNR) ...
    assert fused.centred_sqnr_db < train.centred_sqnr_db
    # ... and the SQNR budget buys it back: tier 2 (GPTQ rounding) or keeping the most sensitive layers in float
    if sqnr.budget_met:
        assert (sqnr.kept_float or sqnr.tier2) and sqnr.centred_sqnr_db >= round(train.centred_sqnr_db, 1) - 1e-6


def test_digits_cli_writes_json(cli, trained, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_CACHE", str(cache_dir))
    result = cli("digits", "--out", tmp_path, "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "d.json").read_text())
    assert [d["model"] for d in data][:2] == ["digits-resnet", "digits-repvgg"]
    assert result.output.strip().splitlines()[-1].startswith("DONE digits")
