"""The benchmark script runs end to end on its miniature preset (so it cannot rot)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bitat_keras as bk
from bitat_keras import datasets

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script, *args, timeout=900):
    """Runs ``benchmarks/<script>`` with ``args`` in a fresh interpreter; it must succeed."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_paper_table_mini_preset_writes_json_markdown_and_plot(tmp_path, eager):
    import render

    run_benchmark("paper_table.py", "--preset", "mini", "--out", tmp_path)
    report = json.loads((tmp_path / "mini.json").read_text())
    rows = report["rows"]
    for name in (
        "full_precision",
        "naive_ste",
        "naive_ste_2x",
        "reactnet",
        "reactnet_2x",
        "bitat_none",
        "bitat_intra",
        "bitat_cross",
        "bitat_paper",
        "bitat_aggregated",
        "bitat_aggregated_2x",
    ):
        assert 0.0 <= rows[name]["accuracy_mean"] <= 1.0
        assert rows[name]["seconds_mean"] > 0
    # Validation and test come from disjoint images; the JSON says how many of each.
    assert (report["train_size"], report["val_size"], report["test_size"]) == (224, 64, 96)
    # BiTAT at 2x makes about twice ReActNet's 1x optimizer steps.
    assert rows["bitat_aggregated_2x"]["steps"] >= 1.8 * rows["reactnet"]["steps"]
    assert {b for b, *_ in report["curves"]["bitat"]} == {1, 2}
    agg = rows["bitat_aggregated"]["per_seed"]["0"]
    assert agg["phases"]["overhead"] >= 0 and len(agg["gradient_ratio"]) == 3
    assert (
        rows["bitat_aggregated"]["v_parameters"]["used"]
        < rows["bitat_cross"]["v_parameters"]["used"]
    )
    deploy = report["deployment"]
    assert deploy["lce_bconv2d_ops"] == deploy["binary_layers"] == 3
    assert deploy["latency_ms"]["lce_1t"]["median"] > 0
    assert "| bitat_aggregated |" in (tmp_path / "mini.md").read_text()
    # Each row's JSON names the host that measured its seconds (hosts differ in speed); the
    # Markdown gives the seconds per seed and no host.
    host = rows["reactnet"]["per_seed"]["0"]["host"]
    assert host.startswith(f"{platform.release()}, ") and host.endswith(f", {os.cpu_count()} CPUs")
    if os.path.exists("/proc/cpuinfo"):  # Linux names the CPU model
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        assert not models or f", {models[0]}, " in host
    text = (tmp_path / "mini.md").read_text()
    assert "## Seconds per seed" in text and host not in text
    assert text == render.render_file(str(tmp_path / "mini.json"))
    assert (tmp_path / "mini_accuracy_vs_cost.png").stat().st_size > 1000
    # A second seed merges into the same report instead of replacing it.
    import harness
    import paper_table

    merged = paper_table.run(
        "mini", str(tmp_path), seeds=[1], groups=(), only=("reactnet", "bitat"), budgets=(1,)
    )
    assert merged["rows"]["reactnet"]["seeds"] == 2 and merged["rows"]["reactnet_2x"]["seeds"] == 1
    assert merged["rows"]["bitat_none"]["seeds"] == 1  # extra rows ran for seed 0 only
    assert {s for _, s, *_ in merged["curves"]["reactnet"]} == {0, 1}
    # Rerunning some main rows of a seed replaces those rows' results and keeps the others.
    again = paper_table.run("mini", str(tmp_path), seeds=[1], groups=(), only=("naive_ste",))
    assert again["rows"]["reactnet"]["per_seed"] == merged["rows"]["reactnet"]["per_seed"]
    old, new = (r["rows"]["bitat_aggregated"]["per_seed"]["1"] for r in (merged, again))
    assert new["seconds"] == old["seconds"]
    assert again["rows"]["naive_ste"]["seeds"] == 2
    # naive STE runs at every budget: (budget, seed) points of both seeds at 1x and 2x.
    points = sorted((b, s) for b, s, *_ in again["curves"]["naive_ste"])
    assert points == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert agg["config"]["transform"] == "aggregated"  # each BiTAT row keeps its config
    # A note (what disturbed a timing, say) joins the JSON report, not its Markdown.
    paper_table.annotate("mini", str(tmp_path), "seed 1 shared the CPU")
    assert "seed 1 shared the CPU" not in (tmp_path / "mini.md").read_text()
    kept = paper_table.summarize(harness.Bench("mini", merged["settings"], str(tmp_path)),
                                 json.loads((tmp_path / "mini.json").read_text()))  # fmt: skip
    assert kept["notes"] == ["seed 1 shared the CPU"]


@pytest.mark.parametrize("total", [8.0, 24.0, 48.0])
def test_scaled_schedule_spends_the_budget_in_the_defaults_proportions(total):
    from harness import scaled_schedule

    config = bk.BiTATConfig()
    layers = 8
    s = scaled_schedule(config, total, layers)
    spent = (
        s["activations_first_epochs"]
        + layers * s["epochs_per_layer"]
        + (layers - 1) * s["finetune_epochs"]
        + s["final_epochs"]
    )
    assert spent == pytest.approx(total)
    ratio = s["final_epochs"] / s["epochs_per_layer"]
    assert ratio == pytest.approx(config.final_epochs / config.epochs_per_layer)


def test_lce_benchmark_command_prints_pi_and_android_commands(capsys):
    from lce_benchmark_command import main

    assert main(["model.tflite", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "lce_benchmark_model --graph=" in out and "adb shell" in out and "--num_threads=1" in out


def test_deployment_script_reports_sizes_ops_and_latency_of_a_preset_network(tmp_path):
    import deployment

    report = deployment.run("mini", str(tmp_path), runs=3)
    d = report["deployment"]
    assert d["lce_bconv2d_ops"] == d["binary_layers"] == 3
    assert d["parity_max_abs_diff"] < 1e-3
    assert d["lce_over_float_size"] == d["lce_size_bytes"] / d["float_tflite_size_bytes"]
    assert all(v["p90"] >= v["median"] > 0 for v in d["latency_settings_ms"].values())
    assert set(d["latency_ms"]) == {f"{k}_{t}t" for k in ("lce", "float", "int8") for t in (1, 2)}
    assert set(report["goals"]) == {
        "lce_at_most_1_20_of_float_size",
        "lce_at_most_0.5x_float_latency_1t",
    }
    assert "| lce |" in (tmp_path / "deployment_mini.md").read_text()


def test_validation_sweep_runs_variants_and_picks_the_best_on_validation(tmp_path):
    import sweep

    names = ["naive_ste_lr0.001", "reactnet_lr0.001", "none/q+final", "agg-lam0.3-sign/q+final"]
    report = sweep.run("mini", str(tmp_path), names, fp_epochs=4)
    rows = report["rows"]
    assert list(rows) == ["full_precision", *names]
    assert report["settings"]["fp_epochs"] == 4  # --fp-epochs: a teacher trained longer
    row = rows["agg-lam0.3-sign/q+final"]
    assert row["overrides"]["lam"] == 0.3 and row["overrides"]["penalty_gradient"] == "sign"
    phases = [t["phase"] for t in row["trace"]]
    assert phases.count("quantize") == 3 and phases[-1] == "final"
    assert all(0.0 <= t["val_accuracy"] <= 1.0 for t in row["trace"])
    best = max(names[2:], key=lambda n: rows[n]["val_accuracy"])
    assert report["best"][0] == best
    text = (tmp_path / "sweep_mini.md").read_text()
    assert "| agg-lam0.3-sign/q+final | 1x |" in text and "teacher 4 epochs" in text


def test_parallel_sweep_merges_child_rows_on_one_teacher(tmp_path):
    """--jobs runs each row in its own process on the parent's saved teacher; the merged
    rows equal what the same rows give in one process (same seed, same teacher)."""
    import sweep

    names = ["naive_ste_lr0.001", "none/q+final"]
    report = sweep.run("mini", str(tmp_path / "par"), names, jobs=2)
    assert list(report["rows"]) == ["full_precision", *names]
    assert (tmp_path / "par" / "sweep_mini_fp.weights.h5").exists()
    assert not any((tmp_path / "par" / "sweep_parts").iterdir())  # no leftovers to commit
    serial = sweep.run("mini", str(tmp_path / "ser"), names)
    for name in names:
        assert report["rows"][name]["val_accuracy"] == serial["rows"][name]["val_accuracy"]


def test_latency_script_times_every_model_through_one_call(tmp_path):
    import latency

    assert latency.main(["--networks", "demo_28x28", "--runs", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    result = report["networks"]["demo_28x28"]
    assert result["binary_layers"] == 8 and result["ops"]["lce"]["LceBconv2d"] == 8
    assert result["lce_float_work"]["binary_convs"] == 8
    assert "LceBconv2d" not in result["lce_float_work"]["between"]
    assert result["parity_max_abs_diff"] < 1e-3
    # every option of every model at 1 and 2 threads; the best of each is the fastest
    assert len(result["settings"]) == 2 * (4 + 2 + 2)
    for key, best in result["best"].items():
        kind, threads = key.rsplit("_", 1)
        settings = result["settings"].items()
        options = [v for k, v in settings if k.startswith(f"{kind}/") and k.endswith(threads)]
        assert best["median"] == min(v["median"] for v in options)
        assert best["p90"] >= best["median"] > 0
    assert report["goals"] == {}  # the 224x224 goal needs that network
    assert "| demo_28x28 |" in (tmp_path / "latency.md").read_text()


def test_own_models_results_meet_the_targets_and_render_as_committed():
    """The committed users'-models results: the ReLU CNN (input thresholds) within 2 points
    of its LeakyReLU twin, every binary row far above chance, the Markdown up to date."""
    import own_models
    import render

    results_dir = Path(own_models.RESULTS)
    results = json.loads((results_dir / "own_models.json").read_text())

    def mean(name, row):
        runs = results["runs"][name].values()
        return sum(r["rows"][row]["test"] for r in runs) / len(runs)

    assert mean("cnn_relu", "bitat") >= mean("cnn_leaky", "bitat") - 0.02
    for name, runs in results["runs"].items():
        for run in runs.values():
            assert run["rows"]["bitat"]["test"] > 0.5 and run["rows"]["naive_ste"]["test"] > 0.5
            assert run["thresholded"] == ([] if name == "cnn_leaky" else run["binarized"])
    assert render.own_models(results) == (results_dir / "own_models.md").read_text()


def test_budget_helpers():
    import converge
    import harness
    import paper_table

    points = [{"epochs": e, "val_accuracy": a} for e, a in ((40, 0.80), (80, 0.85), (160, 0.852))]
    assert converge.converged(points) == 80 and converge.converged(points[:2]) is None

    assert [harness.budget_name(b) for b in (1, 2, 0.25, 0.5)] == ["", "_2x", "_0.25x", "_0.5x"]
    assert harness.budget_epochs(0.25, 48) == 12 and harness.budget_epochs(0.25, 4) == 2
    y = np.repeat(np.arange(4), [10, 3, 7, 5])
    rows = datasets.balanced_subset(y, 10, seed=1)
    assert sorted(np.bincount(y[rows])) == [2, 2, 3, 3]
    assert not np.array_equal(rows, datasets.balanced_subset(y, 10, seed=2))
    np.testing.assert_array_equal(rows, datasets.balanced_subset(y, 10, seed=1))
    names = ["bitat_none", "reactnet_2x", "naive_ste_0.25x", "full_precision", "naive_ste"]
    assert paper_table.row_order(names) == [
        "full_precision",
        "naive_ste_0.25x",
        "naive_ste",
        "reactnet_2x",
        "bitat_none",
    ]


def test_memory_script_records_rss_of_every_phase(tmp_path):
    """benchmarks/memory.py --mini: 3 blocks (8 binarized convs); every phase of the run
    (quantize of each layer, fine-tune of all but the last, the final phase) has its RSS at
    the end and its peak, and the growth figure compares the 2nd layer with the last."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--mini", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "memory_mini.json").read_text())
    assert report["settings"]["binarized_layers"] == 8
    kinds = [(p["index"], p["phase"]) for p in report["phases"]]
    expected = [(i, phase) for i in range(8) for phase in ("quantize", "finetune")][:-1]
    assert kinds == [*expected, (None, "final")]
    for p in report["phases"]:
        assert p["rss_end_mb"] > 100  # a TensorFlow process holds hundreds of MB
        assert p["peak_mb"] >= max(p["prep_peak_mb"], p["fit_peak_mb"]) >= p["rss_end_mb"]
        assert p["python_objects"] > 0 and p["traces"] >= 1
    assert [r["index"] for r in report["layers"]] == list(range(8))
    g = report["growth"]
    assert g["second_layer"] == report["layers"][1]["layer"]
    first, last = g["peak_second_mb"], g["peak_last_mb"]
    assert g["peak"] == pytest.approx((last - first) / first)
    assert g["peak_last_mb"] == report["layers"][-1]["peak_mb"]
    text = (tmp_path / "memory_mini.md").read_text()
    assert text.count("| quantize |") == 8 and "| final |" in text and "Growth from" in text
    assert (tmp_path / "memory_mini.png").stat().st_size > 1000


def test_batchnorm_time_script_compares_eager_and_jitted_reestimation(tmp_path):
    """benchmarks/batchnorm_time.py --mini under JAX: both paths timed on every call, and
    they give the same moving statistics."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batchnorm_time.py"), "--mini", "--calls", "3"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "batchnorm_time_mini.json").read_text())
    (row,) = report["rows"]
    assert row["network"] == "mini" and row["batchnorms"] >= 2
    for path in ("eager", "jit"):
        seconds = row[path]["seconds"]
        assert len(seconds) == 3 and min(seconds) > 0
        assert row[path]["later"] == pytest.approx(np.mean(seconds[1:]))
    assert row["max_relative_difference"] < 1e-4
    text = (tmp_path / "batchnorm_time_mini.md").read_text()
    assert "| mini |" in text and "jax" in text
    assert (tmp_path / "batchnorm_time_mini.png").stat().st_size > 1000


def test_converge_keeps_other_learning_rates_points(tmp_path):
    """A run at a new learning rate starts its own points and keeps the old ones below them;
    returning to a learning rate resumes its points."""
    import converge
    import harness

    settings = harness.PRESETS["lowdata_mini"]
    record = {"accuracy": 0.9, "val_accuracy": 0.91, "seconds": 5.0}
    at = {lr: dict(settings, baseline_lr={"reactnet": lr}) for lr in (1e-3, 2e-3)}
    first = [{"epochs": 4, "seconds": 1.0, "val_accuracy": 0.5, "command": "a"}]
    converge.write("lowdata_mini", str(tmp_path), "reactnet", 0, record, at[1e-3], first)

    points, earlier = converge.previous_points(
        str(tmp_path), "lowdata_mini", "reactnet", 0, at[2e-3], record
    )
    assert points == [] and earlier == [{"learning_rate": 1e-3, "points": first}]
    second = [{"epochs": 8, "seconds": 2.0, "val_accuracy": 0.6, "command": "b"}]
    converge.write("lowdata_mini", str(tmp_path), "reactnet", 0, record, at[2e-3], second, earlier)
    text = (tmp_path / "converge_lowdata_mini.md").read_text()
    assert text.index("## Learning rate 0.002") < text.index("## Learning rate 0.001")
    assert "--epochs 8 --learning-rate 0.002`" in text
    assert "| 8 | 60.00% | 2 |" in text and "| 4 | 50.00% | 1 |" in text

    points, earlier = converge.previous_points(
        str(tmp_path), "lowdata_mini", "reactnet", 0, at[1e-3], record
    )
    assert points == first and earlier == [{"learning_rate": 2e-3, "points": second}]
    other_teacher = dict(record, seconds=6.0)
    assert converge.previous_points(
        str(tmp_path), "lowdata_mini", "reactnet", 0, at[1e-3], other_teacher
    ) == ([], [])


def test_sweep_on_a_premise_preset_merges_runs_with_their_epochs(tmp_path):
    """On a preset with a cached teacher a later sweep keeps the earlier rows, even at
    another 1x, since every row records the epochs it trained."""
    import sweep

    first = sweep.run("lowdata_mini", str(tmp_path), ["naive_ste_lr0.002"])
    assert first["rows"]["naive_ste_lr0.002"]["epochs"] == 4
    second = sweep.run("lowdata_mini", str(tmp_path), ["reactnet_lr0.002"], epochs=6)
    rows = second["rows"]
    assert list(rows) == ["full_precision", "naive_ste_lr0.002", "reactnet_lr0.002"]
    assert rows["naive_ste_lr0.002"] == first["rows"]["naive_ste_lr0.002"]
    assert rows["reactnet_lr0.002"]["epochs"] == 6
    text = (tmp_path / "sweep_lowdata_mini.md").read_text()
    assert "| naive_ste_lr0.002 | 1x | 4 |" in text and "| reactnet_lr0.002 | 1x | 6 |" in text
    # The preset's BiTAT settings belong to paper_table.py's rows: a sweep made before they
    # changed is kept; a change of the data or network starts a new sweep.
    path = tmp_path / "sweep_lowdata_mini.json"
    saved = json.loads(path.read_text())
    saved["settings"]["bitat_overrides"] = {"final_epochs": 99}
    path.write_text(json.dumps(saved))
    settings = sweep.settings_of("lowdata_mini")
    assert set(sweep.previous_rows(str(tmp_path), "lowdata_mini", settings)) == set(rows)
    saved["settings"]["batch"] = 8
    path.write_text(json.dumps(saved))
    assert sweep.previous_rows(str(tmp_path), "lowdata_mini", settings) == {}


def test_transform_goals_compare_only_rows_with_the_same_settings():
    """The transform goals pair `bitat_aggregated` with `bitat_none` only on seeds where
    both ran with the same BiTAT settings apart from the transform."""
    import paper_table

    def row(acc, transform, lr):
        config = {"transform": transform, "learning_rate": lr}
        return {"accuracy": acc, "seconds": 1.0, "config": config}

    def plain(acc):
        return {0: {"accuracy": acc, "seconds": 1.0}, 1: {"accuracy": acc, "seconds": 1.0}}

    def report(none_lr):
        per_row = {
            "full_precision": plain(0.95),
            "naive_ste": plain(0.90),
            "bitat_aggregated": {
                0: row(0.91, "aggregated", 4e-3),
                1: row(0.92, "aggregated", 4e-3),
            },
            "bitat_none": {0: row(0.90, "none", none_lr), 1: row(0.905, "none", none_lr)},
        }
        rows = paper_table.row_means(per_row)
        return paper_table.goals(rows, {"goal": dict(over_baseline=0.005, within_fp=0.01)})

    same = report(4e-3)
    assert same["transform_beats_none_by_0.3"] is True
    assert same["transform_aggregated_beats_none_by_0.3_beyond_its_standard_error"] is True
    other = report(8e-3)  # the ablation ran with other settings: nothing to compare
    assert "transform_beats_none_by_0.3" not in other
    assert not any(k.startswith("transform_aggregated") for k in other)


def test_reactnet_convergence_goal_compares_budgets_on_the_same_seeds():
    """ReActNet's 2x row on seed 1 alone against its 1x row on seeds 0-1: +0.2 on seed 1
    (converged), though +0.7 against the 1x mean, which seed 0 pulls down."""
    import paper_table

    seed = {"seconds": 1.0}
    per_row = {
        "full_precision": {0: {"accuracy": 0.95, **seed}, 1: {"accuracy": 0.95, **seed}},
        "reactnet": {0: {"accuracy": 0.90, **seed}, 1: {"accuracy": 0.91, **seed}},
        "reactnet_2x": {1: {"accuracy": 0.912, **seed}},
    }
    goals = paper_table.goals(paper_table.row_means(per_row))
    assert goals["reactnet_converged_at_1x (2x gains < 0.3 on the same seeds)"] is True
    per_row["reactnet_2x"][1]["accuracy"] = 0.914  # +0.4 on its seed: not converged
    goals = paper_table.goals(paper_table.row_means(per_row))
    assert goals["reactnet_converged_at_1x (2x gains < 0.3 on the same seeds)"] is False


def test_device_matrix_plans_teachers_first_and_every_row_after_its_teacher(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import device_matrix  # tools/device_matrix.py

    for name in ("lowdata_seed0.keras", "lowdata_seed0.json", "cpu_strong_seed1.keras"):
        (tmp_path / name).write_text("{}")
    staged = device_matrix.staged_teachers(str(tmp_path))
    assert staged == {("lowdata", 0)}  # a .keras without its .json is not a cached teacher
    jobs = device_matrix.plan(("cpu_strong", "lowdata"), (0, 1), (0.5,), staged)
    names = [name for name, _, _ in jobs]
    assert len(names) == len(set(names))
    teachers = [name for name, teacher, _ in jobs if teacher is None]
    assert teachers == ["cpu_strong-teacher0", "cpu_strong-teacher1", "lowdata-teacher1"]
    assert names[: len(teachers)] == teachers
    rows = [(teacher, argv) for _, teacher, argv in jobs if teacher is not None]
    # 1x: four main rows and the ablation per preset and seed; 0.5x: the main rows, seed 0
    assert len(rows) == 2 * 2 * 5 + 2 * 4
    for teacher, argv in rows:
        assert argv[argv.index("--preset") + 1] == teacher[0]
        assert int(argv[argv.index("--seed") + 1]) == teacher[1]
    assert all(a[a.index("--budgets") + 1] == "0.5" for _, a in rows[-8:])


def test_paper_command_names_the_seeds_and_main_rows_of_a_partial_run():
    import render

    def row(budget):
        return {"per_seed": {"0": {"budget": budget}}}

    rows = {"full_precision": row(None)}
    rows.update({f"{n}_0.25x": row(0.25) for n in ("naive_ste", "reactnet", "bitat_aggregated")})
    rates = {"naive_ste": 8e-3, "naive_ste_distill": 8e-3, "reactnet": 4e-3}
    report = {"preset": "cpu_strong", "rows": rows, "settings": {"seeds": 3, "baseline_lr": rates}}
    assert render.paper_command(report) == (
        "python benchmarks/paper_table.py --preset cpu_strong --seed 0 --budgets 0.25 "
        "--groups '' --rows naive_ste,reactnet,bitat"
    )
    report["settings"]["seeds"] = 1  # every seed of the preset and every main row: no flags
    rows["naive_ste_distill_0.25x"] = row(0.25)
    assert render.paper_command(report) == (
        "python benchmarks/paper_table.py --preset cpu_strong --budgets 0.25 --groups ''"
    )


@pytest.mark.parametrize("preset", ["cpu", "cpu_strong", "lowdata", "full"])
def test_committed_paper_tables_agree_with_their_seeds_and_render_as_committed(preset):
    """A committed report's row means are the means of its per-seed results, its goals are
    the current rules applied to them, its cached teachers are the seeds' FP rows, and its
    Markdown is what the report renders to (so hand edits and stale files show up)."""
    import harness
    import paper_table

    results = ROOT / "benchmarks" / "results"
    report = json.loads((results / f"{preset}.json").read_text())
    for name, row in report["rows"].items():
        seeds = row["per_seed"].values()
        accs = np.array([s["accuracy"] for s in seeds])
        assert ((accs > 0.1) & (accs <= 1.0)).all(), name  # above 10-class chance
        assert all(s["seconds"] > 0 for s in seeds), name
        assert row["seeds"] == len(accs), name
        np.testing.assert_allclose(row["accuracy_mean"], accs.mean(), err_msg=name)
        np.testing.assert_allclose(
            [row["accuracy_min"], row["accuracy_max"]], [accs.min(), accs.max()], err_msg=name
        )
    assert report["goals"] == paper_table.goals(report["rows"], report["settings"])
    # Presets with a teacher recipe cache one teacher per seed; the others train it inline.
    cached = report["settings"].get("teacher") is not None
    for seed, fp in report["rows"]["full_precision"]["per_seed"].items():
        path = Path(harness.teacher_path(results / "teachers", preset, seed) + ".json")
        assert path.exists() == cached, path
        if cached:
            teacher = json.loads(path.read_text())
            assert (teacher["accuracy"], teacher["val_accuracy"]) == (
                fp["accuracy"],
                fp["val_accuracy"],
            )
    assert paper_table.markdown(report) == (results / f"{preset}.md").read_text()


def test_cost_script_times_every_method_and_bitats_work_per_layer(tmp_path):
    """benchmarks/cost.py on its seconds-scale network: every method's seconds, accuracy
    and steps; BiTAT's step kinds and its per-layer work, which add up with the phases'
    own seconds to the run's wall time."""
    run_benchmark(
        "cost.py", "--network", "mini", "--images", 1000, "--fp-epochs", 10, "--out", tmp_path
    )
    report = json.loads((tmp_path / "cost_mini_tensorflow.json").read_text())
    rows = report["rows"]
    assert list(rows) == ["naive_ste", "reactnet", "bitat", "bitat_distill"]
    epochs = report["epochs"]
    steps_per_epoch = -(-report["images"] // report["batch"])
    for method, row in rows.items():
        assert row["steps"] == epochs * steps_per_epoch, method
        assert 0 < row["first_step_seconds"] < row["seconds"]
        assert 0 <= row["accuracy"] <= 1
    assert set(rows["reactnet"]["step_ms"]) == {"reactnet_step1", "reactnet_step2"}
    for method in ("bitat", "bitat_distill"):
        row = rows[method]
        assert set(row["step_ms"]) == {
            "quantize_first",
            "quantize_middle",
            "quantize_last",
            "final",
        }
        assert row["traces"] == report["layers"] + 1  # one per phase
        kinds = row["seconds_by_kind"]
        steps = sum(kinds.get(k, 0.0) for k in ("quantize", "final"))
        assert steps + kinds["overhead"] - kinds["compile"] == pytest.approx(row["seconds"])
        work = row["per_layer"]
        assert work["total_steps"] > 0 and work["seconds"]["compile"] > 0
        # the teacher's logits (once per run) apart: per-layer work and that pass add up
        # to the overhead outside tracing
        assert (work["teacher_seconds"] > 0) == (method == "bitat_distill")
        layers = report["layers"]
        assert work["total_seconds"] * layers + work["teacher_seconds"] == pytest.approx(
            kinds["overhead"] - kinds["compile"]
        )
    assert set(report["targets"]) >= {"bitat_over_naive_ste", "bitat_distill_over_reactnet"}
    text = (tmp_path / "cost_mini_tensorflow.md").read_text()
    assert "| bitat |" in text and "per layer" in text
    assert (tmp_path / "cost_mini_tensorflow.png").stat().st_size > 1000


def test_multiply_adds_are_kernel_size_times_output_positions():
    """frozen_prefix.multiply_adds and shares_from against the count by hand: a 3x3 conv
    1 -> 4 channels on 8x8 ('same'), a strided 1x1 conv 4 -> 6 (4x4 outputs), a dense 6 -> 3;
    the only tensor below the 1x1 conv that cuts the network in two is the 3x3 conv's."""
    import keras
    from frozen_prefix import cuts, multiply_adds, shares_from

    x = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    b = keras.layers.Conv2D(6, 1, strides=2, name="b")(a)
    d = keras.layers.Dense(3, name="d")(keras.layers.GlobalAveragePooling2D(name="g")(b))
    model = keras.Model(x, d)
    assert multiply_adds(model) == [("a", 3 * 3 * 4 * 64), ("b", 4 * 6 * 16), ("d", 6 * 3)]
    total = 3 * 3 * 4 * 64 + 4 * 6 * 16 + 6 * 3
    assert shares_from(multiply_adds(model)) == pytest.approx(
        {"a": 1.0, "b": (384 + 18) / total, "d": 18 / total}
    )
    assert cuts(model, ["b", "d"]) == ["a", "g"]
    # a shortcut around "b": "a" no longer cuts the network below "d" alone, "add" does
    skip = keras.layers.Add(name="add")([keras.layers.Conv2D(4, 1, name="c")(a), a])
    model = keras.Model(x, keras.layers.Dense(3, name="e")(keras.layers.Flatten(name="f")(skip)))
    assert cuts(model, ["c", "e"]) == ["a", "f"]


def test_frozen_prefix_script_times_steps_above_each_cut(tmp_path):
    """benchmarks/frozen_prefix.py on the seconds-scale network: a cut below each binarized
    layer with both step times, the stored outputs' size and the multiply-add shares."""
    run_benchmark(
        "frozen_prefix.py", "--network", "mini", "--images", 256, "--epochs", 1,
        "--out", tmp_path,
    )  # fmt: skip
    report = json.loads((tmp_path / "frozen_prefix_mini.json").read_text())
    shares = report["shares_from_layer"]
    assert list(shares)[0] == "block1_conv3x3" and list(shares.values()) == sorted(
        shares.values(), reverse=True
    )
    assert report["cuts"] and all(
        c["whole_ms"] > 0 and c["above_ms"] > 0 and 0 <= c["share_above"] <= 1
        for c in report["cuts"].values()
    )
    text = (tmp_path / "frozen_prefix_mini.md").read_text()
    assert "| stem_bn |" in text and "multiply-adds per image" in text


@pytest.mark.slow
def test_setup_time_script_times_keras_and_bitat_to_the_first_step(tmp_path):
    """benchmarks/setup_time.py (ResNet50, three fresh processes): every variant's seconds,
    BiTAT's split at its first fit, the ratio the report states."""
    run_benchmark("setup_time.py", "--out", tmp_path)
    report = json.loads((tmp_path / "setup_time.json").read_text())
    v = report["variants"]
    assert set(v) == {"keras", "bitat", "bitat_transform_none"}
    for name in ("bitat", "bitat_transform_none"):
        assert v[name]["before_fit"] + v[name]["first_step"] == pytest.approx(v[name]["seconds"])
    assert report["bitat_over_keras"] == pytest.approx(
        v["bitat"]["seconds"] / v["keras"]["seconds"]
    )
    assert "BiTAT / Keras" in (tmp_path / "setup_time.md").read_text()


def test_cost_script_on_augmented_batches_runs_the_teacher_in_every_step(tmp_path):
    """``cost.py --augment``: every method trains on augmented batches (new images every
    epoch), so BiTAT with the teacher computes no logits up front; the report says how the
    batches were augmented and goes to its own file."""
    run_benchmark(
        "cost.py", "--network", "mini", "--images", 500, "--fp-epochs", 2,
        "--methods", "naive_ste,bitat_distill", "--augment", "--out", tmp_path,
    )  # fmt: skip
    report = json.loads((tmp_path / "cost_mini_tensorflow_augmented.json").read_text())
    assert report["augment"] == {"shift": 2, "flip": True}
    rows = report["rows"]
    assert list(rows) == ["naive_ste", "bitat_distill"]
    steps_per_epoch = -(-report["images"] // report["batch"])
    for row in rows.values():
        assert row["steps"] == report["epochs"] * steps_per_epoch
    assert rows["bitat_distill"]["per_layer"]["teacher_seconds"] == 0.0
    text = (tmp_path / "cost_mini_tensorflow_augmented.md").read_text()
    assert "augmented in every epoch (shifts up to 2 pixels and left-right flips" in text
    assert not (tmp_path / "cost_mini_tensorflow.json").exists()
