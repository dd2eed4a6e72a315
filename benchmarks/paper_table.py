"""The paper's comparison on our own runs: accuracy against training wall time, V sizes,
Q_orig/Q_ours, flatbuffer size and CPU latency.

    python benchmarks/paper_table.py --preset cpu            # the CPU headline (hours)
    python benchmarks/paper_table.py --preset cpu --seed 1   # one seed, merged into cpu.json
    python benchmarks/paper_table.py --preset full           # the anchor setting (GPU, JAX)
    python benchmarks/paper_table.py --preset mini           # seconds (the test suite)

Every row uses the same network, data, preprocessing, batch size and seeds. Budgets are
epochs: 1x is ReActNet's converged epoch count on the preset; every row at Nx trains N times
those epochs (BiTAT spreads them over its phases), and every row reports the seconds it
actually took; the plot puts each row at its measured seconds. Writes
benchmarks/results/<preset>.json, <preset>.md and <preset>_accuracy_vs_cost.png.
"""

import argparse
import json
import os
import sys
import time

import figures
import keras
import numpy as np
import render as reports
from harness import (
    BASELINES,
    PRESETS,
    Bench,
    budget_epochs,
    budget_name,
    deployment,
    earlier_report,
    host,
    log,
    machine_name,
    same_settings,
)
from render import (  # noqa: F401  (row_order: tests)
    MAIN_ROWS,
    mean_and_error,
    paired_seeds,
    row_order,
)

import bitat_keras as bk

ABLATIONS = ("none", "intra", "cross")


def run_seed(bench, seed, groups, overrides=None, only=MAIN_ROWS):
    """Every row of one seed (``groups``: which rows beyond the main ones; ``overrides``:
    BiTATConfig fields for the BiTAT rows (all but the paper's) instead of the library
    defaults; the ablations change only the transform; ``only``:
    which main rows run, the full-precision model always trains since every row starts
    from it)."""
    settings = bench.settings
    overrides = overrides or {}
    fp, record = bench.teacher(seed)
    bench.add(
        "full_precision",
        seed,
        accuracy=bench.accuracy(fp),
        val_accuracy=bench.accuracy(fp, "val"),
        seconds=record["seconds"],
        epochs=record["epochs"],
        recipe=settings.get("teacher"),
        host=record.get("host"),  # a cached teacher's own host (None: cached before hosts)
    )

    def point(name, budget, seconds, acc):  # saved at once: a stopped run keeps it
        bench.curves[name].append((budget, seed, seconds, acc))
        if bench.on_row is not None:
            bench.on_row()

    for budget in settings["budgets"]:
        if budget == 4 and "budget4" not in groups:
            continue
        epochs = budget_epochs(budget, settings["epochs"])
        for name in BASELINES:
            if name not in only or name not in settings["baseline_lr"]:
                continue
            acc, seconds = baseline_row(
                bench, name + budget_name(budget), name, fp, seed, epochs, budget
            )
            point(name, budget, seconds, acc)
        if "bitat" not in only:
            continue
        row = "bitat_aggregated" + budget_name(budget)
        result, acc = bench.bitat_row(
            row, fp, seed, budget, validate=seed == 0 and budget == 1, **overrides
        )
        point("bitat", budget, result.seconds, acc)
        if seed == 0 and budget == 1:
            bench.rows[row][seed]["history"] = slim_history(result.history)
            if keras.backend.backend() == "tensorflow" and "deploy" in groups:
                bench.deploy = deployment(
                    fp,
                    result.model,
                    bench.test[0][:1],
                    bench.train[0][:64],
                    settings["latency_runs"],
                )
    if "extra" in groups:
        bench.bitat_row("bitat_paper", fp, seed, 1, paper=True)
        for transform in ABLATIONS:
            bench.bitat_row(
                f"bitat_{transform}", fp, seed, 1, **{**overrides, "transform": transform}
            )
    if "ablation" in groups:  # the transform ablation of the premise presets (every seed)
        bench.bitat_row("bitat_none", fp, seed, 1, **{**overrides, "transform": "none"})
    size = settings.get("subset_extra")
    if "more_data" in groups and size:
        bench.bitat_row(f"bitat_{size}_images", fp, seed, 1, size=size, **overrides)
    for name in BASELINES:  # a baseline on subset_extra, in its 1x row's steps
        if f"more_data_{name}" in groups and size and name in settings["baseline_lr"]:
            epochs = budget_epochs(settings["subset"] / size, settings["epochs"])
            row = f"{name}_{size}_images"
            baseline_row(bench, row, name, fp, seed, epochs, 1, size)


def baseline_row(bench, row, name, fp, seed, epochs, budget, size=None):
    """Trains baseline ``name`` from ``fp`` for ``epochs`` on the preset's binarization
    data (``size`` images instead of its subset) and adds it to the report as ``row``;
    returns its test accuracy and seconds."""
    settings = bench.settings
    images = size or settings.get("subset") or len(bench.train[0])
    steps_per_epoch = int(np.ceil(images / settings["batch"]))
    keras.utils.set_random_seed(seed)
    bnn, seconds = BASELINES[name](
        fp,
        bench.binarization_data(seed, size),  # per row: the same batches whatever ran before
        epochs=epochs,
        learning_rate=settings["baseline_lr"][name],
        batch_size=settings["batch"],
    )
    acc = bench.accuracy(bnn)
    bench.add(
        row,
        seed,
        accuracy=acc,
        val_accuracy=bench.accuracy(bnn, "val"),
        seconds=seconds,
        budget=budget,
        steps=epochs * steps_per_epoch,
        learning_rate=settings["baseline_lr"][name],
        **bench.q_values(fp, bnn),
    )
    return acc, seconds


def slim_history(history):
    keys = ("layer", "phase", "steps", "val_accuracy", "penalty", "gradient_ratio", "loss")
    return [{k: h.get(k) for k in keys} for h in history]


def summarize(bench, previous=None):
    """The report: per-row means over every seed run so far (``previous`` holds the rows
    and curves of seeds run in earlier invocations)."""
    rows, curves = merge_rows(previous, bench.rows, bench.curves)
    seconds = previous.get("total_seconds", 0.0) if previous else 0.0
    settings = bench.settings
    report = {
        "preset": bench.name,
        "settings": settings,
        "command": "python benchmarks/paper_table.py " + " ".join(sys.argv[1:]),
        "machine": host(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "bitat_defaults": bk.BiTATConfig().to_dict(),
        "train_size": len(bench.train[0]),
        "val_size": len(bench.val[0]),
        "test_size": len(bench.test[0]),
        "rows": rows,
        "deployment": bench.deploy or (previous or {}).get("deployment"),
        "curves": curves,
        "total_seconds": seconds + bench.seconds,
        "notes": (previous or {}).get("notes", []),
    }
    report["goals"] = goals(rows, settings)
    return report


def seeds_by_row(report):
    """``{row: {seed: values}}`` of a loaded report."""
    rows = report["rows"].items()
    return {name: {int(k): v for k, v in row["per_seed"].items()} for name, row in rows}


def merge_rows(old, rows, curves):
    """``old``'s rows and curves (a loaded report, or None) with ``rows`` (``{row: {seed:
    values}}``) and ``curves`` merged in: a row's seed, or a curve's (budget, seed) point,
    replaces the same one of ``old``. Returns ``(rows, curves)``, the rows summarized."""
    per_row = seeds_by_row(old) if old else {}
    for name, seeds in rows.items():
        per_row.setdefault(name, {}).update(seeds)
    old_curves = old["curves"] if old else {}
    merged = {name: [list(p) for p in points] for name, points in old_curves.items()}
    for name, points in curves.items():
        replaced = {(p[0], p[1]) for p in points}
        kept = [p for p in merged.get(name, []) if (p[0], p[1]) not in replaced]
        merged[name] = kept + [list(p) for p in points]
    return row_means(per_row), merged


def row_means(per_row):
    """Each row's summary (means, range, seeds) from ``{row: {seed: values}}``."""
    rows = {}
    for name, per_seed in per_row.items():
        accs = [v["accuracy"] for v in per_seed.values()]
        first = next(iter(per_seed.values()))
        rows[name] = {
            "accuracy_mean": float(np.mean(accs)),
            "accuracy_min": float(np.min(accs)),
            "accuracy_max": float(np.max(accs)),
            "val_accuracy_mean": _mean(per_seed, "val_accuracy"),
            "seeds": len(accs),
            "seconds_mean": float(np.mean([v["seconds"] for v in per_seed.values()])),
            "steps": first.get("steps"),
            "v_parameters": first.get("v_parameters"),
            "q_orig_mean": _mean(per_seed, "q_orig"),
            "q_ours_mean": _mean(per_seed, "q_ours"),
            "q_orig_fit_mean": _mean(per_seed, "q_orig_fit"),
            "q_ours_fit_mean": _mean(per_seed, "q_ours_fit"),
            "signs_kept_mean": _mean(per_seed, "signs_kept"),
            "per_seed": {str(k): v for k, v in sorted(per_seed.items())},
        }
    return rows


# Settings that each row records itself (its learning rate, its BiTAT config) may differ
# between the rows of one report.
ROW_SETTINGS = ("budgets", "bitat_overrides", "baseline_lr")


def merge(preset, out_dir, sources):
    """Merge the reports of ``preset`` in the ``sources`` folders (runs side by side, each
    with its own ``--out``, e.g. one seed per process) into ``out_dir``'s report (made if
    missing): a row's seed from a source replaces the same row and seed, the seconds add up
    (merge each folder once), and a note names each source's command and machine. Raises
    ``ValueError`` for a report made with other preset settings or on another backend."""
    path = os.path.join(out_dir, f"{preset}.json")
    report = earlier_report(path)
    for source in sources:
        other = _load(os.path.join(source, f"{preset}.json"))
        seeds = sorted({int(s) for row in other["rows"].values() for s in row["per_seed"]})
        note = (
            f"seeds {seeds} merged from `{other['command']}` "
            f"({other['backend']}, {machine_name(other)})"
        )
        if report is None:
            report = {**other, "notes": other.get("notes", []) + [note]}
            continue
        if not same_settings(other["settings"], report, ROW_SETTINGS):
            raise ValueError(
                f"{source}: its {preset} report was made with other preset settings than "
                f"{path}'s; expected the same settings (budgets, learning rates and BiTAT "
                "overrides may differ)"
            )
        if other["backend"] != report["backend"]:
            raise ValueError(
                f"{source}: its {preset} report ran on {other['backend']}, {path}'s on "
                f"{report['backend']}; expected one backend (their wall times differ)"
            )
        rows, curves = merge_rows(report, seeds_by_row(other), other["curves"])
        notes = report.get("notes", [])
        report = {
            **report,
            "rows": rows,
            "curves": curves,
            "deployment": report.get("deployment") or other.get("deployment"),
            "total_seconds": report["total_seconds"] + other["total_seconds"],
            "notes": notes + [n for n in other.get("notes", []) if n not in notes] + [note],
        }
    if report is None:
        raise ValueError(f"nothing to merge: expected one or more folders, received {sources}")
    report["goals"] = goals(report["rows"], report["settings"])
    write(report, out_dir, preset)
    return report


def _load(path):
    with open(path) as f:
        return json.load(f)


def annotate(preset, out_dir, text):
    """Add a note (e.g. what disturbed a timing) to a preset's JSON report; the Markdown
    does not show notes (how and where a number was measured stays in the JSON)."""
    report = _load(os.path.join(out_dir, f"{preset}.json"))
    report.setdefault("notes", []).append(text)
    write(report, out_dir, preset, quiet=True)
    return report


def goals(rows, settings=None):
    def mean(name):
        return rows[name]["accuracy_mean"] if name in rows else None

    out = premise_goals(rows, (settings or {}).get("goal"), mean)

    fp, rn, naive, bitat = (
        mean(n) for n in ("full_precision", "reactnet", "naive_ste", "bitat_aggregated")
    )
    if None not in (fp, rn, naive, bitat) and not out:
        out["bitat_1x_at_least_reactnet_plus_0.5"] = bitat >= rn + 0.005
        out["bitat_1x_at_least_naive_ste"] = bitat >= naive
        best = max(mean(r) for r in ("bitat_aggregated", "bitat_aggregated_2x") if r in rows)
        out["bitat_2x_or_less_within_1.0_of_fp"] = best >= fp - 0.01
        out["moonshot_bitat_1x_within_0.3_of_fp"] = bitat >= fp - 0.003
    if "reactnet_2x" in rows and rn is not None:
        # on the seeds that ran both budgets: seeds differ by more than the 0.3 asked here
        once, twice = rows["reactnet"]["per_seed"], rows["reactnet_2x"]["per_seed"]
        gains = [twice[s]["accuracy"] - once[s]["accuracy"] for s in twice if s in once]
        if gains:
            out["reactnet_converged_at_1x (2x gains < 0.3 on the same seeds)"] = (
                float(np.mean(gains)) < 0.003
            )
    if "bitat_none" in rows and bitat is not None:
        # The ablation rows may run fewer seeds than the main BiTAT row, or have run with
        # other settings: compare each transform with `none` on the seeds they share.
        pairs = {
            n: paired_seeds(rows, n, "bitat_none")
            for n in ("bitat_aggregated", "bitat_intra", "bitat_cross")
            if n in rows
        }
        gains = [
            _mean({s: rows[n]["per_seed"][s] for s in seeds}, "accuracy")
            - _mean({s: rows["bitat_none"]["per_seed"][s] for s in seeds}, "accuracy")
            for n, seeds in pairs.items()
            if seeds
        ]
        if gains:
            out["transform_beats_none_by_0.3"] = max(gains) >= 0.003
    return out


def premise_goals(rows, goal, mean):
    """The targets of the premise presets (``goal``: margins over the best baseline and
    from the teacher, as fractions), on 1x means; empty for the other presets."""
    fp, rn, bitat = (mean(n) for n in ("full_precision", "reactnet", "bitat_aggregated"))
    if not goal or None in (fp, bitat):
        return {}
    out = {}
    names = [n for n in BASELINES if n in rows]
    if names:
        best = max(mean(n) for n in names)
        out[f"bitat_1x_at_least_best_baseline_plus_{100 * goal['over_baseline']:g}"] = (
            bitat >= best + goal["over_baseline"]
        )
    out[f"bitat_1x_within_{100 * goal['within_fp']:g}_of_fp"] = bitat >= fp - goal["within_fp"]
    out["moonshot_bitat_1x_within_0.3_of_fp"] = bitat >= fp - 0.003
    fast = [mean(f"bitat_aggregated_{b}x") for b in ("0.25", "0.5")]
    fast = [a for a in fast if a is not None]
    if fast and rn is not None:
        out["bitat_at_0.5x_or_less_at_least_reactnet_1x"] = max(fast) >= rn
    binary = [r["accuracy_mean"] for n, r in rows.items() if n != "full_precision"]
    out["teacher_at_least_1.0_above_the_best_binary_row"] = fp >= max(binary) + 0.01
    if "bitat_none" in rows:
        agg, none = rows["bitat_aggregated"]["per_seed"], rows["bitat_none"]["per_seed"]
        seeds = paired_seeds(rows, "bitat_aggregated", "bitat_none")
        diffs = [agg[s]["accuracy"] - none[s]["accuracy"] for s in seeds]
        if len(diffs) >= 2:
            gain, se = mean_and_error(diffs)
            out["transform_aggregated_beats_none_by_0.3_beyond_its_standard_error"] = (
                gain >= 0.003 and gain > se
            )
    return out


def _mean(per_seed, key):
    values = [v[key] for v in per_seed.values() if v.get(key) is not None]
    return float(np.mean(values)) if values else None


def markdown(report):
    """The report's Markdown (``render.py``'s paper table)."""
    return reports.paper_table(report)


def write(report, out_dir, preset, quiet=False, figure=True):
    """The report's JSON and Markdown, and (``figure``) its accuracy-vs-cost PNG."""
    report["goals"] = goals(report["rows"], report.get("settings"))  # the current rules
    base = os.path.join(out_dir, preset)
    reports.write_report(report, base)
    if figure and "full_precision" in report["rows"]:
        figures.paper_table(report, base + "_accuracy_vs_cost.png")
    if not quiet:
        log(f"wrote {base}.json, {base}.md, {base}_accuracy_vs_cost.png")


def run(
    preset,
    out_dir,
    seeds=None,
    groups=("budget4", "extra", "deploy"),
    only=MAIN_ROWS,
    teachers=None,
    **changes,
):
    """Run ``seeds`` (default: all of the preset's) and merge them into ``out_dir``'s
    report of the preset (``teachers``: the cached teachers' folder, default
    ``<out_dir>/teachers``). ``groups``: the rows beyond the main ones that seed 0 (or the
    preset's ``extra_seeds`` first seeds) also runs; ``only``: which main rows run (a rerun
    of some rows replaces those rows' seeds and keeps the others). ``changes``: ``budgets``
    or ``overrides`` (BiTATConfig fields of the BiTAT rows; default: the preset's
    ``bitat_overrides``, if any), recorded in the report."""
    settings = dict(PRESETS[preset])
    overrides = changes.pop("overrides", None) or settings.get("bitat_overrides", {})
    settings.update({k: v for k, v in changes.items() if v is not None})
    settings["bitat_overrides"] = overrides
    bench = Bench(preset, settings, out_dir, teachers)
    seeds = list(range(settings["seeds"])) if seeds is None else list(seeds)
    log(
        f"preset {preset}: {len(bench.train[0])} train / {len(bench.val[0])} val / "
        f"{len(bench.test[0])} test {settings['dataset']}, backend {keras.backend.backend()}"
    )
    previous = earlier_report(
        os.path.join(out_dir, f"{preset}.json"),
        lambda report: same_settings(settings, report, ROW_SETTINGS),
    )
    start = time.perf_counter()

    def save(figure=True):
        bench.seconds = time.perf_counter() - start
        report = summarize(bench, previous)
        write(report, out_dir, preset, quiet=True, figure=figure)
        return report

    # JSON and Markdown after every row, so an interrupted run keeps what it measured; the
    # figure (about a second to render) once, at the end or when the run stops early.
    bench.on_row = lambda: save(figure=False)
    try:
        for seed in seeds:
            # "ablation" runs on every seed; the other groups on the first extra_seeds.
            extra = set(groups) if seed < settings["extra_seeds"] else set(groups) & {"ablation"}
            run_seed(bench, seed, extra, overrides, only)
    except BaseException:
        if bench.rows:
            save()
        raise
    report = save()
    log(f"wrote {os.path.join(out_dir, preset)}.json, .md and _accuracy_vs_cost.png")
    return report


def _number(text):
    value = float(text)
    return int(value) if value.is_integer() else value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", default=reports.RESULTS)
    parser.add_argument("--seed", type=int, action="append", help="run only this seed")
    parser.add_argument(
        "--groups",
        default="budget4,extra,deploy",
        help="rows beyond the main ones (comma list of budget4, extra, deploy; the premise "
        "presets: ablation (bitat_none on every seed), more_data (BiTAT on subset_extra, "
        "in the 1x row's steps), more_data_<baseline> (that baseline the same way, e.g. "
        "more_data_reactnet))",
    )
    parser.add_argument("--budgets", default=None, help="comma list, e.g. 0.25,0.5,1,2")
    parser.add_argument(
        "--rows",
        default=",".join(MAIN_ROWS),
        help="main rows to run (comma list of naive_ste, naive_ste_distill, reactnet, bitat; "
        "naive_ste_distill only where the preset has its learning rate); the others keep "
        "their merged results",
    )
    parser.add_argument(
        "--bitat",
        default=None,
        help="JSON of BiTATConfig fields for the BiTAT rows (default: the preset's)",
    )
    parser.add_argument(
        "--teachers",
        default=None,
        help="folder of the cached teachers (default: <out>/teachers); lets runs with their "
        "own --out share the teachers",
    )
    parser.add_argument(
        "--annotate", default=None, help="only add this note to the existing report"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="only merge the preset's reports in these folders (runs with their own --out) "
        "into the report in --out",
    )
    args = parser.parse_args(argv)
    if args.annotate:
        annotate(args.preset, args.out, args.annotate)
        return 0
    if args.merge:
        try:
            print(markdown(merge(args.preset, args.out, args.merge)))
        except (OSError, ValueError) as error:
            parser.error(str(error))
        return 0
    groups = tuple(g for g in args.groups.split(",") if g)
    budgets = tuple(_number(b) for b in args.budgets.split(",")) if args.budgets else None
    overrides = json.loads(args.bitat) if args.bitat else None
    only = tuple(r for r in args.rows.split(",") if r)
    unknown = sorted(set(only) - set(MAIN_ROWS))
    if unknown:
        parser.error(f"unknown --rows {unknown}; expected names from {list(MAIN_ROWS)}")
    report = run(
        args.preset,
        args.out,
        args.seed,
        groups,
        only,
        teachers=args.teachers,
        budgets=budgets,
        overrides=overrides,
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
