"""Every ``results/<name>.md`` from its ``results/<name>.json``: one renderer per kind of
report, chosen by the file name. The benchmark scripts call ``write_markdown`` after writing
their JSON; ``python benchmarks/report.py --write`` regenerates every report and
``--check`` lists the ones that differ (``tests/test_reports.py`` runs the same check).

The Markdown gives the tables, the command that reproduces them and what a reader needs to
read them; where and when a number was measured (the machine, the run) stays in the JSON.
This module imports neither Keras nor the library, so rendering takes milliseconds.
"""

import glob
import json
import math
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


# ---------------------------------------------------------------------------------------
# Shared helpers


def mean_and_error(values):
    """Mean and standard error of the mean (None with one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def paired_seeds(rows, name, other):
    """The seeds on which rows ``name`` and ``other`` both ran with the same BiTAT settings
    but the transform (rows without a recorded config pair on every shared seed)."""
    a, b = rows[name]["per_seed"], rows[other]["per_seed"]

    def settings(row):
        return {k: v for k, v in (row.get("config") or {}).items() if k != "transform"}

    return [s for s in a if s in b and settings(a[s]) == settings(b[s])]


def command(text):
    """A recorded command as a reader reruns it: without ``--out DIR`` (the results go to
    ``benchmarks/results/`` by default), trailing blanks or a trailing remark in brackets."""
    text = re.sub(r"\s*\(.*\)\s*$", "", text)
    text = re.sub(r"\s--out\s+\S+", "", text)
    return text.strip()


def signed(points):
    """``+0.12`` / ``-0.12`` points (``0.00`` for what rounds to zero, without a sign)."""
    text = f"{points:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def _preset_command(report, script):
    """``python benchmarks/<script> --preset <preset>``, under the report's backend."""
    backend = report.get("backend", "tensorflow")
    prefix = "" if backend == "tensorflow" else f"KERAS_BACKEND={backend} "
    return f"{prefix}python benchmarks/{script} --preset {report['preset']}"


def goals_section(goals):
    lines = [f"- {k}: {'holds' if v else 'MISSED'}" for k, v in goals.items()]
    return ["", "## Goals", "", *(lines or ["- none measurable yet (they compare rows at 1x)"])]


def _lines(lines):
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# The paper table (paper_table.py: results/<preset>.md)

METHOD_ORDER = ("full_precision", "naive_ste", "naive_ste_distill", "reactnet", "bitat_aggregated")
OTHER_ORDER = ("bitat_paper", "bitat_none", "bitat_intra", "bitat_cross")
BASELINE_ROWS = ("naive_ste", "naive_ste_distill", "reactnet")
BUDGET_SUFFIXES = ("_0.25x", "_0.5x", "", "_2x", "_4x")
MAIN_ROWS = (*BASELINE_ROWS, "bitat")  # the rows paper_table.py --rows picks from


def row_order(names):
    """Rows by method, each method's budgets ascending; then the ablations; then the rest."""

    def key(name):
        for i, method in enumerate(METHOD_ORDER):
            rest = name[len(method) :]
            if name.startswith(method) and (not rest or rest[1:-1].replace(".", "").isdigit()):
                return (i, float(rest[1:-1]) if rest else 1.0, name)
        if name in OTHER_ORDER:
            return (len(METHOD_ORDER), OTHER_ORDER.index(name), name)
        return (len(METHOD_ORDER) + 1, 0, name)

    return sorted(names, key=key)


def paper_command(report):
    """The ``paper_table.py`` command that runs every row of the report: its preset, its
    seeds (when not all of the preset's), the budgets and the groups of rows it holds, and
    its main rows (when not all of them ran)."""
    rows = report["rows"]
    budgets = sorted(
        {
            v["budget"]
            for name, row in rows.items()
            if name != "full_precision"
            for v in row["per_seed"].values()
            if v.get("budget") is not None
        }
    )
    groups = []
    if 4 in budgets:
        groups.append("budget4")
    if any(n in rows for n in ("bitat_paper", "bitat_intra", "bitat_cross")):
        groups.append("extra")
    elif "bitat_none" in rows:
        groups.append("ablation")
    if report.get("deployment"):
        groups.append("deploy")
    if any(re.fullmatch(r"bitat_\d+_images", n) for n in rows):
        groups.append("more_data")
    for name in BASELINE_ROWS:
        if any(re.fullmatch(rf"{name}_\d+_images", n) for n in rows):
            groups.append(f"more_data_{name}")
    text = _preset_command(report, "paper_table.py")
    seeds = _seeds(rows)
    if len(seeds) < report["settings"].get("seeds", len(seeds)):  # some seeds only
        text += "".join(f" --seed {s}" for s in seeds)
    if budgets:
        text += " --budgets " + ",".join(f"{b:g}" for b in budgets)
    text += " --groups " + (",".join(groups) or "''")
    rates = report["settings"].get("baseline_lr")
    if isinstance(rates, dict):  # the baselines the preset has a learning rate for
        wanted = [m for m in MAIN_ROWS if m in rates or m == "bitat"]
    else:  # one rate for every baseline (earlier reports)
        wanted = ["naive_ste", "reactnet", "bitat"]
    row = {"bitat": "bitat_aggregated"}
    ran = [m for m in wanted if any(f"{row.get(m, m)}{s}" in rows for s in BUDGET_SUFFIXES)]
    return text + (" --rows " + ",".join(ran) if ran != wanted else "")


def _learning_rates(row):
    rates = []
    for values in row["per_seed"].values():
        rate = values.get("learning_rate") or (values.get("config") or {}).get("learning_rate")
        if rate is not None and rate not in rates:
            rates.append(rate)
    return " / ".join(f"{r:g}" for r in rates) or "-"


def _seeds(rows):
    return sorted({int(s) for row in rows.values() for s in row["per_seed"]})


def _per_seed_table(rows, cell):
    seeds = _seeds(rows)
    lines = [
        "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for name in row_order(rows):
        per_seed = rows[name]["per_seed"]
        cells = [cell(per_seed[str(s)]) if str(s) in per_seed else "-" for s in seeds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _accuracy_cell(values):
    val = values.get("val_accuracy")
    text = f"{100 * values['accuracy']:.2f}"
    return text + (f" / {100 * val:.2f}" if val is not None else "")


def comparisons(rows):
    """``(name, other, transform)`` pairs of rows to difference on the seeds both ran:
    BiTAT against each baseline and the baselines against each other at each budget, each
    transform against none, each method's budget against the next smaller one, BiTAT at
    0.5x and 0.25x against ReActNet at 1x, the rows on more labelled images, and the
    teacher against the BiTAT rows (``transform``: pair only seeds with the same BiTAT
    settings but the transform)."""
    pairs = []
    for suffix in BUDGET_SUFFIXES:
        for base in BASELINE_ROWS:
            pairs.append((f"bitat_aggregated{suffix}", f"{base}{suffix}", False))
        for name, base in (
            ("reactnet", "naive_ste"),
            ("reactnet", "naive_ste_distill"),
            ("naive_ste_distill", "naive_ste"),
        ):
            pairs.append((f"{name}{suffix}", f"{base}{suffix}", False))
    for name in ("bitat_aggregated", "bitat_intra", "bitat_cross"):
        pairs.append((name, "bitat_none", True))
    for method in (*BASELINE_ROWS, "bitat_aggregated"):
        present = [s for s in BUDGET_SUFFIXES if f"{method}{s}" in rows]
        steps = zip(present, present[1:], strict=False)
        pairs += [(f"{method}{b}", f"{method}{a}", False) for a, b in steps]
    pairs += [(f"bitat_aggregated{s}", "reactnet", False) for s in ("_0.25x", "_0.5x")]
    for name in rows:
        size = re.fullmatch(r"bitat_(\d+)_images", name)
        if size:
            pairs.append((name, "bitat_aggregated", False))
            pairs += [(f"{b}_{size[1]}_images", name, False) for b in BASELINE_ROWS]
    teacher = [n for n in row_order(rows) if n.startswith("bitat_aggregated") or "_images" in n]
    pairs += [("full_precision", name, False) for name in teacher]
    return [p for p in pairs if p[0] in rows and p[1] in rows]


def differences_table(rows):
    """Per-seed differences (points) of the ``comparisons`` on the seeds both rows ran."""
    lines = [
        "| difference | seeds | test, per seed | test, mean ± standard error | validation, mean |",
        "|---|---|---|---|---|",
    ]
    for name, other, transform in comparisons(rows):
        a, b = rows[name]["per_seed"], rows[other]["per_seed"]
        seeds = paired_seeds(rows, name, other) if transform else [s for s in a if s in b]
        if not seeds:
            continue
        seeds = sorted(seeds, key=int)
        test = [100 * (a[s]["accuracy"] - b[s]["accuracy"]) for s in seeds]
        mean, error = mean_and_error(test)
        summary = signed(mean) + (f" ± {error:.2f}" if error is not None else "")
        vals = [
            100 * (a[s]["val_accuracy"] - b[s]["val_accuracy"])
            for s in seeds
            if a[s].get("val_accuracy") is not None and b[s].get("val_accuracy") is not None
        ]
        val = signed(sum(vals) / len(vals)) if len(vals) == len(seeds) else "-"
        lines.append(
            f"| {name} - {other} | {', '.join(seeds)} | "
            f"{', '.join(signed(d) for d in test)} | {summary} | {val} |"
        )
    return lines if len(lines) > 2 else []


def deployment_markdown(deploy):
    """The deployment lines (sizes, op count, parity, latency table) of
    ``harness.deployment()``."""
    lines = [
        f"- LCE flatbuffer {deploy['lce_size_bytes'] / 1024:.1f} KiB; float TFLite "
        f"{deploy['float_tflite_size_bytes'] / 1024:.1f} KiB; int8 TFLite "
        f"{deploy['int8_tflite_size_bytes'] / 1024:.1f} KiB (LCE/float = "
        f"{deploy['lce_over_float_size']:.3f})",
        f"- LceBconv2d ops: {deploy['lce_bconv2d_ops']} of {deploy['binary_layers']} binary "
        f"layers; parity max |Keras - LCE| = {deploy['parity_max_abs_diff']:.2e}",
    ]
    lat = deploy["latency_ms"]
    if "lce_1t" not in lat:  # reports made before every model ran through one call
        models = list(dict.fromkeys(k.rsplit("_", 1)[0] for k in lat))
        lines += [
            "- single-image latency, each model through its own interpreter call, median (ms):",
            "",
            "| model | 1 thread | 2 threads |",
            "|---|---|---|",
            *(f"| {m} | {lat[f'{m}_1t']:.3f} | {lat[f'{m}_2t']:.3f} |" for m in models),
            "",
            f"Best LCE option: {deploy['best_lce_option_1t']}; LCE/float latency at 1 thread: "
            f"{deploy['lce_over_float_latency_1t']:.2f}x.",
        ]
        return lines
    lines += [
        "- single-image latency, every model through the same interpreter call, best option "
        "of each, median (p90) ms:",
        "",
        "| model | 1 thread | 2 threads |",
        "|---|---|---|",
    ]
    for kind in ("float", "int8", "lce"):
        cells = [
            f"{lat[f'{kind}_{t}t']['median']:.3f} ({lat[f'{kind}_{t}t']['p90']:.3f}) "
            f"{lat[f'{kind}_{t}t']['option']}"
            for t in (1, 2)
        ]
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    lines += ["", f"LCE/float latency at 1 thread: {deploy['lce_over_float_latency_1t']:.2f}x."]
    return lines


def paper_table(report):
    settings, rows = report["settings"], report["rows"]
    subset = (
        f" (the binary rows train on {settings['subset']:,} of the training images, "
        "class-balanced, drawn per seed)"
        if settings.get("subset")
        else ""
    )
    lines = [
        f"# Paper table, preset `{report['preset']}`",
        "",
        f"Command: `{paper_command(report)}`  ",
        f"Backend: {report['backend']} (Keras {report['keras']}); data: "
        f"{settings['dataset']} {report['train_size']} train / {report['val_size']} "
        f"validation (held out of the training images) / {report['test_size']} test{subset}.",
        "",
        "Test accuracy (validation accuracy chose every setting). Budgets: 1x is ReActNet's "
        "time at its converged epoch count; `train s` is the measured wall time; `lr` the "
        "learning rate of each seed's row. Q_orig and Q_ours (Eq. 2, Eq. 6 without l1) "
        "compare the binary kernels, at the scale the layers use, with the teacher's; `best "
        "scale` gives each output channel its least-squares scale, so only the signs count; "
        "`signs kept`: the share of the teacher's weight signs the binary kernels keep "
        "(`bk.analysis.quantization_errors`).",
        "",
        "| row | test acc. mean (min-max) | seeds | train s | steps | lr | V used / full "
        "| Q_orig | Q_ours | Q_orig / Q_ours, best scale | signs kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def q(x):
        return "-" if x is None else f"{x:.3g}"

    for name in row_order(rows):
        row = rows[name]
        v = row["v_parameters"]
        vtxt = f"{v['used']:,} / {v['full']:,} ({v['ratio']:.2%})" if v else "-"
        kept = row.get("signs_kept_mean")
        kept = "-" if kept is None else f"{kept:.1%}"
        lines.append(
            f"| {name} | {row['accuracy_mean']:.2%} ({row['accuracy_min']:.2%}-"
            f"{row['accuracy_max']:.2%}) | {row['seeds']} | {row['seconds_mean']:.0f} | "
            f"{row['steps']} | {_learning_rates(row)} | {vtxt} | {q(row['q_orig_mean'])} | "
            f"{q(row['q_ours_mean'])} | {q(row.get('q_orig_fit_mean'))} / "
            f"{q(row.get('q_ours_fit_mean'))} | {kept} |"
        )
    lines += ["", "## Test / validation accuracy per seed (%)", ""]
    lines += _per_seed_table(rows, _accuracy_cell)
    lines += ["", "## Seconds per seed", ""]
    lines += _per_seed_table(rows, lambda values: f"{values['seconds']:.0f} s")
    differences = differences_table(rows)
    if differences:
        lines += [
            "",
            "## Differences on the seeds both rows ran (points)",
            "",
            "`a - b`: row a's accuracy minus row b's on each seed both rows ran (the "
            "transforms against `bitat_none`: only seeds whose BiTAT settings differ in the "
            "transform alone).",
            "",
            *differences,
        ]
    agg = rows.get("bitat_aggregated", {}).get("per_seed", {}).get("0", {}).get("phases")
    if agg:
        lines += ["", "## BiTAT seconds by kind of work (1x, seed 0)", ""]
        lines.append(", ".join(f"{k} {v:.2f}" for k, v in agg.items()))
    if report.get("deployment"):
        lines += ["", "## Deployment (seed 0; FP model vs BiTAT model)", ""]
        lines += deployment_markdown(report["deployment"])
    return _lines(lines + goals_section(report["goals"]))


# ---------------------------------------------------------------------------------------
# deployment.py: results/deployment_<preset>.md


def deployment(report):
    return _lines(
        [
            f"# Deployment, preset `{report['preset']}` network ({report['params']:,} params, "
            f"input {tuple(report['input_shape'])}), untrained weights",
            "",
            f"Command: `{command(report['command'])}`; backend {report['backend']}.",
            "",
            *deployment_markdown(report["deployment"]),
            *goals_section(report["goals"]),
        ]
    )


# ---------------------------------------------------------------------------------------
# cost.py: results/cost_<network>_<backend>[_...].md

PER_LAYER_KINDS = (
    "thresholds",
    "statistics",
    "grouping",
    "pca",
    "batchnorm",
    "evaluate",
    "diagnostics",
    "compile",
    "other",
)


def _augmentation(augment):
    """How the binary methods' batches were augmented (nothing when they were not)."""
    if not augment:
        return ""
    flip = " and left-right flips" if augment.get("flip") else ""
    return (
        f", augmented in every epoch (shifts up to {augment['shift']} pixels{flip}: the "
        "teacher runs in every distilling step)"
    )


def cost(report):
    rows = report["rows"]
    lines = [
        f"# Cost at equal epochs: `{report['network']}` network, {report['images']:,} images, "
        f"{report['backend']}",
        "",
        f"Command: `{command(report['command'])}`",
        "",
        f"Versions: {report['versions']}. {report['images']} training images"
        f"{_augmentation(report.get('augment'))}, {report['epochs']} "
        f"epochs each (BiTAT's default schedule on {report['layers']} layers), batch "
        f"{report['batch']}; full precision: {100 * report['fp']['accuracy']:.2f} % "
        f"({report['fp']['step_ms']:.1f} ms per step).",
        "",
        "| method | seconds | / naive STE | test accuracy | first step (s) | ms per step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = rows.get("naive_ste", {}).get("seconds")
    for method, row in rows.items():
        ratio = f"{row['seconds'] / base:.2f}x" if base else "-"
        steps = ", ".join(f"{k} {v:.0f}" for k, v in row["step_ms"].items())
        lines.append(
            f"| {method} | {row['seconds']:.1f} | {ratio} | {100 * row['accuracy']:.2f} % | "
            f"{row['first_step_seconds']:.1f} | {steps} |"
        )
    lines += [
        "",
        "BiTAT's work outside its optimizer steps, per layer (the teacher's logits, once per "
        "run, apart):",
        "",
    ]
    lines += [
        "| method | "
        + " | ".join(PER_LAYER_KINDS)
        + " | work s (all but compile) | work in steps | compile in steps | teacher pass s "
        "(steps), once per run |",
        "| --- " * (len(PER_LAYER_KINDS) + 5) + "|",
    ]
    for method in ("bitat", "bitat_distill"):
        if method not in rows:
            continue
        work = rows[method]["per_layer"]
        cells = " | ".join(f"{work['seconds'].get(k, 0.0):.2f}" for k in PER_LAYER_KINDS)
        lines.append(
            f"| {method} | {cells} | {work['total_seconds']:.2f} | {work['total_steps']:.1f} | "
            f"{work['compile_steps']:.1f} | {work['teacher_seconds']:.1f} "
            f"({work['teacher_steps']:.0f}) |"
        )
    lines += ["", "| target | value | goal | met |", "| --- | --- | --- | --- |"]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {t['value']:.3f} | <= {t['target']} | {t['met']} |")
    return _lines(lines)


def frozen_prefix(report):
    shares = report["shares_from_layer"]
    lines = [
        f"# What a phase's frozen layers cost: `{report['network']}` network",
        "",
        f"Command: `{command(report['command'])}`",
        "",
        f"Versions: {report['versions']}. {report['multiply_adds']:,} multiply-adds per "
        "image (convolutions and dense layers: kernel size times output "
        "positions).",
        "",
        "Share of them from each binarized layer up (the layers a quantize phase trains, "
        f"whose backward pass it runs): {', '.join(f'{v:.2f}' for v in shares.values())} "
        f"(mean {sum(shares.values()) / len(shares):.2f}; layers {', '.join(shares)}).",
        "",
        f"Training steps at the last tensor below each binarized layer that cuts the network in "
        f"two, full precision, batch "
        f"{report['batch']}, medians of {report['epochs']} passes over {report['images']:,} "
        "images: the whole network with the layers up to the cut frozen (run in every step, "
        "BatchNorm in training mode) against the layers above alone on their stored outputs.",
        "",
        "| cut | share above | ms, frozen layers run | ms, stored inputs | saved | store pass s "
        "| KiB per image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in report["cuts"].items():
        saved = 1 - c["above_ms"] / c["whole_ms"]
        lines.append(
            f"| {name} | {c['share_above']:.2f} | {c['whole_ms']:.0f} | {c['above_ms']:.0f} | "
            f"{100 * saved:.0f} % | {c['store_seconds']:.2f} | {c['stored_kib_per_image']:.0f} |"
        )
    return _lines(lines)


def setup_time(report):
    v = report["variants"]
    lines = [
        "# Seconds to the first optimizer step: ResNet50 at 32x32",
        "",
        f"Command: `{command(report['command'])}`",
        "",
        f"Versions: {report['versions']}. `keras.applications.ResNet50(weights=None)`, 52 "
        "binarized convs in 16 blocks, batch 32; each variant in a fresh process.",
        "",
        "| variant | seconds to the first step | before the first `fit` | first `fit` to its "
        "first step |",
        "| --- | --- | --- | --- |",
    ]
    labels = {
        "keras": "Keras' own `compile` + `fit`",
        "bitat": "`progressive_fit`, `BiTATConfig()`",
        "bitat_transform_none": '`progressive_fit`, `transform="none"`',
    }
    for name, row in v.items():
        before = f"{row['before_fit']:.1f}" if "before_fit" in row else "-"
        first = f"{row['first_step']:.1f}" if "first_step" in row else "-"
        lines.append(f"| {labels[name]} | {row['seconds']:.1f} | {before} | {first} |")
    lines += ["", f"BiTAT / Keras: {report['bitat_over_keras']:.2f}x (target <= 1.5x)."]
    return _lines(lines)


# ---------------------------------------------------------------------------------------
# converge.py: results/converge_<preset>.md

GAIN = 0.003  # a doubling that gains less than this on validation: converged


def converged(points):
    """The smallest epoch count whose doubling gains less than ``GAIN`` (None if none)."""
    by_epochs = {p["epochs"]: p["val_accuracy"] for p in points}
    for epochs in sorted(by_epochs):
        if 2 * epochs in by_epochs and by_epochs[2 * epochs] - by_epochs[epochs] < GAIN:
            return epochs
    return None


def converge(report):
    method, preset, seed = report["method"], report["preset"], report["seed"]
    teacher = report["teacher"]
    about = [
        f"{label} {teacher[key]:.2%}"
        for key, label in (("accuracy", "test"), ("val_accuracy", "validation"))
        if teacher.get(key) is not None
    ]
    epochs = f"{teacher['epochs']} epochs in " if teacher.get("epochs") else ""
    about.append(f"{epochs}{teacher['seconds']:.0f} s")
    lines = [
        f"# {method} convergence, preset `{preset}` (seed {seed})",
        "",
        f"Validation accuracy and wall time of `{method}` trained from the preset's teacher "
        f"({', '.join(about)}) at doubling epoch counts; backend {report['backend']}. "
        f"Converged: the smallest count whose doubling gains less than {100 * GAIN:g} points.",
    ]
    runs = [
        {"learning_rate": report["learning_rate"], "points": report["points"]},
        *report.get("earlier", []),
    ]
    for run in runs:
        points = sorted(run["points"], key=lambda p: p["epochs"])
        flags = f" --method {method}" if method != "reactnet" else ""
        flags += f" --seed {seed}" if seed != 0 else ""
        epochs = ",".join(str(p["epochs"]) for p in points)
        done = converged(points)
        lines += [
            "",
            f"## Learning rate {run['learning_rate']:g}",
            "",
            f"Command: `python benchmarks/converge.py --preset {preset} --epochs {epochs} "
            f"--learning-rate {run['learning_rate']:g}{flags}`",
            "",
            "| epochs | validation acc. | wall s |",
            "|---|---|---|",
            *(f"| {p['epochs']} | {p['val_accuracy']:.2%} | {p['seconds']:.0f} |" for p in points),
            "",
            f"Converged: {done} epochs."
            if done is not None
            else f"Not converged within {points[-1]['epochs']} epochs.",
        ]
    return _lines(lines)


# ---------------------------------------------------------------------------------------
# sweep.py: results/sweep_<preset>.md

# What a sweep report's settings may differ in between rows that still share a table (and
# between the runs that sweep.py merges into one report).
SWEEP_ROW_SETTINGS = ("baseline_lr", "budgets", "epochs", "bitat_overrides")
SWEEP_NAMES = (
    "Row names (each row's exact settings are in the JSON):",
    "",
    "- baselines: `<method>_lr<rate>[_<budget>x]`;",
    "- BiTAT: `<transform>[-lam<lam>[-<penalty gradient>]]/<schedule>[/lr<rate>][/<budget>x]"
    "[/task]`, where `agg` is the aggregated transform; the schedules are proportions of "
    "quantize per layer : fine-tune per layer : joint phase, scaled to the budget (`q+final` "
    "1 : 0.25 : 2, `q+long-final` 1 : 0 : 4, `q+longer-final` 1 : 0 : 8, `act+q+final` "
    "adds 1 activations-first); the loss is the teacher's distribution in every phase, or "
    "the task loss with `/task`; `paper`: `BiTATConfig.paper()`;",
    "- `defaults/<budget>x[/...]`: `BiTATConfig()` with the fields the rest of the name "
    'gives (`distill-all`: `distillation="all"`, `q1+final16`: `epochs_per_layer=1, '
    "final_epochs=16`).",
)


def _sweep_flag(commands, flag):
    for text in commands:
        found = re.search(rf"{flag}\s+(\S+)", text)
        if found:
            return found[1]
    return None


def _sweep_command(report, rows, commands):
    """The ``sweep.py`` command that reruns ``rows`` (on the same teacher)."""
    text = _preset_command(report, "sweep.py")
    text += f" --epochs {report['settings']['epochs']}"
    fp_epochs = _sweep_flag(commands, "--fp-epochs")
    if fp_epochs:
        text += f" --fp-epochs {fp_epochs}"
    return text + " --rows " + ",".join(n for n in rows if n != "full_precision")


def _trace(row):
    """Validation after each layer's quantize phase, then after the joint phase."""
    trace = row.get("trace") or []
    quantize = [t["val_accuracy"] for t in trace if t["phase"] == "quantize"]
    final = [t["val_accuracy"] for t in trace if t["phase"] == "final"]
    if None in quantize or not quantize:
        return ""
    text = ", ".join(f"{100 * v:.1f}" for v in quantize)
    return text + (f" -> {100 * final[-1]:.1f}" if final and final[-1] is not None else "")


def _ratios(row):
    ratios = [t.get("gradient_ratio") for t in row.get("trace") or [] if t["phase"] == "quantize"]
    ratios = [r for r in ratios if r is not None]
    if not ratios:
        return ""
    lo, hi = min(ratios), max(ratios)
    return f"{lo:.2g}" if lo == hi else f"{lo:.2g}-{hi:.2g}"


def _sweep_table(rows, epochs):
    lines = [
        "| row | budget | epochs | val acc. | train s | gradient ratio (per layer) | "
        "validation after each layer's quantize phase -> after the joint phase |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        secs = f"{row['seconds']:.0f}" if "seconds" in row else "-"
        budget = f"{row['budget']:g}x" if "budget" in row else "-"
        row_epochs = row.get("epochs") or (row["budget"] * epochs if "budget" in row else None)
        row_epochs = "-" if row_epochs is None else f"{row_epochs:g}"
        lines.append(
            f"| {name} | {budget} | {row_epochs} | {row['val_accuracy']:.2%} | {secs} | "
            f"{_ratios(row)} | {_trace(row)} |"
        )
    return lines


def _sweep_section(report):
    settings = report["settings"]
    rows = report["rows"]
    commands = [report.get("command", "")] + [r.get("command", "") for r in rows.values()]
    lines = [
        f"Command: `{_sweep_command(report, rows, commands)}`",
        "",
        *_sweep_table(rows, settings["epochs"]),
    ]
    if report.get("best"):
        name, overrides = report["best"]
        lines += ["", f"Best BiTAT variant at 1x: `{name}`: {overrides}"]
    return lines


def _teacher(settings):
    epochs = (settings.get("teacher") or {}).get("epochs", settings.get("fp_epochs"))
    cached = " (the preset's cached teacher, shared with the paper table)"
    return f"teacher {epochs} epochs" + (cached if "teacher" in settings else "")


def sweep(report):
    lines = [f"# Validation sweep, preset `{report['preset']}` (seed 0)", ""]
    if "runs" not in report:
        settings = report["settings"]
        subset = settings.get("subset")
        lines += [
            f"Backend {report['backend']}; 1x = {settings['epochs']} epochs; "
            f"{_teacher(settings)}"
            + (f"; the rows train on {subset:,} of the training images" if subset else "")
            + f". Accuracy on the validation split ({settings['val']} images held out of the "
            "training images); the test set is not touched.",
            "",
            *SWEEP_NAMES,
            "",
            *_sweep_section(report),
        ]
        return _lines(lines)
    # Several sweeps in one report: rows on the same teacher and settings share a table.
    groups = {}
    for run in report["runs"]:
        settings = {k: v for k, v in run["settings"].items() if k not in SWEEP_ROW_SETTINGS}
        key = json.dumps(
            [settings, run["settings"]["epochs"], run["rows"]["full_precision"], run["backend"]],
            sort_keys=True,
        )
        groups.setdefault(key, []).append(run)
    lines += [
        f"Accuracy on the validation split ({report['runs'][0]['settings']['val']} images "
        "held out of the training images); the test set is not touched. Each table's rows "
        "start from one full-precision teacher (seed 0).",
        "",
        *SWEEP_NAMES,
    ]
    for runs in groups.values():
        first = runs[0]
        settings = first["settings"]
        rows = {k: v for run in runs for k, v in run["rows"].items()}
        merged = {
            **first,
            "rows": rows,
            "command": " ".join(r["command"] for r in runs),
            "best": next((r["best"] for r in runs if r.get("best")), None),
        }
        lines += [
            "",
            f"## {_teacher(settings).capitalize()}, validation "
            f"{rows['full_precision']['val_accuracy']:.2%}; 1x = {settings['epochs']} epochs; "
            f"backend {first['backend']}",
            "",
            *_sweep_section(merged),
        ]
    return _lines(lines)


# ---------------------------------------------------------------------------------------
# latency.py: results/latency.md


def latency(report):
    lines = [
        "# Latency: LCE against float and int8 TFLite, one interpreter path",
        "",
        f"Command: `{command(report['command'])}`; {report['runs']} timed runs after 20 "
        "warm-up runs per setting; every model in LCE's interpreter through the same call "
        "(input copied in, invoke, output copied out). Random weights: latency, sizes and ops "
        "do not depend on their values.",
        "",
        "Best option of each model, median (p90) ms per image:",
        "",
        "| network | params | LCE KiB | float KiB | int8 KiB | LCE 1t | float 1t | int8 1t "
        "| LCE 2t | float 2t | int8 2t | LCE/float 1t |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in report["networks"].items():
        best, size = result["best"], result["size_kib"]

        def cell(key, best=best):
            return f"{best[key]['median']:.2f} ({best[key]['p90']:.2f}) {best[key]['option']}"

        lines.append(
            f"| {name} | {result['params']:,} | {size['lce']:.0f} | {size['float']:.0f} | "
            f"{size['int8']:.0f} | {cell('lce_1t')} | {cell('float_1t')} | {cell('int8_1t')} | "
            f"{cell('lce_2t')} | {cell('float_2t')} | {cell('int8_2t')} | "
            f"{result['lce_over_float_1t']:.2f}x |"
        )
    lines += ["", "## Every setting, median (p90) ms", ""]
    for name, result in report["networks"].items():
        settings = ", ".join(
            f"{k} {v['median']:.2f} ({v['p90']:.2f})" for k, v in result["settings"].items()
        )
        lines += [f"- {name}: {settings}"]
    lines += ["", "## Ops of the LCE flatbuffer and the float work between binary convs", ""]
    for name, result in report["networks"].items():
        work = result["lce_float_work"]
        lines += [
            f"- {name}: ops {result['ops']['lce']}; parity max |Keras - LCE| "
            f"{result['parity_max_abs_diff']:.2e}; {work['binary_convs']} LceBconv2d of "
            f"{result['binary_layers']} binary layers; between consecutive binary convs: "
            f"{work['between']}; before the first: {work['before_first']}; after the last: "
            f"{work['after_last']}",
        ]
    return _lines(lines + goals_section(report["goals"]))


# ---------------------------------------------------------------------------------------
# memory.py: results/memory[_<size>].md


def memory(report):
    g, st = report["growth"], report["settings"]
    cfg = st["config"]
    lines = [
        "# Resident memory per phase over a progressive run",
        "",
        f"Command: `{command(report['command'])}`; {report['backend']} backend "
        f"(keras {report['versions']['keras']}). ReActNet-A ({st['blocks']} blocks, width "
        f"{st['width_multiplier']}, {st['params']:,} params, {st['binarized_layers']} binarized "
        f"convs) on {st['samples']} random {'x'.join(map(str, st['input_shape']))} images "
        f"({st['validation_samples']} for validation), batch {cfg['batch_size']}, "
        f"{cfg['epochs_per_layer']} + {cfg['finetune_epochs']} epochs per layer, "
        f"{cfg['final_epochs']} final; groups {cfg['groups']}, stats_images "
        f"{cfg['stats_images']}, stats_rows {cfg['stats_rows']}. `progressive_fit` took "
        f"{report['seconds']:.0f} s, {report['traces']} trace(s) of the train step.",
        "",
        f"Peak: {report['peak_method']}. A phase's interval runs from the end of the previous "
        "phase's fit to the end of its own (its statistics, k-means and PCA, and the previous "
        "phase's BatchNorm re-estimation and validation, count in it). MB = MiB.",
        "",
        f"**Growth from the 2nd layer ({g['second_layer']}) to the last ({g['last_layer']})**: "
        f"peak {g['peak_second_mb']:.0f} -> {g['peak_last_mb']:.0f} MB "
        f"({100 * g['peak']:+.1f} %), RSS at the end {g['rss_end_second_mb']:.0f} -> "
        f"{g['rss_end_last_mb']:.0f} MB ({100 * g['rss_end']:+.1f} %); target under "
        f"{100 * g['target']:.0f} %: {'holds' if g['holds'] else 'MISSED'}.",
        "",
        f"Before `progressive_fit`: {report['before']['rss_mb']:.0f} MB, "
        f"{report['before']['python_objects']:,} Python objects. After it (final BatchNorm "
        f"pass, the clean binary model): peak {report['after']['peak_mb']:.0f} MB, RSS "
        f"{report['after']['rss_mb']:.0f} MB.",
        "",
        "| # | layer | index | phase | RSS at end (MB) | peak (MB) | peak of prep (MB) | "
        "peak of fit (MB) | Python objects | traces | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["phases"]:
        index = "" if p["index"] is None else p["index"] + 1
        lines.append(
            f"| {p['phase_index']} | {p['layer']} | {index} | {p['phase']} | "
            f"{p['rss_end_mb']:.0f} | {p['peak_mb']:.0f} | {p['prep_peak_mb']:.0f} | "
            f"{p['fit_peak_mb']:.0f} | {p['python_objects']:,} | {p['traces']} | "
            f"{p['seconds']:.1f} |"
        )
    return _lines(lines)


# ---------------------------------------------------------------------------------------
# batchnorm_time.py: results/batchnorm_time[_mini].md

BATCHNORM_BATCHES = 20  # batches per re-estimation (batchnorm_time.BATCHES)


def batchnorm_time(report):
    lines = [
        "# BatchNorm re-estimation: eager against jitted (JAX)",
        "",
        f"Command: `{command(report['command'])}`  ",
        f"Backend: {report['backend']} (Keras {report['keras']}, JAX {report['jax']}).",
        "",
        f"Seconds of one `recalibrate_batchnorm` call ({BATCHNORM_BATCHES} batches of random "
        "images, training-mode forward passes); `first` includes compilation, `later` is the "
        f"mean of the other {report['calls'] - 1} calls, what every further phase of "
        "`progressive_fit` pays. `difference`: the largest relative difference between the "
        "two paths' moving statistics.",
        "",
        "| network | params | BatchNorms | batch | eager first | eager later | jit first | "
        "jit later | later speed-up | difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['network']} | {r['params']:,} | {r['batchnorms']} | {r['batch']} | "
            f"{r['eager']['first']:.2f} | {r['eager']['later']:.3f} | {r['jit']['first']:.2f} | "
            f"{r['jit']['later']:.3f} | {r['speedup_later']:.1f}x | "
            f"{r['max_relative_difference']:.0e} |"
        )
    return _lines(lines)


# ---------------------------------------------------------------------------------------
# own_models.py: results/own_models.md

# The users'-models setup (own_models.py trains with these).
OWN_MODELS = dict(train=20000, val=5000, fp_epochs=15, fp_lr=2e-3, batch=128, naive_lr=8e-3)


def own_models(results):
    s = OWN_MODELS
    lines = [
        "# Users' own models (Fashion-MNIST)",
        "",
        f"Command: `{command(results['command'])}`  ",
        f"Data: {s['train']:,} training images, the next {s['val']:,} held out (val), the "
        f"10,000 test images. FP: {s['fp_epochs']} epochs, Adam {s['fp_lr']:g} with linear "
        f"decay, batch {s['batch']}. BiTAT: `BiTATConfig()` defaults. Naive STE: as many "
        f"epochs as BiTAT in all, lr {s['naive_lr']:g} (not tuned on these models).",
        "",
        "Every binarized conv of `cnn_relu` and of MobileNet follows a ReLU/ReLU6 and gets an "
        "input threshold (the plan's `binary + threshold`); `cnn_leaky` needs none. Without "
        "thresholds a ReLU-fed binary conv sees +1 everywhere (`tests/test_plan.py`) and a "
        "ReLU CNN binarizes to chance (10 %). None of the three has a shortcut around its "
        "binary convs.",
        "",
        "| model | seed | binarized convs (thresholded) | FP test | naive STE test | BiTAT test "
        "| BiTAT - naive STE (points) | FP / naive / BiTAT seconds | BiTAT / naive STE seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in results["runs"].items():
        for run in runs.values():
            r = run["rows"]
            lines.append(
                f"| {name} | {run['seed']} | {len(run['binarized'])} "
                f"({len(run['thresholded'])}) | {100 * r['fp']['test']:.2f} % | "
                f"{100 * r['naive_ste']['test']:.2f} % | {100 * r['bitat']['test']:.2f} % | "
                f"{100 * (r['bitat']['test'] - r['naive_ste']['test']):+.2f} | "
                f"{r['fp']['seconds']:.0f} / {r['naive_ste']['seconds']:.0f} / "
                f"{r['bitat']['seconds']:.0f} | "
                f"{r['bitat']['seconds'] / r['naive_ste']['seconds']:.2f}x |"
            )
    lines += ["", "Validation accuracy (val split) of the same runs:", ""]
    for name, runs in results["runs"].items():
        for run in runs.values():
            r = run["rows"]
            vals = " / ".join(f"{100 * r[k]['val']:.2f}" for k in ("fp", "naive_ste", "bitat"))
            lines.append(f"- {name} seed {run['seed']}: FP / naive STE / BiTAT {vals} %")
    return _lines(lines)


# ---------------------------------------------------------------------------------------
# Dispatch

RENDERERS = (
    ("cost_", cost),
    ("frozen_prefix_", frozen_prefix),
    ("setup_time", setup_time),
    ("converge_", converge),
    ("sweep_", sweep),
    ("deployment_", deployment),
    ("memory", memory),
    ("batchnorm_time", batchnorm_time),
    ("latency", latency),
    ("own_models", own_models),
)


def render(name, report):
    """The Markdown of report ``name`` (a results file's name without its extension)."""
    for prefix, renderer in RENDERERS:
        if name.startswith(prefix):
            return renderer(report)
    if "preset" in report and "rows" in report:
        return paper_table(report)
    prefixes = [p for p, _ in RENDERERS]
    raise ValueError(
        f"no renderer for {name!r}; expected a name starting with one of {prefixes} or a "
        "paper-table report"
    )


def render_file(json_path):
    """The Markdown of the report in ``json_path``."""
    with open(json_path) as f:
        report = json.load(f)
    return render(os.path.splitext(os.path.basename(json_path))[0], report)


def write_markdown(json_path):
    """Render the report in ``json_path`` to the ``.md`` beside it; returns the text."""
    text = render_file(json_path)
    with open(os.path.splitext(json_path)[0] + ".md", "w") as f:
        f.write(text)
    return text


def write_report(report, base):
    """Write ``report`` to ``<base>.json`` and its Markdown to ``<base>.md`` (the folder made
    if missing); returns the Markdown."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    return write_markdown(base + ".json")


def reports(folder=RESULTS):
    """The JSON reports in ``folder`` that have a Markdown report (every one but the cached
    teachers, which live in ``teachers/``)."""
    return sorted(glob.glob(os.path.join(folder, "*.json")))


def stale(folder=RESULTS):
    """The Markdown reports in ``folder`` that differ from what their JSON renders."""
    out = []
    for path in reports(folder):
        md = os.path.splitext(path)[0] + ".md"
        current = open(md).read() if os.path.exists(md) else None
        if current != render_file(path):
            out.append(md)
    return out
