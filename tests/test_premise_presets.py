"""The premise presets (a strong teacher; little labelled data) in their mini forms, one
test each, so that the scripts that run them cannot rot."""

import json

import harness
import numpy as np
import paper_table
import pytest


def test_lowdata_mini(tmp_path, eager):
    """The teacher trained once (augmentation, AdamW, cosine decay) and cached; every binary
    row on the labelled subset, at fractional budgets; naive STE with and without
    distillation; BiTAT's transform ablation; BiTAT and ReActNet on the larger subset; the
    premise goals; a second seed run on its own and merged in."""
    groups = ("ablation", "more_data", "more_data_reactnet")
    report = paper_table.run("lowdata_mini", str(tmp_path), groups=groups)
    rows = report["rows"]
    for method in ("naive_ste", "naive_ste_distill", "reactnet", "bitat_aggregated"):
        for suffix in ("", "_0.5x"):
            assert 0.0 <= rows[method + suffix]["accuracy_mean"] <= 1.0
    # The subset: 96 images in batches of 32 -> 3 steps per epoch; 1x is 4 epochs.
    assert rows["reactnet"]["steps"] == 12 and rows["naive_ste_distill_0.5x"]["steps"] == 6
    # The larger subset in the 1x row's time: fewer epochs, the same steps (give or take
    # the rounding of each of BiTAT's phases to whole steps).
    more, main = rows["bitat_160_images"]["steps"], rows["bitat_aggregated"]["steps"]
    assert abs(more - main) <= 4, (more, main)
    # ReActNet there too: 160 images -> 5 steps per epoch, 4 * 96 / 160 -> 2 epochs.
    assert rows["reactnet_160_images"]["steps"] == 10
    assert "reactnet_160_images" not in report["curves"]  # not a point of ReActNet's curve
    assert rows["bitat_none"]["v_parameters"]["used"] == 0
    # The preset's BiTAT settings reach the main row and both of its variants.
    for row in ("bitat_aggregated", "bitat_none", "bitat_160_images"):
        config = rows[row]["per_seed"]["0"]["config"]
        assert (
            config["distillation"] == "all" and config["final_epochs"] > config["epochs_per_layer"]
        )
    assert rows["bitat_none"]["per_seed"]["0"]["config"]["transform"] == "none"
    assert (
        report["settings"]["bitat_overrides"] == harness.PRESETS["lowdata_mini"]["bitat_overrides"]
    )
    teacher = json.loads((tmp_path / "teachers" / "lowdata_mini_seed0.json").read_text())
    fp = rows["full_precision"]["per_seed"]["0"]
    assert fp["recipe"] == harness.PRESETS["lowdata_mini"]["teacher"]
    assert fp["seconds"] == teacher["seconds"] and fp["accuracy"] == teacher["accuracy"]
    goals = report["goals"]
    assert "bitat_at_0.5x_or_less_at_least_reactnet_1x" in goals
    assert "teacher_at_least_1.0_above_the_best_binary_row" in goals
    assert "| naive_ste_distill_0.5x |" in (tmp_path / "lowdata_mini.md").read_text()
    assert (tmp_path / "lowdata_mini_accuracy_vs_cost.png").stat().st_size > 1000
    # A second seed reuses nothing of seed 0's teacher; seed 0 again reuses its cache.
    again = paper_table.run("lowdata_mini", str(tmp_path), seeds=[0], groups=(), only=())
    assert again["rows"]["full_precision"]["per_seed"]["0"]["seconds"] == teacher["seconds"]
    # A seed run on its own (--out) with the shared teachers (--teachers), then merged in.
    side = tmp_path / "seed1"
    one = paper_table.run(
        "lowdata_mini", str(side), seeds=[1], groups=(), only=("reactnet",), budgets=(1,),
        teachers=str(tmp_path / "teachers"),
    )  # fmt: skip
    assert (tmp_path / "teachers" / "lowdata_mini_seed1.keras").is_file()
    assert not (side / "teachers").exists()
    merged = paper_table.merge("lowdata_mini", str(tmp_path), [str(side)])
    per_seed = merged["rows"]["reactnet"]["per_seed"]
    assert per_seed["1"] == one["rows"]["reactnet"]["per_seed"]["1"]
    assert per_seed["0"] == again["rows"]["reactnet"]["per_seed"]["0"]
    mean = np.mean([per_seed[s]["accuracy"] for s in ("0", "1")])
    assert merged["rows"]["reactnet"]["accuracy_mean"] == pytest.approx(mean)
    assert merged["rows"]["bitat_none"]["seeds"] == 1
    assert {s for _, s, *_ in merged["curves"]["reactnet"]} == {0, 1}
    assert merged["total_seconds"] == again["total_seconds"] + one["total_seconds"]
    assert any(n.startswith("seeds [1] merged from") for n in merged["notes"])  # JSON only
    assert "merged from" not in (tmp_path / "lowdata_mini.md").read_text()
    assert json.loads((tmp_path / "lowdata_mini.json").read_text())["rows"] == merged["rows"]
    # A report made with other preset settings is refused, naming both.
    other = json.loads((side / "lowdata_mini.json").read_text())
    other["settings"]["batch"] = 16
    (side / "lowdata_mini.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other preset settings"):
        paper_table.merge("lowdata_mini", str(tmp_path), [str(side)])


def test_cpu_strong_mini(tmp_path, eager, monkeypatch):
    """The strong teacher trained on every training image (not a subset) and cached; the
    binary rows on the same images, on the teacher's augmented batches; a run stopped
    early keeps its rows and draws its figure."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.Bench, "bitat", interrupted)  # after ReActNet's row
    with pytest.raises(KeyboardInterrupt):
        paper_table.run(
            "cpu_strong_mini", str(tmp_path), groups=(), only=("reactnet", "bitat"), budgets=(1,)
        )
    strong = json.loads((tmp_path / "cpu_strong_mini.json").read_text())
    assert (tmp_path / "cpu_strong_mini_accuracy_vs_cost.png").stat().st_size > 1000
    # 224 images in batches of 32 -> 7 steps per epoch; 1x is 3 epochs.
    assert strong["train_size"] == 224 and strong["rows"]["reactnet"]["steps"] == 3 * 7
    assert (tmp_path / "teachers" / "cpu_strong_mini_seed0.keras").is_file()
    fp = strong["rows"]["full_precision"]["per_seed"]["0"]
    assert fp["recipe"] == harness.PRESETS["cpu_strong_mini"]["teacher"]
    assert "bitat_aggregated" not in strong["rows"]
