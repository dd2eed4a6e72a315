"""A model's structure as binarization sees it: its layers, which convs can be binarized
(and why the others stay float), and the graph around each conv (shortcuts, ReLU inputs).

Shared by ``models`` (``binarize``), ``plan``, ``summary`` and export, so that none of them
imports another.
"""

import keras

from bitat_keras.nn.layers import BinaryConv2D

__all__ = [
    "call_model",
    "check_model",
    "eligible_layers",
    "flatten_model",
    "float_reason",
    "has_shortcut",
    "is_conv",
    "model_inputs",
    "predecessors",
    "relu_fed",
    "require_graph",
    "walk_layers",
]

_L = keras.layers
# Every convolution family, for the plan (the first conv is the first of any kind).
_CONVS = (
    _L.Conv1D, _L.Conv2D, _L.Conv3D, _L.Conv1DTranspose, _L.Conv2DTranspose,
    _L.Conv3DTranspose, _L.DepthwiseConv1D, _L.DepthwiseConv2D, _L.SeparableConv1D,
    _L.SeparableConv2D,
)  # fmt: skip
# Layers that pass a tensor on without mixing positions or channels: a conv's input seen
# through them is still the output of the layer before them.
_PASS_THROUGH = (
    _L.MaxPooling2D, _L.AveragePooling2D, _L.ZeroPadding2D, _L.Dropout, _L.SpatialDropout2D,
    _L.Cropping2D, _L.UpSampling2D, _L.Identity,
)  # fmt: skip
_RELU_NAMES = ("relu", "relu6")
# Merges that add a path around a conv (a concatenation does not).
_SHORTCUT_MERGES = (_L.Add, _L.Subtract, _L.Average)


def walk_layers(layer):
    """Yield every sub-layer of ``layer`` (nested models included), depth first."""
    for sub in getattr(layer, "layers", None) or ():
        yield sub
        yield from walk_layers(sub)


def require_graph(model):
    """Raise unless ``model`` is a functional or Sequential model, whose layers and their
    wiring can be read (a subclassed model's ``call`` is Python code)."""
    graph = isinstance(model, keras.Sequential) or any(
        cls.__name__ == "Functional" for cls in type(model).__mro__
    )
    if not graph:
        raise ValueError(
            f"Model {model.name!r} is a subclassed keras.Model ({type(model).__name__}): its "
            "call() is Python code, so the order and wiring of its layers cannot be read and "
            "no conv in it can be replaced. Build the same layers as a functional model "
            "(call them on a keras.Input) or a Sequential one, and copy the weights over "
            "with set_weights()."
        )


def _is_tensor_spec(obj):
    """Whether ``obj`` is a tensor in a serialized node's arguments (with its history)."""
    return (
        isinstance(obj, dict)
        and obj.get("class_name") == "__keras_tensor__"
        and bool(obj.get("config", {}).get("keras_history"))
    )


def _resolve(obj, tensors):
    """A serialized node's arguments with every tensor spec replaced by its tensor."""
    if _is_tensor_spec(obj):
        return tensors[tuple(obj["config"]["keras_history"])]
    if isinstance(obj, dict):
        return {k: _resolve(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v, tensors) for v in obj)
    return obj


def _replay(model, inputs, copy, call):
    """Call copies of a functional ``model``'s layers on ``inputs`` (tensors of another
    graph), node by node as its config wires them; the outputs, shaped as ``model``'s."""
    config = model.get_config()

    def history(spec):
        return tuple(spec["config"]["keras_history"])

    def keys(specs):  # ["name", node, tensor] or a list of them
        return [tuple(specs)] if isinstance(specs[0], str) else [tuple(k) for k in specs]

    tensors = dict(zip(keys(config["input_layers"]), keras.tree.flatten(inputs), strict=True))
    pending = [
        (spec["name"], index, node)
        for spec in config["layers"]
        if spec["class_name"] != "InputLayer"
        for index, node in enumerate(spec["inbound_nodes"])
    ]
    copies = {}
    while pending:
        ready = [p for p in pending if all(
            history(t) in tensors for t in _tensor_specs(p[2]))]  # fmt: skip
        if not ready:
            raise ValueError(f"Cannot read the graph of model {model.name!r} from its config.")
        for name, index, node in ready:
            if name not in copies:
                copies[name] = copy(model.get_layer(name))
            args, kwargs = _resolve(node["args"], tensors), _resolve(node["kwargs"], tensors)
            out = call(copies[name], *args, **kwargs)
            for i, tensor in enumerate(keras.tree.flatten(out)):
                tensors[(name, index, i)] = tensor
        pending = [p for p in pending if p not in ready]
    outputs = [tensors[k] for k in keys(config["output_layers"])]
    return outputs[0] if isinstance(config["output_layers"][0], str) else outputs


def _tensor_specs(obj):
    if _is_tensor_spec(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensor_specs(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensor_specs(v)]
    return []


def flatten_model(model):
    """``model`` with every nested functional or Sequential sub-model (at any depth)
    replaced by its layers, called on the outer model's tensors, so that binarization sees
    every conv; ``model`` itself when it nests no model. The new model's layers are copies
    with the same weights (a sub-model's layer whose name another layer already has gets
    the sub-model's name as a prefix); the user's model is left as it is.

    Example:
        >>> base = keras.applications.MobileNet((32, 32, 3), alpha=0.25, weights=None,
        ...                                     include_top=False, pooling="avg")
        >>> flat = flatten_model(keras.Sequential([base, keras.layers.Dense(10)]))
    """
    require_graph(model)
    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model
    for layer in walk_layers(model):
        if isinstance(layer, keras.Model):
            require_graph(layer)
    names = set()
    pairs = []  # (original layer, its copy), to copy the weights once the graph is built

    def copy(layer, prefix=""):
        if isinstance(layer, keras.Model):
            return layer  # inlined by ``call``
        config = layer.get_config()
        name = config["name"]
        if name in names:
            name = f"{prefix}_{name}" if prefix else name
            while name in names:
                name += "_"
        names.add(name)
        config["name"] = name
        new = layer.__class__.from_config(config)
        pairs.append((layer, new))
        return new

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.Model):
            return inline(layer, args[0])
        return layer(*args, **kwargs)

    def inline(sub, inputs, prefix=None):
        prefix = sub.name if prefix is None else prefix
        if isinstance(sub, keras.Sequential):
            x = inputs
            for layer in sub.layers:
                x = call(copy(layer, prefix), x)
            return x
        return _replay(sub, inputs, lambda layer: copy(layer, prefix), call)

    spec = model.inputs[0]
    inputs = keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name=spec.name)
    outputs = inline(model, inputs, prefix="")
    for original, new in pairs:
        new.set_weights(original.get_weights())
    return keras.Model(inputs, outputs, name=model.name)


def is_conv(layer):
    """Whether ``layer`` is a convolution of any kind (1-3 D, depthwise, separable,
    transposed)."""
    return isinstance(layer, _CONVS)


def float_reason(layer, first, head):
    """Why ``layer`` stays float, or None when ``binarize`` turns it into a
    ``BinaryConv2D``.

    Args:
        layer: a layer with weights.
        first: the model's first conv (it sees the raw image).
        head: the model's last weighted layer (the classifier).
    """
    if layer is first and is_conv(layer):
        return "first conv (sees the raw input)"
    if layer is head:
        return "classifier (last weighted layer)"
    if isinstance(layer, _L.Dense):
        return "dense (LCE has no binary dense kernel)"
    if isinstance(layer, _L.DepthwiseConv2D | _L.DepthwiseConv1D):
        return "depthwise (LCE has no binary depthwise kernel)"
    if isinstance(layer, _L.SeparableConv2D | _L.SeparableConv1D):
        return "separable (LCE binarizes regular convs only)"
    if isinstance(layer, _L.Conv1DTranspose | _L.Conv2DTranspose | _L.Conv3DTranspose):
        return "transposed (LCE binarizes regular convs only)"
    if isinstance(layer, _L.Conv1D | _L.Conv3D):
        return f"{len(layer.kernel_size)}-D conv (LCE binarizes 2-D convs only)"
    if type(layer) not in (_L.Conv2D, BinaryConv2D):
        return f"{type(layer).__name__} (a Conv2D subclass this library does not rebuild)"
    if getattr(layer, "groups", 1) != 1:
        return f"grouped (groups={layer.groups})"
    if tuple(layer.dilation_rate) != (1, 1):
        return (
            f"dilated (dilation_rate={tuple(layer.dilation_rate)}; BiTAT's input statistics "
            "need undilated kernels)"
        )
    if layer.data_format != "channels_last":
        return "channels_first (LCE is NHWC)"
    return None


def _ends(model):
    weighted = [layer for layer in model.layers if layer.weights]
    convs = [layer for layer in weighted if is_conv(layer)]
    return weighted, (convs[0] if convs else None), (weighted[-1] if weighted else None)


def decisions(model):
    """``[(layer, reason)]`` for every conv and dense layer of ``model``, bottom to top;
    ``reason`` is None for the layers ``binarize`` binarizes."""
    weighted, first, head = _ends(model)
    return [
        (layer, float_reason(layer, first, head))
        for layer in weighted
        if is_conv(layer) or isinstance(layer, _L.Dense)
    ]


def eligible_layers(model):
    """Names of the convs `binarize` turns binary, bottom to top.

    Every regular, undilated ``Conv2D`` (groups=1; no depthwise, separable or transposed
    conv) except the first conv of the model and a conv that is the model's last weighted
    layer (the classifier). ``bk.plan`` says why each other layer stays float.
    """
    return [layer.name for layer, reason in decisions(model) if reason is None]


def predecessors(model):
    """``{layer name: [names of the layers feeding it]}`` for a functional or Sequential
    model (read from its config); None when the graph cannot be read (subclassed models)."""
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        return {name: names[i - 1 : i] for i, name in enumerate(names)}
    try:
        config = model.get_config()
    except (NotImplementedError, TypeError, ValueError):
        return None
    if not isinstance(config, dict) or "layers" not in config:
        return None
    return {
        spec["name"]: list(
            dict.fromkeys(
                t["config"]["keras_history"][0]
                for t in _tensor_specs(spec.get("inbound_nodes", []))
            )
        )
        for spec in config["layers"]
    }


def _successors(preds):
    out = {name: [] for name in preds}
    for name, inputs in preds.items():
        for src in inputs:
            out.setdefault(src, []).append(name)
    return out


def has_shortcut(model, name, preds=None):
    """Whether the output of conv ``name`` reaches an ``Add`` (or ``Subtract``,
    ``Average``) before any other weighted conv or dense layer: a path around the conv
    that carries the real-valued signal past its binarization error (ReActNet's design).
    None when the graph cannot be read."""
    preds = predecessors(model) if preds is None else preds
    if preds is None:
        return None
    succ = _successors(preds)
    seen, todo = set(), list(succ.get(name, []))
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        layer = model.get_layer(current)
        if isinstance(layer, _SHORTCUT_MERGES):
            return True
        if is_conv(layer) or isinstance(layer, _L.Dense):
            continue
        todo.extend(succ.get(current, []))
    return False


def _is_relu(layer):
    if isinstance(layer, _L.ReLU):
        return layer.negative_slope == 0 and (layer.threshold or 0) >= 0
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) in _RELU_NAMES


def relu_fed(model, name, preds=None):
    """Whether conv ``name``'s input comes out of a ReLU or ReLU6 (a ``ReLU`` layer, an
    ``Activation("relu")`` or a layer with ``activation="relu"``), through pooling, padding
    or dropout only: its values are then >= 0 and ``sign`` maps them all to +1."""
    preds = predecessors(model) if preds is None else preds
    if preds is None:
        return False
    current = preds.get(name, [])
    while len(current) == 1:
        layer = model.get_layer(current[0])
        if _is_relu(layer):
            return True
        if not isinstance(layer, _PASS_THROUGH):
            return False
        current = preds.get(layer.name, [])
    return False


def check_model(model, what="model", training=True):
    """Raise a clear error, before any work, unless ``model`` is a built ``keras.Model``
    this library can handle.

    For conversion (``training=False``) that is any built model. For ``progressive_fit``
    (``training=True``) also: one input. (Nested sub-models are inlined by
    ``flatten_model``.)

    Args:
        model: the object to check.
        what: the argument's name in error messages.
        training: check what ``progressive_fit`` needs too.

    Example:
        >>> check_model(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)]))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{what}` must be a keras.Model (functional or Sequential). "
            f"Received: {model!r} of type {type(model).__name__}"
        )
    if training:
        require_graph(model)
    if not model.built or (training and not getattr(model, "inputs", None)):
        raise ValueError(
            f"Model {model.name!r} is not built: give it a `keras.Input` (a functional or "
            "Sequential model with a known input shape) before passing it."
        )
    if not training:
        return
    if len(model.inputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(model.inputs)} inputs; progressive_fit needs a "
            "model with exactly one image input."
        )


def call_model(model, x, training=False):
    """``model(x)``, with ``x`` wrapped in a list for a functional model built on a list of
    one input (``keras.Model([inp], out)``: Keras warns when it gets a bare tensor)."""
    return model(model_inputs(model, x), training=training)


def model_inputs(model, x):
    """``x`` as ``model`` takes it: wrapped in a list for a functional model built on a list
    of one input, else as it is."""
    try:
        as_list = isinstance(model.input, list | tuple)
    except (AttributeError, ValueError):  # a Sequential model never called
        as_list = False
    return [x] if as_list else x
