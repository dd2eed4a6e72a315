"""Every benchmark figure (``results/*.png``), one function per kind of report, each drawn
from the report as the script writes it to JSON (the figures' counterpart of ``render.py``).
Matplotlib (Agg) loads on the first figure, so a script that draws none never imports it."""

import contextlib

import numpy as np


@contextlib.contextmanager
def _figure(path, *grid, **options):
    """``(fig, axes)`` of ``plt.subplots(*grid, **options)``; on leaving, laid out (tightly,
    unless ``options`` name a layout), saved to ``path`` at 110 dpi and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **options)
    yield fig, axes
    if "layout" not in options:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paper_table(report, path):
    """Accuracy against wall time (left) and against the budget in ReActNet's converged
    epochs (right): the seconds come from hosts that differ up to 2-3x between sessions, so
    the right panel is the one whose curves compare budgets of one method."""
    overrides = report["settings"].get("bitat_overrides")
    labels = {
        "naive_ste": ("naive STE", "^"),
        "naive_ste_distill": ("naive STE, teacher's distribution", "v"),
        "reactnet": ("ReActNet two-step", "o"),
        "bitat": ("BiTAT (the preset's settings)" if overrides else "BiTAT (defaults)", "s"),
        "bitat_teacher": ("BiTAT, teacher's distribution (earlier defaults)", "x"),
    }
    grid = dict(figsize=(11.0, 5.0), layout="constrained")
    with _figure(path, 1, 2, **grid) as (fig, (ax, by_budget)):
        for name, (label, marker) in labels.items():
            points = sorted(report["curves"].get(name, []))  # (budget, seed, seconds, accuracy)
            if not points:
                continue
            budgets = sorted({p[0] for p in points})
            xs = [np.mean([p[2] for p in points if p[0] == b]) for b in budgets]
            ys = [100 * np.mean([p[3] for p in points if p[0] == b]) for b in budgets]
            (line,) = ax.plot(xs, ys, marker=marker, label=label)
            color = line.get_color()
            ax.scatter([p[2] for p in points], [100 * p[3] for p in points], s=12, color=color)
            by_budget.plot(budgets, ys, marker=marker, color=color)
            accs = [100 * p[3] for p in points]
            by_budget.scatter([p[0] for p in points], accs, s=12, color=color)
        fp = 100 * report["rows"]["full_precision"]["accuracy_mean"]
        ax.axhline(fp, color="gray", ls="--", label="full precision")
        by_budget.axhline(fp, color="gray", ls="--")
        ax.set_ylabel("test accuracy (%)")
        points = [p for curve in report["curves"].values() for p in curve]
        budgets = sorted({p[0] for p in points})
        names = "/".join(f"{b:g}x" for b in budgets)
        ax.set_title(
            f"Accuracy vs wall time\n({report['preset']} preset, {names}; means and seeds)"
        )
        hosts = {
            values["host"]
            for name, row in report["rows"].items()
            if name != "full_precision"
            for values in row["per_seed"].values()
            if values.get("host")
        }
        # Seconds from other machines do not compare one to one: say so under the axis.
        where = f"; {len(hosts)} hosts, per seed in the report" if len(hosts) > 1 else ""
        ax.set_xlabel(f"training wall time (s{where})")
        by_budget.set_xscale("log", base=2)
        by_budget.set_xticks(budgets, [f"{b:g}x" for b in budgets])
        by_budget.minorticks_off()
        by_budget.set_xlabel("budget (x ReActNet's converged epochs)")
        by_budget.set_title("Accuracy vs budget\n(host-independent; means and seeds)")
        by_budget.sharey(ax)
        fig.legend(loc="outside lower center", ncol=3, fontsize="small")  # never on a curve


def cost(report, path):
    """Seconds of each method, split into optimizer steps and BiTAT's other work (left);
    milliseconds per step of every kind of step (right)."""
    rows = report["rows"]
    names = list(rows)
    other = [rows[m].get("seconds_by_kind", {}).get("overhead", 0.0) for m in names]
    train = [rows[m]["seconds"] - outside for m, outside in zip(names, other, strict=True)]
    with _figure(path, 1, 2, figsize=(11, 4)) as (fig, (left, right)):
        left.bar(names, train, label="optimizer steps (the baselines' tracing included)")
        left.bar(names, other, bottom=train, label="BiTAT: tracing and work between steps")
        left.set_ylabel("seconds")
        left.set_title(f"{report['epochs']} epochs each")
        left.legend(fontsize=7, loc="lower left")
        kinds = [(m, k, v) for m in names for k, v in rows[m]["step_ms"].items()]
        labels = [f"{m}\n{k}" if m.startswith("bitat") else k for m, k, _ in kinds]
        right.barh(range(len(kinds)), [v for _, _, v in kinds], tick_label=labels)
        right.axvline(report["fp"]["step_ms"], color="k", ls="--", lw=1, label="full precision")
        right.set_xlabel("ms per optimizer step")
        right.tick_params(axis="y", labelsize=6)
        right.legend(fontsize=7)
        fig.suptitle(f"Cost: {report['network']} network, {report['backend']}")


def memory(report, path):
    """Peak and end-of-phase RSS of every phase, the 2nd and the last layer marked."""
    phases = report["phases"]
    index = [p["phase_index"] for p in phases]
    g = report["growth"]
    with _figure(path, figsize=(9, 4)) as (_, ax):
        ax.plot(index, [p["peak_mb"] for p in phases], marker=".", label="peak during the phase")
        ax.plot(index, [p["rss_end_mb"] for p in phases], marker=".", label="RSS at its end")
        for name in (g["second_layer"], g["last_layer"]):
            first = next(p["phase_index"] for p in phases if p["layer"] == name)
            ax.axvline(first, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("phase (quantize and fine-tune of each layer, then the final phase)")
        ax.set_ylabel("resident memory (MB)")
        ax.set_title(
            f"progressive_fit, {report['settings']['binarized_layers']} layers: peak "
            f"{100 * g['peak']:+.1f} % from layer 2 to the last"
        )
        ax.legend(loc="lower right")


def batchnorm_time(report, path):
    """Seconds of every re-estimation call, eager against jitted, one panel per network."""
    rows = report["rows"]
    grid = dict(figsize=(4.5 * len(rows), 3.6), squeeze=False)
    with _figure(path, 1, len(rows), **grid) as (_, axes):
        for ax, r in zip(axes[0], rows, strict=True):
            for path_name, marker in (("eager", "o"), ("jit", "s")):
                seconds = r[path_name]["seconds"]
                ax.plot(range(1, len(seconds) + 1), seconds, marker=marker, label=path_name)
            ax.set_ylim(bottom=0)
            ax.set_xticks(range(1, len(seconds) + 1))  # whole calls
            ax.set_xlabel("call")
            ax.set_ylabel("seconds per re-estimation")
            ax.set_title(f"{r['network']} network, batch {r['batch']}")
            ax.legend()


def own_models(results, path):
    """Test accuracy of full precision, naive STE and BiTAT on each model (seed means)."""
    names = list(results["runs"])
    rows = [("fp", "full precision"), ("naive_ste", "naive STE"), ("bitat", "BiTAT")]
    with _figure(path, figsize=(7, 4)) as (_, ax):
        for k, (row, label) in enumerate(rows):
            values = [
                100 * np.mean([r["rows"][row]["test"] for r in results["runs"][n].values()])
                for n in names
            ]
            ax.bar(np.arange(len(names)) + (k - 1) * 0.27, values, 0.27, label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.legend(loc="lower right")
        ax.set_title("Users' own models on Fashion-MNIST (chance: 10 %)")
