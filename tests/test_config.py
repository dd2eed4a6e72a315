"""BiTATConfig.for_data against the validation sweeps recorded in benchmarks/results."""

import json
import os

import pytest

import bitat_keras as bk

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")


def sweep(preset):
    with open(os.path.join(RESULTS, f"sweep_{preset}.json")) as f:
        return json.load(f)


def labels_only(rows):
    """The best validation accuracy of naive STE on the labels (no teacher)."""
    return max(
        row["val_accuracy"]
        for name, row in rows.items()
        if name.startswith("naive_ste_lr") and "val_accuracy" in row
    )


@pytest.mark.parametrize("preset", ["cpu_strong", "lowdata"])
def test_for_data_picks_the_sweeps_best_setting_with_a_strong_teacher(preset):
    report = sweep(preset)
    settings, rows = report["settings"], report["rows"]
    labelled = settings.get("subset") or settings["train"] - settings["val"]
    config = bk.BiTATConfig.for_data(
        rows["full_precision"]["val_accuracy"], labels_only(rows), labelled
    )
    best_name, best = report["best"]
    assert best == settings["bitat_overrides"]
    for field, value in best.items():
        assert getattr(config, field) == value, (preset, field)
    # and the best BiTAT row is the best BiTAT row of the sweep at its budget
    budget = rows[best_name]["budget"]
    others = [
        row["val_accuracy"]
        for name, row in rows.items()
        if name.startswith("defaults/") and row.get("budget") == budget
    ]
    assert rows[best_name]["val_accuracy"] == max(others)


def test_for_data_keeps_the_defaults_when_the_labels_beat_the_teacher():
    # cpu: a modest teacher that the binary network outgrows on the labels
    run = next(r for r in sweep("cpu")["runs"] if "agg/q+long-final/lr8e-3/2x/task" in r["rows"])
    teacher = run["rows"]["full_precision"]["val_accuracy"]
    same_teacher = [
        r for r in sweep("cpu")["runs"] if r["rows"]["full_precision"]["val_accuracy"] == teacher
    ]
    rows = {name: row for r in same_teacher for name, row in r["rows"].items()}
    config = bk.BiTATConfig.for_data(teacher, labels_only(rows), 20000)
    assert config == bk.BiTATConfig()
    # the task loss (the defaults) beat the teacher's distribution at the same budget
    assert (
        rows["agg/q+long-final/lr8e-3/2x/task"]["val_accuracy"]
        > (rows["agg/q+long-final/lr8e-3/2x"]["val_accuracy"])
    )


def test_for_data_overrides_and_errors():
    config = bk.BiTATConfig.for_data(0.95, 0.80, 1000, seed=3, final_epochs=4)
    assert (config.distillation, config.learning_rate, config.seed) == ("all", 4e-3, 3)
    assert config.final_epochs == 4
    with pytest.raises(ValueError, match=r"teacher_accuracy.*Received: 93"):
        bk.BiTATConfig.for_data(93, 0.9, 1000)
    with pytest.raises(ValueError, match=r"labelled_images.*Received: 0"):
        bk.BiTATConfig.for_data(0.9, 0.9, 0)


def test_baselines_are_first_class_with_the_sweeps_learning_rates():
    import inspect

    assert bk.naive_ste is bk.baselines.naive_ste
    assert bk.reactnet_two_step is bk.baselines.reactnet_two_step
    defaults = {
        name: inspect.signature(fn).parameters["learning_rate"].default
        for name, fn in (("naive_ste", bk.naive_ste), ("reactnet", bk.reactnet_two_step))
    }
    chosen = {p: sweep(p)["settings"]["baseline_lr"] for p in ("cpu_strong", "lowdata")}
    assert defaults["reactnet"] == chosen["cpu_strong"]["reactnet"] == 4e-3
    assert defaults["naive_ste"] == chosen["cpu_strong"]["naive_ste"] == 8e-3
