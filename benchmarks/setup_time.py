"""Seconds from ``progressive_fit``'s call to its first optimizer step, and where they go,
on ``keras.applications.ResNet50(weights=None)`` at 32x32 (52 binarized convs, 16 blocks).

    python benchmarks/setup_time.py                 # BiTATConfig() defaults
    python benchmarks/setup_time.py --transform none
    python benchmarks/setup_time.py --plain         # Keras' own compile + first step
"""

import argparse
import time
import warnings

import keras
import numpy as np

import bitat_keras as bk
from bitat_keras.fit import progressive


class _FirstStep(keras.callbacks.Callback):
    """Records when the first batch starts and ends, then stops the run."""

    def __init__(self, marks):
        super().__init__()
        self.marks = marks

    def on_train_batch_begin(self, batch, logs=None):
        self.marks.append(("thresholds, statistics, grouping, PCA", time.perf_counter()))

    def on_train_batch_end(self, batch, logs=None):
        self.marks.append(("first step (tracing the train step)", time.perf_counter()))
        raise KeyboardInterrupt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transform", default="aggregated")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    x, y = rng.random((512, 32, 32, 3), dtype="float32"), rng.integers(0, 10, 512)
    start = time.perf_counter()
    if args.plain:
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
        print(f"Keras' compile + first step: {time.perf_counter() - start:.1f} s")
        return
    marks = []
    build = progressive._Algorithm1.__init__

    def timed(self, *a, **k):
        build(self, *a, **k)
        marks.append(("plan, binarize, gated copy, compile", time.perf_counter()))

    progressive._Algorithm1.__init__ = timed
    config = bk.BiTATConfig(batch_size=32, stats_images=64, transform=args.transform)
    try:
        bk.progressive_fit(model, (x, y), config=config, callbacks=[_FirstStep(marks)], verbose=0)
    except KeyboardInterrupt:
        pass
    previous = start
    for label, t in marks:
        print(f"{label:40s} {t - previous:6.1f} s")
        previous = t
    print(f"{'to the first optimizer step':40s} {previous - start:6.1f} s")


if __name__ == "__main__":
    main()
