"""The README's results at a glance and every ``results/*.md``, generated from the benchmark
JSON in ``results/`` (the reports by ``render.py``).

    python benchmarks/report.py           # print the README's tables
    python benchmarks/report.py --write   # replace them in README.md (between the markers)
                                          # and rewrite every results/*.md from its JSON
    python benchmarks/report.py --check   # list what differs from its JSON (exit 1 if any)

``tests/test_readme.py`` fails when the README's tables differ from what this renders,
``tests/test_reports.py`` when a ``results/*.md`` differs from its JSON.
Accuracy: test-set mean over the seeds each row ran (standard error of the mean after
``±``); time: the cost benchmark's seconds at equal epochs, relative to naive STE, from
one run of the methods one after another.
"""

import argparse
import json
import os
import sys

import render as reports
from render import mean_and_error

RESULTS = reports.RESULTS
README = os.path.join(reports.HERE, "..", "README.md")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# (preset, its one-line description); BiTAT's row on each is the preset's BiTAT setting
# (``BiTATConfig()`` on `cpu`, ``BiTATConfig.for_data``'s teacher setting on the others).
PRESETS = (
    ("cpu", "20,000 labels, modest teacher"),
    ("cpu_strong", "20,000 labels, strong teacher"),
    ("lowdata", "2,000 labels, strong teacher"),
)
COLUMNS = (
    ("full_precision", "FP (teacher)"),
    ("naive_ste", "naive STE"),
    ("naive_ste_distill", "naive STE + teacher"),
    ("reactnet", "ReActNet"),
    ("bitat_aggregated", "BiTAT"),
    ("bitat_none", "BiTAT, no transform"),
)
COST = (
    ("naive_ste", "naive STE"),
    ("reactnet", "ReActNet"),
    ("bitat", "BiTAT `BiTATConfig()`"),
    ("bitat_distill", 'BiTAT `distillation="all"`'),
)


def load(name):
    with open(os.path.join(RESULTS, name + ".json")) as f:
        return json.load(f)


def accuracy_cell(row):
    if row is None:
        return "-"
    values = [seed["accuracy"] for seed in row["per_seed"].values()]
    mean, error = mean_and_error(values)
    text = f"{100 * mean:.2f}"
    if error is not None:
        text += f" ± {100 * error:.2f}"
    return f"{text} ({len(values)})"


def accuracy_table():
    head = "| data (`--preset`) | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for preset, description in PRESETS:
        rows = load(preset)["rows"]
        cells = [accuracy_cell(rows.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {description} (`{preset}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(name="cost_cpu_tensorflow"):
    report = load(name)
    rows = report["rows"]
    naive = rows["naive_ste"]["seconds"]
    lines = [
        "| method | seconds | / naive STE | test accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in COST:
        if key in rows:
            row = rows[key]
            lines.append(
                f"| {label} | {row['seconds']:.0f} | {row['seconds'] / naive:.2f}x | "
                f"{100 * row['accuracy']:.2f} % |"
            )
    caption = (
        f"`{report['network']}` network, {report['images']:,} images, {report['epochs']} "
        f"epochs each, {report['backend']} ([report](benchmarks/results/{name}.md)):"
    )
    return caption + "\n\n" + "\n".join(lines)


def render():
    return (
        "Test accuracy in % at equal epochs, mean ± standard error (seeds):\n\n"
        + accuracy_table()
        + "\n\nWall time at equal epochs, "
        + cost_table()
    )


def replace_block(text, body):
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + body + "\n" + text[end:]


def readme_block(text):
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n")


def stale():
    """README.md (when its tables differ from the JSON) and the results/*.md that differ."""
    with open(README) as f:
        readme = readme_block(f.read()) != render()
    return (["README.md"] if readme else []) + [
        os.path.relpath(p, os.path.join(reports.HERE, "..")) for p in reports.stale(RESULTS)
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--write", action="store_true", help="update README.md and every results/*.md in place"
    )
    parser.add_argument(
        "--check", action="store_true", help="list the files that differ from the JSON"
    )
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        for path in differ:
            print(f"differs from its JSON: {path}")
        return 1 if differ else 0
    body = render()
    if args.write:
        with open(README) as f:
            text = f.read()
        with open(README, "w") as f:
            f.write(replace_block(text, body))
        for path in reports.reports(RESULTS):
            reports.write_markdown(path)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
