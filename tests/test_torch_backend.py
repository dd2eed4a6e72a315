"""The training core under KERAS_BACKEND=torch (CPU), without TensorFlow.

torch is not a dependency of bitat-keras: this test skips unless torch is installed
(`pip install torch`). A subprocess (the backend is fixed per process) in which TensorFlow
cannot be imported checks the quantizers' forward values and straight-through gradients
through torch's autograd, trains the baselines, runs progressive_fit (exact binary kernels)
and round-trips the result through `.keras`. Training runs eagerly under torch (no
torch.compile; see `bitat_keras.fit.backend.jit_compile`).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bitat_keras as bk

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import importlib.machinery
    import sys

    class Missing(importlib.abc.Loader):
        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked by the test)")

        def exec_module(self, module):
            pass

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        # `import tensorflow` fails. A spec without origin rather than an error from
        # find_spec, because torch._dynamo probes installed modules with find_spec.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                return importlib.machinery.ModuleSpec(name, Missing())

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import torch
    import keras
    import bitat_keras as bk
    from bitat_keras import baselines
    from keras import ops

    assert keras.backend.backend() == "torch"
    points = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    for quantizer, grad in [
        (bk.quantizers.SteSign(), [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]),
        (bk.quantizers.ApproxSign(), [0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0]),
    ]:
        t = torch.tensor(points, requires_grad=True)
        out = quantizer(t)
        out.sum().backward()
        np.testing.assert_array_equal(out.detach().numpy(), np.where(np.array(points) >= 0, 1, -1))
        np.testing.assert_allclose(t.grad.numpy(), grad, err_msg=type(quantizer).__name__)

    def exact(layer):  # the effective kernel is +-alpha[o] per output channel
        k = ops.convert_to_numpy(layer.quantized_kernel())
        return all(np.unique(np.abs(k[..., o])).size == 1 for o in range(k.shape[-1]))

    x, y = bk.datasets.load("digits", "train")
    x, y = x[:64], y[:64]
    keras.utils.set_random_seed(0)
    fp = bk.models.reactnet_mobilenet((8, 8, 1), num_classes=10, width_multiplier=0.25,
                                      blocks=[(32, 1)])
    names = bk.models.eligible_layers(fp)
    before = ops.convert_to_numpy(fp.get_layer(names[0]).kernel)
    naive, _ = baselines.naive_ste(fp, (x, y), epochs=1, batch_size=32)
    two_step, _ = baselines.reactnet_two_step(fp, (x, y), epochs=2, batch_size=32)
    for model in (naive, two_step):
        layer = model.get_layer(names[0])
        assert np.abs(ops.convert_to_numpy(layer.kernel) - before).max() > 0, "not trained"
        assert exact(layer)

    config = bk.BiTATConfig(epochs_per_layer=1, finetune_epochs=1, batch_size=32, groups=8,
                            stats_images=32, stats_rows=256, bn_recalibration_batches=2)
    result = bk.progressive_fit(fp, (x, y), config=config, verbose=0)
    assert all(exact(result.model.get_layer(name)) for name in names)
    assert [h["phase"] for h in result.history].count("quantize") == len(names) == 2
    assert all(np.isfinite(h["loss"]).all() for h in result.history)
    result.model.save("bitat_torch.keras")
    loaded = keras.saving.load_model("bitat_torch.keras", compile=False)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(x[:8])), ops.convert_to_numpy(result.model(x[:8]))
    )
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("TORCH-OK")
    """
)


def test_training_core_under_torch_without_tensorflow(tmp_path):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (optional): pip install torch")
    root = str(Path(bk.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, "PYTHONPATH": path, "KERAS_BACKEND": "torch"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TORCH-OK" in proc.stdout
