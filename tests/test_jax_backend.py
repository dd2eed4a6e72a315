"""The training core runs under KERAS_BACKEND=jax without TensorFlow, and what it trains
deploys through TensorFlow and LCE.

One subprocess (the backend is fixed per process) in which TensorFlow cannot be imported at
all, as on a GPU machine that has JAX but no TensorFlow (Keras itself imports TensorFlow
opportunistically when it is installed, e.g. in `keras.utils.set_random_seed`), trains the
baselines and a progressive_fit run, saves the BiTAT model as `.keras` and its JAX outputs
as `.npy`. This (TensorFlow) process then loads the file in safe mode, converts it with LCE
and checks the flatbuffer against the JAX outputs: the route from GPU training to a phone.
Install jax with `pip install -e ".[jax]"` (also in `.[test]`); the tests skip without it.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import bitat_keras as bk

SCRIPT = textwrap.dedent(
    """
    import gc
    import json
    import sys
    import weakref

    class NoTensorFlow:  # makes `import tensorflow` fail, as if it were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import keras
    import bitat_keras as bk
    from bitat_keras import baselines
    from keras import ops

    def exact(layer):  # the effective kernel is +-alpha[o] per output channel
        k = ops.convert_to_numpy(layer.quantized_kernel())
        return all(np.unique(np.abs(k[..., o])).size == 1 for o in range(k.shape[-1]))

    assert keras.backend.backend() == "jax"
    x, y = bk.datasets.load("digits", "train")
    x, y = x[:64], y[:64]
    keras.utils.set_random_seed(0)
    fp = bk.models.reactnet_mobilenet((8, 8, 1), num_classes=10, width_multiplier=0.25,
                                      blocks=[(32, 1)])
    names = bk.models.eligible_layers(fp)
    before = ops.convert_to_numpy(fp.get_layer(names[0]).kernel)

    # The baselines: binary layers trained by plain fit (naive STE) and by the Distiller.
    naive, _ = baselines.naive_ste(fp, (x, y), epochs=1, batch_size=32)
    two_step, _ = baselines.reactnet_two_step(fp, (x, y), epochs=2, batch_size=32)
    for model in (naive, two_step):
        layer = model.get_layer(names[0])
        assert np.abs(ops.convert_to_numpy(layer.kernel) - before).max() > 0, "not trained"
        assert layer.input_quantizer is not None and exact(layer)
        assert np.isfinite(baselines.accuracy(model, x, y))
    print("BASELINES-OK")

    # Augmented batches without TensorFlow: the numpy pipeline, as training data.
    batches = bk.datasets.augmented_batches(x, y, batch_size=32, seed=1)
    assert isinstance(batches, keras.utils.PyDataset), type(batches)
    augmented, _ = baselines.naive_ste(fp, batches, epochs=1, batch_size=32)
    assert np.isfinite(baselines.accuracy(augmented, x, y))
    print("AUGMENTED-OK")

    # BatchNorm re-estimation (jitted under JAX) against numpy and the eager definition.
    inp = keras.Input((8, 8, 1))
    h = keras.layers.BatchNormalization(name="bn_in")(inp)
    h = keras.layers.Conv2D(4, 3, name="conv")(h)
    h = keras.layers.BatchNormalization(name="bn_conv")(h)
    net = keras.Model(inp, keras.layers.ReLU()(h))
    chunks = [x[i : i + 16] for i in range(0, 64, 16)]
    assert bk.training.recalibrate_batchnorm(net, chunks) == 4
    bn_in, bn_conv = net.get_layer("bn_in"), net.get_layer("bn_conv")
    assert bn_in.momentum == bn_conv.momentum == 0.99
    mean = np.mean([c.mean() for c in chunks])  # one channel: mean of the batch means
    var = np.mean([c.var() for c in chunks])
    np.testing.assert_allclose(ops.convert_to_numpy(bn_in.moving_mean), [mean], rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(bn_in.moving_variance), [var], rtol=1e-5)
    got = ops.convert_to_numpy(bn_conv.moving_variance)
    for count, c in enumerate(chunks, start=1):  # the eager definition: a running mean
        for bn in (bn_in, bn_conv):
            bn.momentum = (count - 1) / count
        net(c, training=True)
    np.testing.assert_allclose(got, ops.convert_to_numpy(bn_conv.moving_variance), rtol=1e-4)
    before = ops.convert_to_numpy(bn_in.moving_mean)  # a subset leaves the others alone
    bk.training.recalibrate_batchnorm(net, chunks[:1], layers=[bn_conv])
    np.testing.assert_array_equal(ops.convert_to_numpy(bn_in.moving_mean), before)
    alive = weakref.ref(net)  # the compiled forward does not keep the network alive
    del net, bn_in, bn_conv
    gc.collect()
    assert alive() is None, "the network outlived its last reference"
    print("BATCHNORM-OK")

    config = bk.BiTATConfig(epochs_per_layer=1, finetune_epochs=1, batch_size=32, groups=8,
                            stats_images=32, stats_rows=256, bn_recalibration_batches=2)
    # In progressive_fit the network's forward also reads the trainer's gates: a gate
    # switched between two re-estimations changes the statistics as in the eager definition.
    from bitat_keras.fit.phase_runner import PhaseRecord, PhaseRunner
    runner = PhaseRunner(fp, (x, y), config, None, [], 0)
    for on in (False, True):
        runner.trainer.set_binary(0, inputs=on, kernel=on)
        runner.bn_stale = True
        runner.recalibrate(PhaseRecord("*", None, "final"), 0)
        got = [ops.convert_to_numpy(bn.moving_variance) for bn in runner.bns]
        batches = runner.data.batches(2, config.seed, runner.data.merge_for())
        for count, c in enumerate(batches, start=1):
            for bn in runner.bns:
                bn.momentum = (count - 1) / count
            bk.structure.call_model(runner.net, c, training=True)
        for bn, g in zip(runner.bns, got):
            bn.momentum = 0.99
            np.testing.assert_allclose(g, ops.convert_to_numpy(bn.moving_variance), rtol=1e-4)
    print("GATED-BATCHNORM-OK")

    result = bk.progressive_fit(fp, (x, y), config=config, verbose=0)
    assert all(exact(result.model.get_layer(name)) for name in names)
    result.model.save("bitat_jax.keras")
    np.save("x.npy", x[:16])
    np.save("jax_outputs.npy", result.model.predict(x[:16], verbose=0))
    with open("run.json", "w") as f:
        json.dump({"binary": names, "phases": [h["phase"] for h in result.history]}, f)
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("JAX-OK")
    """
)


def subprocess_env(**extra):
    """The current environment, with this checkout first on the path (the subprocess must
    import the bitat_keras under test, wherever the package is installed from)."""
    root = str(Path(bk.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """Runs SCRIPT once; returns (folder with its files, stdout)."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed: pip install -e '.[jax]'")
    folder = tmp_path_factory.mktemp("jax_run")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc.stdout


def test_baselines_under_jax_without_tensorflow(jax_run):
    _, out = jax_run
    assert "BASELINES-OK" in out


def test_augmented_batches_under_jax_without_tensorflow(jax_run):
    """augmented_batches falls back to its numpy pipeline, and the baselines train on it."""
    _, out = jax_run
    assert "AUGMENTED-OK" in out


def test_batchnorm_reestimation_under_jax_matches_numpy_and_the_eager_loop(jax_run):
    """The jitted re-estimation gives each BatchNorm the mean of its batch statistics: the
    first one's against numpy, the one after a conv's against the eager running mean."""
    _, out = jax_run
    assert "\nBATCHNORM-OK" in out


def test_batchnorm_reestimation_under_jax_reads_the_phase_gates(jax_run):
    """progressive_fit re-estimates through its trainer, so the reused traced forward takes
    the gates (variables of the trainer, not of the network) as arguments: re-estimated
    after a gate switch, the statistics match the eager definition (a forward traced with
    the network alone keeps the gates of its first trace)."""
    _, out = jax_run
    assert "GATED-BATCHNORM-OK" in out


def test_progressive_fit_under_jax_without_tensorflow(jax_run):
    folder, out = jax_run
    assert "JAX-OK" in out
    run = json.loads((folder / "run.json").read_text())
    assert run["binary"] == ["block1_conv3x3", "block1_conv1x1"]
    assert run["phases"].count("quantize") == 2


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="LCE conversion needs KERAS_BACKEND=tensorflow"
)
def test_jax_trained_model_loads_and_converts_under_tensorflow(jax_run):
    """JAX training -> .keras -> TensorFlow (safe mode) -> LCE flatbuffer, checked against
    the outputs the JAX process computed (relative tolerance 1e-3, as in test_export.py:
    the interpreter folds BatchNorm and computes the binary convs with integer popcounts)."""
    folder, _ = jax_run
    binary = json.loads((folder / "run.json").read_text())["binary"]
    model = keras.saving.load_model(folder / "bitat_jax.keras", compile=False, safe_mode=True)
    assert bk.export.binary_conv_layers(model) == binary  # binary in both quantizers
    x, expected = np.load(folder / "x.npy"), np.load(folder / "jax_outputs.npy")
    scale = float(np.abs(expected).max())
    assert scale > 0.1, "degenerate outputs: the parity check would be vacuous"
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-3 * scale)

    flatbuffer = bk.convert_keras_model(model)
    assert bk.inspect_tflite(flatbuffer)["ops"].get("LceBconv2d") == len(binary)
    assert bk.verify_tflite(model, flatbuffer, x) < 1e-3 * scale
    lce = bk.export.LceInterpreter(flatbuffer).predict(x)
    np.testing.assert_allclose(lce, expected, atol=1e-3 * scale)
