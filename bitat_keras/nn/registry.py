"""Shared helpers for registering serializable classes and resolving names."""

import keras

PACKAGE = "bitat_keras"


def register(cls):
    """Register `cls` with Keras so `.keras` files load without `custom_objects`."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def resolve(identifier, aliases, kind):
    """Turn `None`, an alias string, a config dict or an instance into an object.

    Args:
        identifier: the user's value.
        aliases: mapping of accepted string names to classes.
        kind: what is being resolved, used in error messages ("quantizer", ...).
    """
    if identifier is None or callable(identifier) and not isinstance(identifier, str):
        return identifier
    if isinstance(identifier, str):
        if identifier not in aliases:
            raise ValueError(
                f"Unknown {kind} {identifier!r}. Expected one of {sorted(aliases)}, "
                f"None, a config dict or a callable."
            )
        return aliases[identifier]()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise TypeError(
        f"Could not interpret {kind} identifier: {identifier!r} "
        f"(type {type(identifier).__name__}). "
        f"Expected a string in {sorted(aliases)}, a dict, a callable or None."
    )


def serialize(obj):
    """Serialize an optional object for `get_config`."""
    return None if obj is None else keras.saving.serialize_keras_object(obj)
