"""Deployment columns of a preset's network without training it: flatbuffer sizes, the
LceBconv2d count, parity and CPU latency do not depend on the weights' values.

    python benchmarks/deployment.py --preset full   # the 1.07 M-param anchor network, ~2 min

This is how the size and latency goals are checked at the `full` preset's size on a machine
that cannot train it. Writes benchmarks/results/deployment_<preset>.json and .md.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np
import paper_table as pt  # beside this file: on sys.path when run as a script

import bitat_keras as bk


def _untie(model, seed):
    """Random biases, BatchNorm offsets and means, as a trained net has. At initialisation
    they are all 0, so binary-conv outputs (integer sums) hit exact ties at 0, where Keras'
    and LCE's float rounding may take different signs: the parity check would then measure
    ties, not the conversion."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if len(w.shape) == 1 and "variance" not in w.path:
                w.assign(w + rng.normal(0.0, 0.1, w.shape).astype("float32"))


def run(preset, out_dir, runs=None):
    p = dict(pt.PRESETS[preset])
    started = time.perf_counter()
    b = pt.Bench(preset, p, out_dir)
    keras.utils.set_random_seed(0)
    fp = b.model()  # initial weights: the graph, op count and sizes are those of a trained net
    _untie(fp, seed=0)
    bnn = bk.binarize(fp)
    d = pt.deployment(fp, bnn, b.test[0][:1], b.train[0][:64], runs or p["latency_runs"])
    report = {
        "preset": preset,
        "command": "python benchmarks/deployment.py " + " ".join(sys.argv[1:]),
        "backend": keras.backend.backend(),
        "cpus": os.cpu_count(),
        "params": int(fp.count_params()),
        "input_shape": list(b.shape),
        "deployment": d,
        "goals": {
            "lce_at_most_1_20_of_float_size": d["lce_over_float_size"] <= 1 / 20,
            "lce_at_most_0.5x_float_latency_1t": d["lce_over_float_latency_1t"] <= 0.5,
        },
        "total_seconds": time.perf_counter() - started,
    }
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"deployment_{preset}")
    with open(base + ".json", "w") as fh:
        json.dump(report, fh, indent=1, default=float)
    lines = [
        f"# Deployment, preset `{preset}` network ({report['params']:,} params, input "
        f"{tuple(report['input_shape'])}), untrained weights",
        "",
        f"Command: `{report['command']}`; backend {report['backend']}; {report['cpus']} CPUs.",
        "",
        *pt.deployment_markdown(d),
        "",
        "## Goals",
        "",
        *[f"- {k}: {'holds' if v else 'MISSED'}" for k, v in report["goals"].items()],
    ]
    with open(base + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(pt.PRESETS), default="full")
    parser.add_argument("--runs", type=int, default=None, help="latency runs per setting")
    parser.add_argument("--out", default=os.path.join(pt.HERE, "results"))
    args = parser.parse_args(argv)
    report = run(args.preset, args.out, args.runs)
    print(json.dumps(report["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
