"""Figures of the BiTAT paper drawn from a ``BiTATResult`` (matplotlib, headless-safe).

- :func:`dependency_heatmaps`: the learned V and diag(s) V^T of one block (Fig. 6).
- :func:`kmeans_groups`: the k-means groups of a layer's input dimensions (Fig. 7 right).
- :func:`layer_history`: accuracy, loss and penalty through ``progressive_fit`` (Alg. 1).
- :func:`quantization_ratio`: Q_orig, Q_ours and Q_ours / Q_orig per layer (Fig. 8, Sec. 7.4).
- :func:`save_all`: all of the above as PNG files.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure
state, no GUI backend needed; Jupyter still displays it) and saves it when given ``path``.
matplotlib is imported inside the functions, so importing this module costs nothing.

Example:
    >>> from bitat_keras import plots
    >>> result = bk.progressive_fit(fp, (x, y), config=config)  # doctest: +SKIP
    >>> plots.save_all(result, "figures", fp_model=fp, images=x[:256])  # doctest: +SKIP
"""

import collections.abc
import math
import os

import numpy as np

from bitat_keras import caller
from bitat_keras.fit.progressive import BiTATResult

_PHASE_MARKERS = {"quantize": "o", "finetune": "s", "activations": "^", "final": "D"}
_DPI = 150


# --------------------------------------------------------------------------------------------
# Shared helpers.


def _new_figure(figsize, nrows=1, ncols=1, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _check_path(path):
    if path is not None and not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"`path` must be a file path (str or os.PathLike). Received: {type(path).__name__}, "
            "expected e.g. 'figure.png'."
        )


def _save(fig, path, dpi=_DPI):
    if path is None:
        return
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    _savefig(fig, path, dpi)


def _savefig(fig, path, dpi):
    # "tight" keeps the outermost labels whole (constrained layout leaves them on the edge).
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08)


def _check_result(result, what="result"):
    if not isinstance(result, BiTATResult):
        raise TypeError(
            f"`{what}` must be the BiTATResult returned by bk.progressive_fit. "
            f"Received: {type(result).__name__}"
        )


def _short(name, width=18):
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _check_axes(axes, count, what):
    """``axes`` given by the caller: one Axes (count 1) or a sequence of ``count`` Axes."""
    from matplotlib.axes import Axes

    if count == 1 and isinstance(axes, Axes):
        return [axes]
    seq = list(axes) if isinstance(axes, list | tuple | np.ndarray) else None
    if seq is None or len(seq) != count or not all(isinstance(a, Axes) for a in seq):
        expected = "a matplotlib Axes" if count == 1 else f"a sequence of {count} matplotlib Axes"
        raise TypeError(f"`{what}` must be {expected}. Received: {axes!r}")
    if any(a.figure is not seq[0].figure for a in seq):
        raise ValueError(f"`{what}` must all belong to one figure. Received: {axes!r}")
    return seq


# --------------------------------------------------------------------------------------------
# Fig. 6: the learned V and diag(s) V^T of a block.


def _block_transform(result_or_transform, block):
    if isinstance(result_or_transform, BiTATResult):
        transforms = result_or_transform.transforms
        if not transforms:
            raise ValueError(
                "The result has no transform blocks (received result.transforms=[], expected "
                "at least one block: run progressive_fit to the end)."
            )
        if isinstance(block, bool) or not isinstance(block, int | np.integer):
            raise TypeError(f"`block` must be an int. Received: {block!r}")
        if not 0 <= block < len(transforms):
            raise ValueError(
                f"Received block={block}, expected 0 <= block < {len(transforms)} (the result "
                f"has {len(transforms)} blocks: {[t['layers'] for t in transforms]})."
            )
        t = transforms[block]
    elif isinstance(result_or_transform, collections.abc.Mapping):
        t = result_or_transform
        missing = [key for key in ("layers", "s", "v", "ks") if key not in t]
        if missing:
            raise ValueError(
                f"The transform block lacks {missing}. Received keys {sorted(t)}, expected "
                "those of result.transforms[i]: layers, s, v, ids, ks, dims."
            )
    else:
        raise TypeError(
            "`result_or_transform` must be a BiTATResult or one block of its `transforms` (a "
            "TrainedBlock, or a mapping with the same keys). "
            f"Received: {type(result_or_transform).__name__}"
        )
    if t["s"] is None or t["v"] is None:
        raise ValueError(
            f"Block {t['layers']} has no s and V (received s=None, V=None; expected the "
            "arrays of a run with transform != 'none', which trains no transform)."
        )
    s, v = np.asarray(t["s"], dtype=np.float64), np.asarray(t["v"], dtype=np.float64)
    ks = [int(k) for k in t["ks"]]
    total = sum(ks)
    if s.shape != (total,) or v.shape != (total, total):
        raise ValueError(
            f"Received s of shape {s.shape} and V of shape {v.shape}, expected ({total},) and "
            f"({total}, {total}) for ks={ks}."
        )
    return t, s, v, ks


def _segments(ks):
    edges = np.concatenate([[0], np.cumsum(ks)]).astype(int)
    return list(zip(edges[:-1], edges[1:], strict=True))


def dependency_heatmaps(
    result_or_transform, block=0, *, sort=False, log=False, cmap="RdBu_r", axes=None, path=None
):
    """Heatmaps of a block's learned V and diag(s) V^T (paper Fig. 6).

    V (K x K) maps the block's stacked, P-reduced input dimensions (rows; each layer's k_j
    groups in block order, Eq. 11-12) to transformed components (columns); diag(s) V^T
    weights each component by its importance s (Eq. 6). Lines mark the boundaries of the
    member layers: entries off the diagonal blocks are cross-layer dependencies, which
    start at zero (Eq. 11) and are learned during the quantization phases.

    Args:
        result_or_transform: a ``BiTATResult`` or one block of ``result.transforms``
            (a ``TrainedBlock``, or a dict with its keys).
        block: index of the block when given a result (ignored for a dict).
        sort: if True, order the components inside each layer by increasing s, as the
            paper draws Fig. 6; otherwise keep the stored order (the PCA initialisation
            sorts each layer's components by decreasing eigenvalue).
        log: if True, a symmetric-log colour scale (linear within 1e-3 of the largest
            |entry|), which shows small cross-layer entries next to large ones.
        cmap: a diverging colormap; colour limits are symmetric around 0.
        axes: optional two matplotlib Axes (V, diag(s) V^T) to draw into.
        path: optional file to save the figure to (e.g. ``"block0.png"``).

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> fig = plots.dependency_heatmaps(result, block=0, path="v_block0.png")  # doctest: +SKIP
    """
    from matplotlib.colors import Normalize, SymLogNorm

    _check_path(path)
    t, s, v, ks = _block_transform(result_or_transform, block)
    segments = _segments(ks)
    scaled = s[:, None] * v.T  # diag(s) V^T of Eq. 6: row i is component i scaled by s_i
    if sort:  # Fig. 6: "the row of V^T is sorted by the relative importance in increasing order"
        order = np.concatenate([a + np.argsort(s[a:b], kind="stable") for a, b in segments])
        v, scaled = v[:, order], scaled[order, :]
    if axes is None:
        fig, grid = _new_figure((11.5, 5.2), 1, 2)
        axes = list(grid[0])
    else:
        axes = _check_axes(axes, 2, "axes")
        fig = axes[0].figure
    names = [_short(n) for n in t["layers"]]
    centres = [(a + b - 1) / 2 for a, b in segments]
    panels = (
        (v, "V (Eq. 10-11)", "transformed component", "reduced input dim (rows of P W)"),
        (scaled, "diag(s) Vᵀ (Eq. 6)", "reduced input dim (rows of P W)", "component"),
    )
    for ax, (data, title, xlabel, ylabel) in zip(axes, panels, strict=True):
        vmax = float(np.max(np.abs(data))) or 1.0
        if log:
            norm = SymLogNorm(linthresh=1e-3 * vmax, vmin=-vmax, vmax=vmax)
        else:
            norm = Normalize(vmin=-vmax, vmax=vmax)
        image = ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest")
        for edge in np.cumsum(ks)[:-1]:  # member-layer boundaries (block structure)
            ax.axhline(edge - 0.5, color="black", linewidth=1.2)
            ax.axvline(edge - 0.5, color="black", linewidth=1.2)
        ax.set_xticks(centres, names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(centres, names, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title + (", sorted by s" if sort else "") + (", symlog" if log else ""))
        ticks = None
        if log:  # three decades each side and 0; the default locator crowds around 0
            top = math.floor(math.log10(vmax))
            decades = [10.0**e for e in range(top, top - 3, -1)]
            ticks = sorted([-t for t in decades] + [0.0] + decades)
        fig.colorbar(image, ax=ax, shrink=0.85, ticks=ticks)
    which = f"block {block}" if isinstance(result_or_transform, BiTATResult) else "block"
    fig.suptitle(
        f"BiTAT {which}: {', '.join(t['layers'])} (k = {'+'.join(map(str, ks))})\n"
        "off-diagonal squares = cross-layer dependencies (Fig. 6)",
        fontsize=10,
    )
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 7 right: the k-means groups over a layer's filters.


def _layer_groups(result, layer_name):
    _check_result(result)
    if not isinstance(layer_name, str):
        raise TypeError(f"`layer_name` must be a str. Received: {type(layer_name).__name__}")
    members = {}
    for t in result.transforms:
        for name, ids, k in zip(t["layers"], t["ids"], t["ks"], strict=True):
            members[name] = (ids, int(k))
    if layer_name not in members:
        raise ValueError(
            f"Received layer_name={layer_name!r}, expected one of the binarized layers in "
            f"result.transforms: {sorted(members)}"
        )
    ids, k = members[layer_name]
    if ids is None:
        grouped = [name for name, (i, _) in members.items() if i is not None]
        raise ValueError(
            f"Layer {layer_name!r} has no k-means groups (received ids=None: P = I, its "
            f"{k} input dims were not aggregated, since d <= groups or transform is not "
            f"'aggregated'); expected one of the grouped layers: {grouped}"
        )
    ids = np.asarray(ids).astype(int)
    kernel = result.model.get_layer(layer_name).kernel
    kh, kw, cin = (int(n) for n in kernel.shape[:3])
    if ids.size != kh * kw * cin:
        raise ValueError(
            f"Layer {layer_name!r}: received {ids.size} group ids, expected kh*kw*cin = "
            f"{kh * kw * cin} for its kernel of shape {tuple(kernel.shape)}."
        )
    return ids, k, (kh, kw, cin)


def _group_colormap(k):
    import matplotlib
    from matplotlib.colors import ListedColormap

    # tab10's distinct hues first, then tab20's light shades, then tab20b/tab20c: 60 colours.
    colors = list(matplotlib.colormaps["tab10"].colors)
    colors += list(matplotlib.colormaps["tab20"].colors[1::2])
    for name in ("tab20b", "tab20c"):
        colors += list(matplotlib.colormaps[name].colors)
    if k > len(colors):  # many groups: spread hues, neighbouring ids far apart on the wheel
        hsv = matplotlib.colormaps["hsv"]
        colors = [hsv((i * 0.618033988749895) % 1.0) for i in range(k)]
    return ListedColormap(colors[:k], name=f"groups{k}")


def kmeans_groups(result, layer_name, *, channels=32, columns=8, annotate=True, path=None):
    """Draw a layer's k-means groups over its filters (paper Fig. 7 right, Sec. 4.2).

    Group ids (``result.transforms[i]["ids"]``) assign each of the d = kh*kw*cin input
    dimensions of the layer's kernel, in the kernel's (kh, kw, cin) row-major order, to one
    of k groups (the rows of the reduction matrix P). For a kh x kw kernel each tile is the
    kh x kw filter of one input channel coloured by group id; for a 1x1 kernel each cell is
    one input channel. The title gives the mean number of distinct groups per filter (the
    paper reports four to five for 3x3 filters).

    Args:
        result: the ``BiTATResult`` of a run with ``transform="aggregated"`` (or "filter").
        layer_name: a binarized layer whose input dims were grouped (d > groups).
        channels: draw the first this many input channels.
        columns: tiles per row.
        annotate: write each cell's group id into it (only for up to 64 cells per tile).
        path: optional file to save the figure to.

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        TypeError: ``result`` is not a BiTATResult.
        ValueError: the layer is not in the result, or it has no groups (P = I).

    Example:
        >>> fig = plots.kmeans_groups(result, "block13_conv3x3", channels=16)  # doctest: +SKIP
    """
    _check_path(path)
    for name, value in (("channels", channels), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Received {name}={value!r}, expected an integer >= 1.")
    ids, k, (kh, kw, cin) = _layer_groups(result, layer_name)
    tiles = ids.reshape(kh, kw, cin)  # Keras kernel layout: row (i*kw + j)*cin + c
    cmap = _group_colormap(k)
    n = min(channels, cin)
    style = dict(cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
    distinct = np.mean([np.unique(tiles[:, :, c]).size for c in range(cin)])
    if kh * kw == 1:  # 1x1 kernel: one cell per input channel
        rows = math.ceil(n / columns)
        grid = np.full(rows * columns, np.nan)
        grid[:n] = tiles[0, 0, :n]
        grid = grid.reshape(rows, columns)
        fig, axs = _new_figure((max(0.55 * columns + 2.6, 5.5), 0.55 * rows + 2.4))
        ax = axs[0, 0]
        image = ax.imshow(grid, **style)
        if annotate:
            for c in range(n):
                column, row = c % columns, c // columns
                ax.text(column, row, str(tiles[0, 0, c]), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(columns))
        ax.set_yticks(range(rows), [str(r * columns) for r in range(rows)])
        ax.set_xlabel("input channel (+ column)")
        ax.set_ylabel("input channel (row start)")
        tile_axes = [ax]
        detail = f"1x1 kernel: one cell per input channel, the first {n} of {cin}"
    else:
        rows = math.ceil(n / columns)
        cols = min(columns, n)
        size = 0.32 * max(kh, kw) ** 0.5
        fig, axs = _new_figure((size * cols * 1.45 + 1.6, size * rows * 1.35 + 1.4), rows, cols)
        tile_axes = []
        for c, ax in enumerate(axs.ravel()):
            if c >= n:
                ax.set_axis_off()
                continue
            image = ax.imshow(tiles[:, :, c], **style)
            if annotate and kh * kw <= 64:
                for i in range(kh):
                    for j in range(kw):
                        label = str(tiles[i, j, c])
                        ax.text(j, i, label, ha="center", va="center", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"in {c}", fontsize=7, pad=2)
            tile_axes.append(ax)
        fig.supxlabel(f"kernel column (kw = {kw}); one tile per input channel", fontsize=9)
        fig.supylabel(f"kernel row (kh = {kh})", fontsize=9)
        detail = (
            f"{kh}x{kw} filters of the first {n} of {cin} input channels; "
            f"{distinct:.1f} distinct groups per filter on average"
        )
    ticks = range(k) if k <= 20 else None
    bar = fig.colorbar(image, ax=tile_axes, ticks=ticks, shrink=0.9)
    bar.set_label("k-means group id (row of P)")
    fig.suptitle(
        f"k-means groups of {layer_name} (Fig. 7 right): k = {k} groups of d = {ids.size} "
        f"input dims\n{detail}",
        fontsize=9,
    )
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Algorithm 1's progress: per-layer accuracy, loss and penalty.


def _history(result):
    if isinstance(result, BiTATResult):
        history = result.history
    elif isinstance(result, list | tuple):
        history = list(result)
    else:
        raise TypeError(
            "`result` must be a BiTATResult or its `history` list. "
            f"Received: {type(result).__name__}"
        )
    if not history:
        raise ValueError("Received an empty history, expected at least one phase record.")
    for i, record in enumerate(history):
        if (
            not isinstance(record, collections.abc.Mapping)
            or "phase" not in record
            or "layer" not in record
        ):
            raise ValueError(
                f"Received history[{i}] = {record!r}, expected a progressive_fit record with "
                "'layer', 'phase', 'loss', 'accuracy' keys."
            )
    return history


def _last(values):
    """The end-of-phase value of a per-epoch list (or a scalar); NaN when absent."""
    if values is None:
        return np.nan
    if isinstance(values, list | tuple):
        return float(values[-1]) if values else np.nan
    return float(values)


def layer_history(result, *, axes=None, path=None):
    """Accuracy, loss and dependency penalty after each phase of ``progressive_fit``.

    The x axis is the phase step in order (Algorithm 1: quantize layer l, then fine-tune the
    layers above); markers tell the phases apart (o quantize, s fine-tune, ^ the optional
    activation phase). Training values are those of each phase's last epoch; validation
    values (dashed) appear when ``validation_data`` was given. The third panel is the
    Eq. 13 penalty lam * ||diag(s) V^T P (W - Q(W))||^2 at the end of each quantize phase;
    the fourth, when the history has it, the fraction of the trained binary kernels' signs
    that flipped during each phase (``flip_rate``, averaged over the layers): near 0 the
    signs are frozen, near 0.5 they are random.

    Args:
        result: a ``BiTATResult`` or its ``history`` list.
        axes: optional three (accuracy, loss, penalty) or four (and sign flips) matplotlib
            Axes to draw into.
        path: optional file to save the figure to.

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> fig = plots.layer_history(result, path="history.png")  # doctest: +SKIP
    """
    from matplotlib.lines import Line2D

    _check_path(path)
    history = _history(result)
    steps = np.arange(len(history))
    phases = [r["phase"] for r in history]
    series = {
        "accuracy": [_last(r.get("accuracy")) for r in history],
        "val_accuracy": [_last(r.get("val_accuracy")) for r in history],
        "loss": [_last(r.get("loss")) for r in history],
        "val_loss": [_last(r.get("val_loss")) for r in history],
        "penalty": [_last(r.get("penalty")) for r in history],
        "flip_rate": [
            float(np.mean(list(r["flip_rate"].values()))) if r.get("flip_rate") else np.nan
            for r in history
        ],
    }
    flips = not np.all(np.isnan(series["flip_rate"]))
    if axes is None:
        rows = 4 if flips else 3
        size = (max(6.5, 0.45 * len(history) + 3), 2.7 * rows)
        fig, grid = _new_figure(size, rows, 1, sharex=True)
        axes = list(grid[:, 0])
    else:
        count = 4 if isinstance(axes, list | tuple | np.ndarray) and len(axes) == 4 else 3
        axes = _check_axes(axes, count, "axes")
        fig = axes[0].figure
    panels = [  # (axes, label, series, colour, log scale when every value is positive)
        (axes[0], "accuracy", ("accuracy", "val_accuracy"), "C0", False),
        (axes[1], "loss (train: task + Eq. 13 terms)", ("loss", "val_loss"), "C1", True),
        (axes[2], "penalty (Eq. 13)", ("penalty",), "C2", True),
    ]
    if len(axes) == 4:
        panels.append((axes[3], "sign flips in the phase", ("flip_rate",), "C3", False))
    for ax, ylabel, keys, color, log in panels:
        for key in keys:
            y = np.asarray(series[key])
            if np.all(np.isnan(y)):
                continue
            style = "--" if key.startswith("val_") else "-"
            label = ("validation " if key.startswith("val_") else "train ") + key.split("_")[-1]
            shade = "black" if key.startswith("val_") else color
            ok = ~np.isnan(y)
            ax.plot(steps[ok], y[ok], style, color=shade, linewidth=1, label=label)
            for phase, marker in _PHASE_MARKERS.items():
                sel = ok & (np.asarray(phases) == phase)
                ax.plot(steps[sel], y[sel], marker, color=shade, markersize=5, linestyle="")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        values = np.concatenate([np.asarray(series[key]) for key in keys])
        if log and np.any(~np.isnan(values)) and np.nanmin(values) > 0:
            # The quantize phases' loss includes the Eq. 13 terms: the loss and the
            # penalty can span decades from phase to phase.
            ax.set_yscale("log")
    # Dotted lines where a layer's quantize phase starts; tick labels name the layer.
    starts = [i for i, p in enumerate(phases) if p in ("quantize", "activations", "final")]
    for ax in axes:
        for i in starts:
            ax.axvline(i, color="grey", linestyle=":", linewidth=0.7)
    whole = {"activations": "all (act.)", "final": "all (final)"}
    labels = [
        _short(str(history[i]["layer"]) if phases[i] == "quantize" else whole[phases[i]], 22)
        for i in starts
    ]
    axes[-1].set_xticks(starts, labels, rotation=60, ha="right", fontsize=8)
    axes[-1].set_xlabel("progressive_fit step (Algorithm 1), labelled at each layer's quantize")
    handles, _ = axes[0].get_legend_handles_labels()
    used = [p for p in _PHASE_MARKERS if p in phases]
    handles += [
        Line2D([], [], marker=_PHASE_MARKERS[p], color="grey", linestyle="", label=p) for p in used
    ]
    axes[0].legend(handles=handles, fontsize=8, loc="best")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, loc="best")
    axes[0].set_title("BiTAT progressive binarization, layer by layer (Algorithm 1)")
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 8: Q_orig, Q_ours and their ratio per binarized layer.


def _is_errors(value):
    return isinstance(value, dict) and isinstance(value.get("layers"), dict)


def _errors_series(source, fp_model, images, max_rows, seed):
    """{label: errors dict of analysis.quantization_errors}."""
    import keras

    if _is_errors(source):
        return {"": source}
    if isinstance(source, dict) and source and all(_is_errors(v) for v in source.values()):
        return {str(label): errors for label, errors in source.items()}
    if isinstance(source, BiTATResult | keras.Model):
        from bitat_keras.inspect import analysis

        binary = source.model if isinstance(source, BiTATResult) else source
        if not isinstance(fp_model, keras.Model):
            raise TypeError(
                "`fp_model` must be the pre-trained full-precision keras.Model (Q_orig and "
                "Q_ours compare the binary weights with it, Sec. 7.4). "
                f"Received: {type(fp_model).__name__}"
            )
        if images is None:
            raise ValueError(
                "Received images=None, expected a batch of inputs for the per-layer input "
                "statistics (s, V of Eq. 10), e.g. x_train[:256]."
            )
        errors = analysis.quantization_errors(
            fp_model, binary, images, max_rows=max_rows, seed=seed
        )
        return {"": errors}
    raise TypeError(
        "`source` must be a BiTATResult or binary keras.Model (with fp_model and images), the "
        "dict returned by bk.analysis.quantization_errors, or a {label: that dict} mapping. "
        f"Received: {type(source).__name__}"
    )


def quantization_ratio(
    source, fp_model=None, images=None, *, max_rows=4096, seed=0, ax=None, path=None
):
    """Q_orig (Eq. 2), Q_ours (Eq. 6 without l1) and Q_ours / Q_orig per binarized layer.

    Paper Fig. 8 / Sec. 7.4: s and V of each layer come from the pre-trained model's own
    inputs (Eq. 10), with no cross-layer terms; a low ratio means the binarization error
    lies in the unimportant (low-variance) input directions. The dashed line is the ratio
    of the sums over layers. Several runs (e.g. ReActNet and BiTAT) can be compared by
    passing ``{label: errors}``.

    Args:
        source: a ``BiTATResult`` or binary ``keras.Model`` (then ``fp_model`` and
            ``images`` are needed and ``bk.analysis.quantization_errors`` is run), the dict
            that function returns, or a ``{label: such dict}`` mapping.
        fp_model: the pre-trained full-precision model the binary one started from.
        images: inputs for the statistics, e.g. ``x_train[:256]``.
        max_rows, seed: passed to ``quantization_errors``.
        ax: optional Axes for the ratio panel only; without it the figure has two panels
            (Q_orig and Q_ours on a log scale, and the ratio).
        path: optional file to save the figure to.

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> errs = bk.analysis.quantization_errors(fp, result.model, x[:256])  # doctest: +SKIP
        >>> fig = plots.quantization_ratio(errs, path="ratio.png")  # doctest: +SKIP
    """
    _check_path(path)
    series = _errors_series(source, fp_model, images, max_rows, seed)
    layers = []
    for errors in series.values():
        layers += [name for name in errors["layers"] if name not in layers]
    if not layers:
        raise ValueError(
            "Received errors with no layer (quantization_errors found no BinaryConv2D), "
            "expected at least one binarized layer."
        )
    if ax is None:
        fig, grid = _new_figure((max(6.5, 0.7 * len(layers) * len(series) + 3), 7.5), 2, 1)
        q_ax, r_ax = grid[0, 0], grid[1, 0]
    else:
        r_ax = _check_axes(ax, 1, "ax")[0]
        fig, q_ax = r_ax.figure, None
    x = np.arange(len(layers))
    width = 0.8 / len(series)
    for i, (label, errors) in enumerate(series.items()):
        rows = [errors["layers"].get(name, {}) for name in layers]
        ratio = [r.get("ratio", np.nan) for r in rows]
        offset = (i - (len(series) - 1) / 2) * width
        name = f"{label}: " if label else ""
        color = f"C{i}"
        r_ax.bar(x + offset, ratio, width, color=color, label=f"{name}Q_ours / Q_orig")
        r_ax.axhline(
            errors["ratio"],
            color=color,
            linestyle="--",
            linewidth=1,
            zorder=3,
            label=f"{name}all layers: {errors['ratio']:.3g}",
        )
        if q_ax is not None:
            q_orig = [r.get("q_orig", np.nan) for r in rows]
            q_ours = [r.get("q_ours", np.nan) for r in rows]
            left, right = x + offset - width / 4, x + offset + width / 4
            q_ax.bar(
                left, q_orig, width / 2, color=color, alpha=0.45, label=f"{name}Q_orig (Eq. 2)"
            )
            q_ax.bar(
                right,
                q_ours,
                width / 2,
                color=color,
                hatch="//",
                edgecolor="white",
                label=f"{name}Q_ours (Eq. 6)",
            )
    names = [_short(n, 22) for n in layers]
    r_ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    r_ax.set_xlabel("binarized layer (bottom to top)")
    r_ax.set_ylabel("Q_ours / Q_orig")
    r_ax.legend(fontsize=8)
    r_ax.grid(axis="y", alpha=0.3)
    if q_ax is not None:
        q_ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        q_ax.set_yscale("log")
        q_ax.set_xlabel("binarized layer (bottom to top)")
        q_ax.set_ylabel("error (log scale)")
        q_ax.legend(fontsize=8)
        q_ax.grid(axis="y", alpha=0.3)
        q_ax.set_title("Quantization errors vs the pre-trained weights (Fig. 8, Sec. 7.4)")
    else:
        r_ax.set_title("Q_ours / Q_orig per binarized layer (Fig. 8)")
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Everything at once.


def _safe_name(name):
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def save_all(
    result,
    directory,
    *,
    fp_model=None,
    images=None,
    errors=None,
    kmeans_layers="top",
    log=False,
    dpi=_DPI,
):
    """Write every figure of this module as PNG files into ``directory``.

    Files: ``dependency_block{i}.png`` for each block with a transform (Fig. 6),
    ``kmeans_{layer}.png`` (Fig. 7 right), ``layer_history.png`` and, when ``errors`` or
    ``fp_model`` and ``images`` are given, ``quantization_ratio.png`` (Fig. 8; the result
    does not keep the pre-trained model, so it is skipped with a warning otherwise).

    Args:
        result: the ``BiTATResult`` of ``progressive_fit``.
        directory: output folder (created if missing).
        fp_model, images: the pre-trained model and a batch of inputs, for Fig. 8.
        errors: ``bk.analysis.quantization_errors(...)`` output, instead of computing it.
        kmeans_layers: "top" (the topmost grouped layer with a kernel larger than 1x1, as
            in the paper's figure, else the topmost grouped layer), "all" (every grouped
            layer) or a list of layer names.
        log: symmetric-log colour scale for the Fig. 6 heatmaps (see
            :func:`dependency_heatmaps`; shows small cross-layer entries after short runs).
        dpi: resolution of the PNG files.

    Returns:
        The list of written file paths.

    Example:
        >>> paths = plots.save_all(result, "figures", fp_model=fp, images=x[:256])  # doctest: +SKIP
    """
    _check_result(result)
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(
            f"`directory` must be a folder path (str or os.PathLike). "
            f"Received: {type(directory).__name__}"
        )
    grouped = [
        name
        for t in result.transforms
        for name, ids in zip(t["layers"], t["ids"], strict=True)
        if ids is not None
    ]
    if kmeans_layers == "top":  # Fig. 7 right draws 3x3 filters of the topmost layer
        spatial = [n for n in grouped if max(result.model.get_layer(n).kernel_size) > 1]
        kmeans_layers = (spatial or grouped)[-1:]
    elif kmeans_layers == "all":
        kmeans_layers = grouped
    elif not isinstance(kmeans_layers, list | tuple) or not all(
        isinstance(n, str) for n in kmeans_layers
    ):
        raise ValueError(
            f"Received kmeans_layers={kmeans_layers!r}, expected 'top', 'all' or a list of "
            f"layer names from {grouped}."
        )
    os.makedirs(directory, exist_ok=True)
    figures = []
    for i, t in enumerate(result.transforms):
        if t["s"] is not None:
            fig = dependency_heatmaps(result, i, log=log)
            figures.append((f"dependency_block{i}.png", fig))
    for name in kmeans_layers:
        figures.append((f"kmeans_{_safe_name(name)}.png", kmeans_groups(result, name)))
    figures.append(("layer_history.png", layer_history(result)))
    if errors is not None:
        figures.append(("quantization_ratio.png", quantization_ratio(errors)))
    elif fp_model is not None or images is not None:
        fig = quantization_ratio(result, fp_model, images)
        figures.append(("quantization_ratio.png", fig))
    else:
        caller.warn(
            "save_all: quantization_ratio.png skipped; pass fp_model= and images= (or "
            "errors=) to draw Fig. 8."
        )
    paths = []
    for filename, fig in figures:
        path = os.path.join(os.fspath(directory), filename)
        _savefig(fig, path, dpi)
        paths.append(path)
    return paths
