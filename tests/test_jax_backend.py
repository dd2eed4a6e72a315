"""The training core runs under KERAS_BACKEND=jax without TensorFlow.

Runs in a subprocess (the backend is fixed per process) in which TensorFlow cannot be
imported at all, as on a GPU machine that has JAX but no TensorFlow. (Keras itself imports
TensorFlow opportunistically when it is installed, e.g. in `serialize_keras_object`.)
Install jax with `pip install -e ".[jax]"` (also in `.[test]`); the test skips without it.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys

    class NoTensorFlow:  # makes `import tensorflow` fail, as if it were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import keras
    import bitat_keras as bk
    from keras import ops

    assert keras.backend.backend() == "jax"
    x, y = bk.datasets.load("digits", "train")
    x, y = x[:96], y[:96]
    model = bk.models.reactnet_mobilenet((8, 8, 1), num_classes=10, width_multiplier=0.25,
                                         blocks=[(64, 1)], binary=True)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = ops.convert_to_numpy(model.get_layer("block1_conv3x3").kernel).copy()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    after = ops.convert_to_numpy(model.get_layer("block1_conv3x3").kernel)
    assert np.abs(after - before).max() > 0, "the binary kernel did not train"

    fp = bk.models.reactnet_mobilenet((8, 8, 1), num_classes=10, width_multiplier=0.25,
                                      blocks=[(64, 1)])
    config = bk.BiTATConfig(epochs_per_layer=1, finetune_epochs=1, batch_size=32, groups=8,
                            stats_images=32, stats_rows=256, bn_recalibration_batches=2)
    result = bk.progressive_fit(fp, (x, y), config=config, verbose=0)
    k = ops.convert_to_numpy(result.model.get_layer("block1_conv1x1_b").quantized_kernel())
    assert all(np.unique(np.abs(k[..., o])).size == 1 for o in range(k.shape[-1]))
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("JAX-OK", len(result.history))
    """
)


def test_training_and_progressive_fit_under_jax_without_tensorflow(tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed: pip install -e '.[jax]'")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JAX-OK 5" in proc.stdout
