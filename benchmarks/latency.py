"""Single-input latency of a flatbuffer: LCE's interpreter or TensorFlow's TFLite interpreter."""

import time

import numpy as np


def _interpreter(flatbuffer, kind, threads, **options):
    if kind == "lce":
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        return Interpreter(flatbuffer, num_threads=threads, **options)
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def median_latency_ms(flatbuffer, x, *, kind, threads=1, runs=200, warmup=20, **options):
    """Median wall time (ms) of one single-image inference, after ``warmup`` runs.

    Args:
        flatbuffer: model bytes.
        x: one input of shape (1, ...), float32 (int8 models quantize it first).
        kind: "lce" (larq-compute-engine interpreter) or "tflite" (TensorFlow's).
        threads: interpreter threads.
        options: LCE interpreter options, e.g. ``use_indirect_bgemm=True``.
    """
    interp = _interpreter(flatbuffer, kind, threads, **options)
    if kind == "lce":
        run = lambda: interp.predict(x)  # noqa: E731
    else:
        detail = interp.get_input_details()[0]
        xin = x
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            xin = np.clip(np.round(x / scale + zero), -128, 127).astype(detail["dtype"])
        index = detail["index"]

        def run():
            interp.set_tensor(index, xin)
            interp.invoke()

    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)
