"""Mixed precision: binarization and LCE export compute in float32.

A model built under ``mixed_float16`` / ``mixed_bfloat16`` computes its layers in 16 bits;
LCE's converter then does not recognise the binary convolutions (their padding and sign
ops arrive as half-precision casts), and a sign in 16 bits gains nothing. So every model
this library builds from a user's model (``binarize``, ``progressive_fit``, the baselines)
is float32: layers cloned with ``float32_config`` under ``float32_policy``, the weights
(float32 variables under any mixed policy) copied as they are.
"""

import contextlib

import keras

__all__ = ["float32_config", "float32_policy", "mixed_precision_of"]


def mixed_precision_of(model):
    """The name of the first non-float32 compute policy among ``model``'s layers or the
    global policy, or None when everything computes in float32."""
    policies = [keras.config.dtype_policy()]
    policies += [getattr(layer, "dtype_policy", None) for layer in model.layers]
    for policy in policies:
        if policy is not None and getattr(policy, "compute_dtype", "float32") != "float32":
            return policy.name
    return None


@contextlib.contextmanager
def float32_policy():
    """Build layers under the float32 policy, restoring the global policy afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_config(config):
    """A layer config with its dtype policy set to float32 (a copy)."""
    config = dict(config)
    if "dtype" in config:
        config["dtype"] = "float32"
    return config
