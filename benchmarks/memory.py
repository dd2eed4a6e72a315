"""Resident memory per phase over a long ``progressive_fit`` run: ReActNet-A's 13 blocks
(31 binarized convs) on small random inputs, a short schedule.

    python benchmarks/memory.py                 # 31 layers, about 10 min on 2 cores
    python benchmarks/memory.py --mini --out /tmp/m   # 3 blocks (8 layers), seconds

A Keras callback passed through ``progressive_fit(..., callbacks=[...])`` (so the library is
measured as users run it) marks the start and the end of every phase's ``fit``. A phase's
interval runs from the end of the previous phase's ``fit`` to the end of its own: its own
preparation (input thresholds, statistics, k-means, PCA) and the previous phase's BatchNorm
re-estimation and validation count in it. For each phase the report gives the process's RSS
at the end (``VmRSS``) and the peak RSS during the interval (``VmHWM``, reset at every mark by
writing 5 to ``/proc/self/clear_refs``; where that is not allowed, the largest ``VmRSS`` of a
thread sampling every 50 ms), and the number of live Python objects (``gc``) at the end.
The growth figure compares the peak of the last layer (the largest over its phases) with
the peak of the 2nd layer; the 1st layer's phases include the first trace of the train step.
Writes ``memory.json``, ``memory.md`` and ``memory.png`` to ``--out``.
"""

import argparse
import gc
import json
import os
import sys
import threading
import time
import warnings

import figures  # beside this file: on sys.path when run as a script
import harness
import keras
import numpy as np
import render

import bitat_keras as bk

# samples, validation samples, width multiplier, blocks (None: MobileNetV1's 13) and the
# BiTATConfig fields of each size (presets.json)
SIZES = harness.SETTINGS["memory"]


def _status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mb():
    """The process's resident set size now, in MB (MiB)."""
    return _status_kb("VmRSS") / 1024


class PeakMeter:
    """Peak RSS since the last ``reset``: the kernel's high-water mark (``VmHWM``, reset
    through ``/proc/self/clear_refs``), or a sampling thread where that is refused."""

    def __init__(self, interval=0.05):
        self.interval = interval
        try:
            self._clear()
            self.method = "VmHWM reset by /proc/self/clear_refs"
        except OSError:
            self.method = f"VmRSS sampled every {interval * 1000:.0f} ms"
            self._peak = rss_mb()
            self._stop = threading.Event()
            threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _clear():
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, rss_mb())

    def reset(self):
        if self.method.startswith("VmHWM"):
            self._clear()
        else:
            self._peak = rss_mb()

    def peak(self):
        """The peak in MB since the last reset (the current RSS included)."""
        if self.method.startswith("VmHWM"):
            return max(_status_kb("VmHWM") / 1024, rss_mb())
        return max(self._peak, rss_mb())

    def close(self):
        if not self.method.startswith("VmHWM"):
            self._stop.set()


class PhaseMemory(keras.callbacks.Callback):
    """Per ``fit`` (one per phase): the peak RSS of its preparation (from the previous
    phase's end) and of its training, the RSS and live Python objects at its end."""

    def __init__(self, meter):
        super().__init__()
        self.meter = meter
        self.phases = []
        self._prep = None
        self._start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self._prep = self.meter.peak()
        self.meter.reset()

    def on_train_end(self, logs=None):
        fit = self.meter.peak()
        self.phases.append(
            {
                "prep_peak_mb": self._prep,
                "fit_peak_mb": fit,
                "peak_mb": max(self._prep, fit),
                "rss_end_mb": rss_mb(),
                "python_objects": len(gc.get_objects()),
                "traces": getattr(self.model, "traces", None),  # the train step's, so far
                "seconds": time.perf_counter() - self._start,
            }
        )
        self._start = time.perf_counter()
        self.meter.reset()


def growth(first, last):
    return (last - first) / first


def per_layer(phases):
    """Per layer index, in order: its phases' largest peak and the RSS at its last end."""
    out = {}
    for p in phases:
        if p["index"] is None:
            continue
        row = out.setdefault(p["index"], {"index": p["index"], "layer": p["layer"]})
        row["peak_mb"] = max(row.get("peak_mb", 0.0), p["peak_mb"])
        row["rss_end_mb"] = p["rss_end_mb"]
    return [out[i] for i in sorted(out)]


def run(size, out_dir, seed=0):
    s = SIZES[size]
    warnings.simplefilter("ignore")  # the few-steps warning: steps do not matter here
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    shape = (32, 32, 3)
    n = s["samples"] + s["val"]
    x = rng.random((n, *shape), dtype="float32")
    y = rng.integers(0, 10, n)
    train, val = (x[: s["samples"]], y[: s["samples"]]), (x[s["samples"] :], y[s["samples"] :])
    model = bk.models.reactnet_mobilenet(
        shape, num_classes=10, width_multiplier=s["width"], blocks=s["blocks"]
    )
    names = bk.models.eligible_layers(model)
    config = bk.BiTATConfig(seed=seed, **s["config"])
    meter = PeakMeter()
    gc.collect()
    before = {"rss_mb": rss_mb(), "python_objects": len(gc.get_objects())}
    memory = PhaseMemory(meter)
    meter.reset()
    start = time.perf_counter()
    result = bk.progressive_fit(
        model, train, config=config, validation_data=val, callbacks=[memory], verbose=0
    )
    seconds = time.perf_counter() - start
    tail = {"peak_mb": meter.peak(), "rss_mb": rss_mb()}  # last BatchNorm pass, clean model
    meter.close()
    if len(memory.phases) != len(result.history):
        raise RuntimeError(
            f"{len(memory.phases)} fits measured for {len(result.history)} phases in the history"
        )
    phases = [
        {"phase_index": i, "layer": r["layer"], "index": r["index"], "phase": r["phase"], **m}
        for i, (r, m) in enumerate(zip(result.history, memory.phases, strict=True))
    ]
    layers = per_layer(phases)
    second, last = layers[1], layers[-1]
    report = {
        "command": " ".join(["python benchmarks/memory.py", *sys.argv[1:]]),
        "machine": harness.host(),
        "backend": keras.backend.backend(),
        "versions": {"keras": keras.__version__, "numpy": np.__version__},
        "size": size,
        "settings": {
            "input_shape": list(shape),
            "samples": s["samples"],
            "validation_samples": s["val"],
            "width_multiplier": s["width"],
            "blocks": "MobileNetV1's 13" if s["blocks"] is None else [list(b) for b in s["blocks"]],
            "binarized_layers": len(names),
            "params": int(model.count_params()),
            "config": config.to_dict(),
        },
        "peak_method": meter.method,
        "seconds": seconds,
        "traces": result.traces,
        "before": before,
        "after": tail,
        "phases": phases,
        "layers": layers,
        "growth": {
            "second_layer": second["layer"],
            "last_layer": last["layer"],
            "peak_second_mb": second["peak_mb"],
            "peak_last_mb": last["peak_mb"],
            "peak": growth(second["peak_mb"], last["peak_mb"]),
            "rss_end_second_mb": second["rss_end_mb"],
            "rss_end_last_mb": last["rss_end_mb"],
            "rss_end": growth(second["rss_end_mb"], last["rss_end_mb"]),
            "target": 0.10,
        },
    }
    report["growth"]["holds"] = report["growth"]["peak"] < 0.10
    base = os.path.join(out_dir, "memory" if size == "full" else f"memory_{size}")
    render.write_report(report, base)
    figures.memory(report, base + ".png")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mini", action="store_true", help="3 blocks, 8 layers: seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=render.RESULTS)
    args = parser.parse_args(argv)
    report = run("mini" if args.mini else "full", args.out, args.seed)
    print(json.dumps(report["growth"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
