"""Tests of kerabl.bench (FLOP counts, the quick run) and of the fast engine's speed features."""

import importlib.util
import json
import os
import time

import keras
import numpy as np
import pytest

from kerabl.engine import _chunks, fast_tail, TailAblator
from kerabl.masks import cell_masks, n_units
from kerabl.bench import run_bench, spawned
from kerabl.bench.cases import (probe_case, probe_cell_seconds, probe_stage_seconds,
                                stage_seconds_by_width)
from kerabl.bench.cells import random_cells
from kerabl.models import load_network
from kerabl.bench.probes import plain_cells, probe_line, probe_rate, timed_cells
from kerabl.bench.flops import layer_flops, model_flops, shortcut_flops, tail_flops, target_tail_flops
from kerabl.bench.report import extrapolate, extrapolation_note, fast_cell_over_targets, format_table
from kerabl.errors import KerablError
from kerabl.masks import lambda_masked_model


def _tiny(seed: int = 0) -> keras.Model:
    """4x4x2 -> conv_a 3x3 (4) -> conv_b 1x1 groups=2 (4) -> flatten -> dense 3 -> softmax."""
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(4, 1, groups=2, activation="relu", name="conv_b")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(3, name="dense")(x)
    outputs = keras.layers.Activation("softmax", name="softmax")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(-1, 1, w.shape).astype("float32") for w in model.weights])
    return model


def test_flop_counts_equal_the_hand_count():
    model = _tiny()
    # conv_a: 2 x 2 outputs x 4 filters x (3 x 3 x 2) multiply-adds = 2 * 4 * 4 * 18
    assert layer_flops(model.get_layer("conv_a")) == 576
    # conv_b, groups=2: each of 2 x 2 x 4 outputs sees a 1 x 1 kernel on 4 / 2 input channels
    assert layer_flops(model.get_layer("conv_b")) == 2 * 16 * 2
    assert layer_flops(model.get_layer("dense")) == 2 * 16 * 3
    assert layer_flops(model.get_layer("flatten")) == 0
    assert tail_flops(model, "conv_a") == 64 + 96
    assert tail_flops(model, "conv_b") == 96
    assert model_flops(model) == 576 + 64 + 96
    assert target_tail_flops(model, ["conv_a", "conv_b", "dense"]) == [64 + 96, 96, 0]


def test_shortcut_flops_equal_the_hand_count():
    from kerabl.graph import channel_shortcut

    inputs = keras.Input((4, 4, 2))
    x = keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(3, 1, name="conv")(inputs))
    x = keras.layers.Dense(5, name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    cut = channel_shortcut(model, "conv")
    # each channel feeds 2 x 2 pooled inputs: 4 kernel rows of 5, then out: 5 x 2
    assert shortcut_flops(model, cut) == 2 * 4 * 5 + 2 * 5 * 2
    assert shortcut_flops(model, cut, n_dropped=2) == 2 * 8 * 5 + 2 * 5 * 2


def _measured_h() -> dict:
    """A measured H case: targets a, b, c with tails of 10, 5 and 0 GFLOP; a and c timed."""
    return dict(targets=["a", "b", "c"], target_tail_gflop=[10.0, 5.0, 0.0], paper_cell_s=8.0,
                paper=[dict(layer="a", cell_s=8.0)], record_s=36.0, start_s=0.9,
                layers=[dict(layer="c", head_s=32.0, tail_s=0.0, cell_s=2.0, pair_input_s=8.0,
                             study_cell_s=0.5),
                        dict(layer="a", head_s=16.0, tail_s=3.2, cell_s=4.2, pair_input_s=16.0,
                             study_cell_s=4.4)])


def test_untimed_targets_are_interpolated_in_tail_flops():
    # b, halfway in tail FLOPs: tail 1.6 x 17 / 16 = 1.7, pair input (16 + 8) / 2 / 16 = 0.75
    assert fast_cell_over_targets(_measured_h()) == pytest.approx((4.4 + 2.45 + 0.5) / 3)


def test_extrapolation_counts_cells_starts_recording_and_probe_stages():
    cases = {"vgg16": dict(h=_measured_h(), probe=dict(class_s=12.0, extrapolated=["a"]))}
    (row,) = extrapolate(cases, workers=2)
    assert row["cells"] == 8 * 3 * 16 == 384
    assert row["record_h"] == pytest.approx(8 * 36.0 / 3600)
    assert row["fast_h"] == pytest.approx(384 * 2.45 / 3600 + 8 * 0.9 / 3600 + row["record_h"])
    assert row["probe_h"] == pytest.approx(8 * 12.0 / 3600)      # 8 classes x a class's pairs
    assert row["probe_pair_s"] == pytest.approx(4.0)
    assert "wider targets extrapolated linearly in units: vgg16: 1 targets" in \
        extrapolation_note([row], 2)
    assert row["total_h"] == pytest.approx(row["fast_h"] + row["probe_h"])
    assert row["paper_h"] == pytest.approx(384 * 8.0 / 3600)
    assert row["timed"] == "2/3 layers, 1 authors' cells"


def test_probe_rounds_each_take_their_own_floor():
    floors = iter([1.0, 1e9, 1e3])       # GFLOP/s: the shares differ ~1000x round to round
    row = probe_rate(0.0, workers=1, fits=4, repeats=3, floor_now=lambda: next(floors), cells=2)
    shares = row["round_shares"]
    assert len(shares) == 3 and shares[1] < 1e-6 < shares[2] < shares[0]
    assert row["floor_share"] == shares[2] and row["floor_gflops"] == 1e3
    assert row["gflops"] == pytest.approx(1e3 * shares[2])
    assert row["cells"] == 2 and row["cells_per_s"] == pytest.approx(2 / (2 * row["cell_s"]))
    # plain Newton's work over the same round's time and floor: more work, same predictions
    assert row["plain_share"] == pytest.approx(row["plain_gflops"] / 1e3)
    assert row["plain_gflops"] > row["gflops"] and row["plain_same"] is True
    assert row["plain_hessians_per_fit"] > row["hessians_per_fit"]
    line = probe_line(row)
    assert line.endswith(f"predictions the same) in this time: {row['plain_gflops']:.1f} GFLOP/s "
                         f"= {100 * row['plain_share']:.0f} % of the floor")
    assert "1 workers x 1 thread x 2 cells:" in line
    assert "of the 1000 GFLOP/s floor taken just before it (median of 3 rounds" in line


def test_probe_cells_default_to_800_fits_a_round_and_time_the_solver_alone():
    assert probe_rate(100.0, workers=1, fits=400, repeats=1, cells=None)["cells"] == 2
    span = timed_cells([0, 1], fits=3)
    span.update(plain_cells([0, 1], 3, span["signs"]))
    alone = timed_cells([0], fits=3)
    assert span["cells"] == 2 and span["start"] < span["end"]
    assert span["flops"] > alone["flops"] > 0 and 1 <= span["hessians_per_fit"] < 20
    assert span["plain_flops"] > span["flops"] and span["plain_same"]
    assert span["plain_hessians_per_fit"] > span["hessians_per_fit"]


def test_probe_cell_seconds_runs_the_default_probes():
    assert 0 < probe_cell_seconds(30, n_target=10, n_rows=40) < 60


def test_fast_tail_splits_groups_and_keeps_outputs():
    model = _tiny()
    tail = fast_tail(model, "conv_a")
    assert "conv_b_split" in [lay.name for lay in tail.layers]
    acts = np.random.default_rng(1).uniform(0, 2, (5, 2, 2, 4)).astype("float32")
    from kerabl.graph import tail_model

    np.testing.assert_allclose(tail.predict_on_batch(acts),
                               tail_model(model, "conv_a").predict_on_batch(acts), atol=1e-6)


def test_tail_ablator_traces_once_and_matches_the_paper_engine():
    model = _tiny()
    rng = np.random.default_rng(2)
    ablator = TailAblator(model, "conv_a", batch_floats=40)  # 40 floats: several calls per mask
    cells = random_cells(16, 4, seed=0)
    masks = cell_masks(ablator.shape, cells, "element")
    for n_images in (7, 3, 5):  # three "classes" with different image counts
        images = rng.uniform(0, 1, (n_images, 4, 4, 2)).astype("float32")
        labels = rng.integers(0, 3, n_images)
        ablator.set_images(images)
        for k in (1, 4, 2):
            ranks = ablator.ranks(masks[:k], labels)
            assert ranks.shape == (k, n_images)
        paper = lambda_masked_model(model, "conv_a", masks[3]).predict_on_batch(images)
        np.testing.assert_allclose(ablator.outputs(masks[3:4])[0], paper, atol=1e-6)
    assert ablator.traces == 1


def test_bfloat16_and_float16_storage():
    model = _tiny()
    images = np.random.default_rng(3).uniform(0, 1, (6, 4, 4, 2)).astype("float32")
    masks = cell_masks((2, 2, 4), random_cells(16, 2, seed=1), "element")
    exact = TailAblator(model, "conv_a")
    exact.set_images(images)
    for kwargs in (dict(precision="bfloat16"), dict(storage="float16")):
        other = TailAblator(model, "conv_a", **kwargs)
        other.set_images(images)
        np.testing.assert_allclose(other.outputs(masks), exact.outputs(masks), atol=0.05)
    half = TailAblator(model, "conv_a", storage="float16")
    with pytest.raises(KerablError, match="float16"):
        half.set_activations(np.full((2, 16), 1e5, dtype="float32"))
    with pytest.raises(KerablError, match="precision"):
        TailAblator(model, "conv_a", precision="int8")


@pytest.mark.parametrize("n_masks,n_images,per_image,budget", [(5, 7, 10, 30), (5, 7, 10, 1000),
                                                               (3, 2, 100, 1)])
def test_chunks_cover_every_mask_and_image_once(n_masks, n_images, per_image, budget):
    seen = np.zeros((n_masks, n_images), dtype=int)
    for ms, ims in _chunks(n_masks, n_images, per_image, budget):
        seen[ms, ims] += 1
        size = len(range(n_masks)[ms]) * len(range(n_images)[ims]) * per_image
        assert size <= max(budget, per_image)
    assert (seen == 1).all()


def test_format_table():
    text = format_table([{"a": 1.5, "b": "x"}], [("a", "seconds", ".2f"), ("b", "b", "s")])
    assert text.splitlines() == ["seconds  b", "-------  -", "   1.50  x"]


def test_quick_bench_writes_the_table(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    result = run_bench(out, quick=True, log=lines.append)
    stored = json.loads(out.read_text())
    assert set(stored) == {"machine", "floor", "cases", "table", "notes", "extrapolation",
                           "skipped", "probe_rate", "headline"}
    probe = stored["probe_rate"]
    assert probe["fits"] == 50 and probe["workers"] >= 1 and probe["threads"] == 1
    assert probe["cell_s"] > 0 and probe["gflops"] > 0 and 1 <= probe["hessians_per_fit"] < 20
    assert any(line.startswith("probes: 50 fits of 100 units x 550 images") and
               "floor taken just before it (median of 5 rounds" in line for line in lines)
    assert len(probe["round_shares"]) == 5 and probe["floor_gflops"] > 0
    assert probe["floor_share"] == pytest.approx(probe["gflops"] / probe["floor_gflops"])
    assert sorted(probe["round_shares"])[2] == pytest.approx(probe["floor_share"])
    assert probe["plain_share"] > probe["floor_share"] and probe["plain_same"] is True
    z_row = stored["table"][1]
    assert z_row["ratio_cached"] > z_row["ratio"]        # the sweep alone: no head pass to share
    assert stored["notes"][0].startswith(f"Z demo conv_5: {stored['cases']['demo']['z']['ratio']:.1f}x")
    assert list(stored["cases"]) == ["demo"]
    h, z = stored["cases"]["demo"]["h"], stored["cases"]["demo"]["z"]
    assert h["same_ranks"] == 1.0 and h["traces"] == 1
    # what a second class adds to recording the study's activation cache: a difference of two
    # timings, so only that it was measured is checked here (its use is tested above)
    assert isinstance(h["record_s"], float) and np.isfinite(h["record_s"])
    assert h["start_s"] > 0         # a class's images read and ranked, once per class
    for row in h["layers"]:     # every demo target is a cut point: the study reads the cache
        assert row["pair_input"] == "cache read" and row["pair_input_s"] > 0
        assert row["study_cell_s"] == pytest.approx(row["tail_s"] * 17 / 16
                                                    + row["pair_input_s"] / 16)
    assert h["fast_cell_s"] > 0 and h["paper_cell_s"] > 0 and z["ratio"] > 0
    assert z["shortcut"] == "dense_1" and z["same_preds"] == 1.0 and z["traces"] == 1
    floor = stored["floor"]
    assert set(floor["by_library"]) == {"tensorflow", "numpy"} and floor["bf16_gflops"] > 0
    assert floor["best_gflops"] == max(max(r.values()) for r in floor["by_library"].values())
    assert lines[1].startswith(f"matmul floor: {floor['best_gflops']:.1f} GFLOP/s float32")
    assert "bfloat16" in lines[1]
    assert h["bf16_max_deficit_diff"] == max(b["max_deficit_diff"] for b in h["bf16"])
    assert [len(b["deficit_f32"]) for b in h["bf16"]] == [4, 4, 4]
    column = stored["cases"]["demo"]["torch"]
    h_row = stored["table"][0]
    assert h_row["images"] == h["images"] == 45 and h_row["threads"] >= 1
    if importlib.util.find_spec("torch") is None:    # the README's test command installs no torch
        from kerabl.bench.torch_case import NOT_INSTALLED

        assert column == {"available": False, "note": NOT_INSTALLED}
        assert h_row["torch"] == "torch not installed"
        assert any(line.startswith("\ntorch demo: " + NOT_INSTALLED) for line in lines)
    else:
        assert h_row["threads"] == column["threads"]
        assert column["available"] and column["same_ranks"] == 1.0 and column["images"] == 45
        assert [row["layer"] for row in column["layers"]] == h["targets"]
        assert all(row["cells"] == 4 and row["tail_lead"] > 0 and row["hook_lead"] > 0
                   for row in column["layers"])
        assert h_row["torch"].startswith("hook ") and h_row["torch"].endswith("ranks 100%")
        assert any(line.startswith("\ntorch demo: the H cells above, 45 images") for line in lines)
    assert [row["case"] for row in stored["table"]] == ["H demo (7 layers)", "Z demo conv_5"]
    assert lines[-1] == result["headline"] and lines[-1].startswith("headline: demo H sweep")
    assert lines[0].startswith(f"machine: {stored['machine']['cpus']} CPUs, "
                               f"{stored['machine']['cpu']}; TensorFlow ")


def test_cpu_description_names_the_model_and_its_vector_units():
    from kerabl.bench.flops import cpu_description

    amx = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
           "flags\t\t: fpu sse2 avx2 avx512f avx512bw amx_bf16 amx_tile\n"
           "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu\n")
    assert cpu_description(amx) == "Intel(R) Xeon(R) Processor (AVX-512, AMX)"
    avx2 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma\n"
    assert cpu_description(avx2) == "AMD EPYC 7B13 (AVX2)"
    assert cpu_description("flags\t: fpu sse2\n") == "unknown CPU"
    assert cpu_description("") == "unknown CPU"


def test_matmul_floor_reports_both_libraries_and_bfloat16():
    from kerabl.bench.flops import floor_line, matmul_floor

    floor = matmul_floor([(64, 64, 64), (128, 64, 32)], repeats=1)
    assert list(floor["by_library"]["numpy"]) == ["64x64x64", "128x64x32"]
    assert floor["by_size"]["64x64x64"] == max(floor["by_library"]["numpy"]["64x64x64"],
                                               floor["by_library"]["tensorflow"]["64x64x64"])
    assert list(floor["bf16_by_size"]) == ["64x64x64"]     # the largest square size
    assert floor_line(floor).startswith(f"matmul floor: {floor['best_gflops']:.1f} GFLOP/s")


def test_torch_column_without_torch_says_so(monkeypatch):
    import kerabl.torch_models
    from kerabl.bench.report import torch_cell, torch_tables
    from kerabl.bench.torch_case import NOT_INSTALLED, TorchColumn

    def missing():
        raise KerablError(kerabl.torch_models.TORCH_EXTRA)

    monkeypatch.setattr(kerabl.torch_models, "import_torch", missing)
    torch_column = TorchColumn(None, np.zeros((2, 4, 4, 3)), np.zeros(2), [], print)
    torch_column.layer("conv_1", {})   # nothing to time
    column = torch_column.summary()
    assert column == {"available": False, "note": NOT_INSTALLED}
    assert torch_cell(column) == "torch not installed" and torch_cell(None) is None
    assert torch_tables({"vgg16": {"torch": column}}) == [
        "\ntorch vgg16: torch not installed (pip install 'kerabl[torch]')"]


def test_split_at_head_then_tail_is_the_port():
    torch = pytest.importorskip("torch")
    from kerabl.crosscheck import hook_points, split_at, torch_from_keras
    from kerabl.models import load_network

    net = load_network("demo")
    port = torch_from_keras("demo", net.model)
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (3, 3, 32, 32)).astype("float32"))
    with torch.inference_mode():
        whole = port(x)
        for layer in ("conv_3", "dense_1"):
            head, tail = split_at(port, hook_points("demo", port, net.model)[layer])
            np.testing.assert_array_equal(tail(head(x)).numpy(), whole.numpy())
    with pytest.raises(KerablError, match="not a step"):
        split_at(port, torch.nn.ReLU())


def test_timed_calls_count_the_fastest_and_return_the_last_value():
    from kerabl.bench.flops import timed

    pauses = iter([0.06, 0.01, 0.04])
    calls = []

    def call():
        calls.append(next(pauses))
        time.sleep(calls[-1])
        return len(calls)

    value, seconds = timed(call, repeats=3)
    assert value == 3 and len(calls) == 3
    assert 0.01 <= seconds < 0.04


def test_probe_stages_are_timed_per_target_width_as_the_study_runs_them():
    lines = []
    net = load_network("demo")
    probe = probe_case(net, lines.append)
    widths = [n_units(net.model, t, "element") for t in net.targets]
    assert probe["workers"] == (os.cpu_count() or 1) and probe["rows"] == 550
    assert probe["widths"] == sorted(set(widths)) and probe["extrapolated"] == []
    by_width = dict(zip(probe["widths"], probe["stage_s"]))
    assert probe["target_s"] == [by_width[w] for w in widths] and min(probe["stage_s"]) > 0
    assert probe["class_s"] == pytest.approx(sum(probe["target_s"]))
    assert lines == [f"  demo grid + probe stages per pair ({probe['workers']} workers): " + ", ".join(
        f"{w} units {t:.2f} s" for w, t in zip(probe["widths"], probe["stage_s"]))]


def test_stage_seconds_interpolate_and_extrapolate_in_units():
    assert stage_seconds_by_width([100, 200], [1.0, 3.0], [100, 150, 400]) == \
        pytest.approx([1.0, 2.0, 7.0])
    assert stage_seconds_by_width([100], [2.0], [50, 100, 300]) == [2.0, 2.0, 2.0]


def test_a_case_s_process_can_start_the_probe_workers():
    # run_bench runs each case in a spawned process, and the case's probe stages start workers
    # of their own: a daemonic (multiprocessing.Pool) process could not
    (seconds,) = spawned(probe_stage_seconds, [64], 2, n_target=10, n_rows=40)
    assert 0 < seconds < 60
