"""Seconds from the call to the first optimizer step on
``keras.applications.ResNet50(weights=None)`` at 32x32 (52 binarized convs, 16 blocks, batch
32): Keras' own ``compile`` and ``fit`` against ``progressive_fit`` at ``BiTATConfig()``
(and ``transform="none"``), each in a fresh process so that none reuses another's caches.

    python benchmarks/setup_time.py            # the three, results/setup_time.{json,md}
    python benchmarks/setup_time.py --one bitat  # one variant, printed as JSON

``bitat`` splits its seconds at the first ``fit``'s start: before it the plan, binarization,
the gated copy, the first layer's thresholds, statistics, grouping and PCA; after it the
tracing of the first phase's step and that step.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import cost  # beside this file: on sys.path when run as a script
import harness
import keras
import numpy as np
import render

import bitat_keras as bk

VARIANTS = ("keras", "bitat", "bitat_transform_none")


class FirstStep(keras.callbacks.Callback):
    """Records in ``marks`` when the first ``fit`` begins and the first step ends, then
    stops the run."""

    def __init__(self, marks):
        super().__init__()
        self.marks = marks

    def on_train_begin(self, logs=None):
        self.marks.setdefault("fit_begin", time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        self.marks["first_step"] = time.perf_counter()
        raise KeyboardInterrupt


def measure(variant):
    """Seconds of ``variant`` from the call to the end of its first optimizer step (for
    BiTAT also the seconds before its first ``fit`` began)."""
    warnings.simplefilter("ignore")
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    x, y = rng.random((512, 32, 32, 3), dtype="float32"), rng.integers(0, 10, 512)
    marks = {}
    start = time.perf_counter()
    if variant == "keras":
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
        return {"seconds": time.perf_counter() - start}
    transform = "none" if variant == "bitat_transform_none" else "aggregated"
    config = bk.BiTATConfig(batch_size=32, stats_images=64, transform=transform)
    try:
        bk.progressive_fit(model, (x, y), config=config, callbacks=[FirstStep(marks)], verbose=0)
    except KeyboardInterrupt:
        pass
    return {
        "seconds": marks["first_step"] - start,
        "before_fit": marks["fit_begin"] - start,
        "first_step": marks["first_step"] - marks["fit_begin"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", choices=VARIANTS, help="measure one variant in this process")
    parser.add_argument("--out", default=render.RESULTS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    report = {
        "command": " ".join(["python", "benchmarks/setup_time.py", *(argv or sys.argv[1:])]),
        "machine": harness.host(),
        "versions": cost.versions(),
        "variants": {},
    }
    for variant in VARIANTS:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--one", variant],
            capture_output=True,
            text=True,
            check=True,
        )
        report["variants"][variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[setup_time] {variant}: {report['variants'][variant]['seconds']:.1f} s", flush=True)
    keras_seconds = report["variants"]["keras"]["seconds"]
    report["bitat_over_keras"] = report["variants"]["bitat"]["seconds"] / keras_seconds
    print(render.write_report(report, os.path.join(args.out, "setup_time")))


if __name__ == "__main__":
    main()
