"""bitat_keras.plots: every figure's data against numpy oracles, on one tiny BiTAT run."""

import dataclasses
import importlib
import os
import sys

import keras
import numpy as np
import pytest
from keras import ops

import bitat_keras as bk
from bitat_keras import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_fp_model():
    """stem conv -> 3x3 conv -> 1x1 conv -> classifier: 2 binarizable layers, one block."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    h = keras.layers.BatchNormalization(name="bn0")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(h)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.Conv2D(8, 1, padding="same", name="conv_b")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h))


@pytest.fixture(scope="module")
def fitted():
    """One aggregated BiTAT run: groups=4 < d for both layers (72 and 8 input dims)."""
    x, y = bk.datasets.load("digits", "train")
    xt, yt = bk.datasets.load("digits", "test")
    keras.utils.set_random_seed(0)
    fp = tiny_fp_model()
    config = bk.BiTATConfig(
        epochs_per_layer=1,
        finetune_epochs=1,
        batch_size=64,
        groups=4,
        stats_images=32,
        stats_rows=512,
        bn_recalibration_batches=2,
        transform="aggregated",
        lam=100.0,
        penalty_normalization="none",
        final_epochs=0,
    )
    result = bk.progressive_fit(
        fp, (x[:128], y[:128]), config=config, validation_data=(xt[:64], yt[:64]), verbose=0
    )
    return fp, result, x[:32]


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    fp, result, images = fitted
    folder = tmp_path_factory.mktemp("figures")
    return folder, plots.save_all(result, folder, fp_model=fp, images=images, kmeans_layers="all")


@pytest.fixture(scope="module")
def errors(fitted):
    fp, result, images = fitted
    return bk.analysis.quantization_errors(fp, result.model, images)


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_importing_plots_does_not_import_matplotlib(monkeypatch):
    # keras itself imports matplotlib; block it to prove plots only imports it when drawing.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "bitat_keras.plots")
    monkeypatch.setattr(bk, "plots", plots)
    fresh = importlib.import_module("bitat_keras.plots")
    assert callable(fresh.save_all) and fresh is not plots
    with pytest.raises(ImportError):
        fresh.layer_history([{"layer": "a", "phase": "quantize", "loss": [1.0]}])


def test_save_all_writes_non_empty_pngs(saved, fitted, errors):
    folder, paths = saved
    names = [os.path.basename(p) for p in paths]
    assert names == [
        "dependency_block0.png",
        "kmeans_conv_a.png",
        "kmeans_conv_b.png",
        "layer_history.png",
        "quantization_ratio.png",
    ]
    for path in paths:
        assert os.path.dirname(path) == str(folder)
        with open(path, "rb") as f:
            data = f.read()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    # Default: the Fig. 7 panel of the topmost grouped layer with 3x3 filters (conv_a, not
    # the 1x1 conv_b above it); no Fig. 8 without fp_model.
    _, result, _ = fitted
    with pytest.warns(UserWarning, match="quantization_ratio.png skipped"):
        top = plots.save_all(result, folder / "top")
    assert [os.path.basename(p) for p in top] == [
        "dependency_block0.png",
        "kmeans_conv_a.png",
        "layer_history.png",
    ]
    explicit = plots.save_all(
        result, folder / "b", errors=errors, kmeans_layers=["conv_b"], log=True
    )
    assert [os.path.basename(p) for p in explicit][1:] == [
        "kmeans_conv_b.png",
        "layer_history.png",
        "quantization_ratio.png",
    ]
    # transform="none" keeps no s, V or groups: only the history is left to draw.
    bare = {**result.transforms[0], "s": None, "v": None, "ids": [None, None]}
    with pytest.warns(UserWarning, match="skipped"):
        paths = plots.save_all(dataclasses.replace(result, transforms=[bare]), folder / "none")
    assert [os.path.basename(p) for p in paths] == ["layer_history.png"]


def test_dependency_heatmaps_show_v_and_scaled_vt(fitted, tmp_path):
    _, result, _ = fitted
    t = result.transforms[0]
    s, v = np.asarray(t["s"], np.float64), np.asarray(t["v"], np.float64)
    assert t["ks"] == [4, 4] and v.shape == (8, 8)
    path = tmp_path / "sub" / "heat.png"
    fig = plots.dependency_heatmaps(result, block=0, path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    left, right = image_axes(fig)
    np.testing.assert_allclose(left.images[0].get_array(), v, rtol=1e-12)
    np.testing.assert_allclose(right.images[0].get_array(), np.diag(s) @ v.T, rtol=1e-12)
    for ax, data in ((left, v), (right, np.diag(s) @ v.T)):
        assert ax.images[0].get_clim() == pytest.approx((-np.abs(data).max(), np.abs(data).max()))
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        # The member-layer boundary (after k_1 = 4 rows/columns) is drawn both ways.
        rows = [ln.get_ydata()[0] for ln in ax.lines if ln.get_ydata()[0] == ln.get_ydata()[1]]
        cols = [ln.get_xdata()[0] for ln in ax.lines if ln.get_xdata()[0] == ln.get_xdata()[1]]
        assert rows == [3.5] and cols == [3.5]
        assert [label.get_text() for label in ax.get_xticklabels()] == ["conv_a", "conv_b"]
    assert "conv_a" in fig.get_suptitle() and "conv_b" in fig.get_suptitle()
    # The cross-layer block was trained away from zero (Eq. 11 init), so it is visible.
    assert np.abs(v[4:, :4]).max() > 0

    # sort=True: each layer's components by increasing s (the paper's Fig. 6 order).
    sorted_fig = plots.dependency_heatmaps(t, sort=True)
    order = np.r_[np.argsort(s[:4]), 4 + np.argsort(s[4:])]
    left, right = image_axes(sorted_fig)
    np.testing.assert_allclose(left.images[0].get_array(), v[:, order])
    np.testing.assert_allclose(right.images[0].get_array(), (np.diag(s) @ v.T)[order])
    assert np.all(np.diff(s[order][:4]) >= 0)

    # log=True: same data, a symmetric-log colour scale.
    logged = plots.dependency_heatmaps(result, log=True)
    image = image_axes(logged)[0].images[0]
    np.testing.assert_allclose(image.get_array(), v)
    assert type(image.norm).__name__ == "SymLogNorm"
    assert image.norm.vmax == pytest.approx(np.abs(v).max())

    # Drawing into the caller's axes.
    from matplotlib.figure import Figure

    own = Figure()
    axes = own.subplots(1, 2)
    assert plots.dependency_heatmaps(result, axes=axes) is own


def test_dependency_heatmaps_reject_bad_input(fitted):
    _, result, _ = fitted
    with pytest.raises(ValueError, match="block=1, expected 0 <= block < 1"):
        plots.dependency_heatmaps(result, block=1)
    with pytest.raises(TypeError, match="must be an int"):
        plots.dependency_heatmaps(result, block="0")
    with pytest.raises(TypeError, match="Received: ndarray"):
        plots.dependency_heatmaps(np.eye(3))
    none_block = {**result.transforms[0], "s": None, "v": None}
    with pytest.raises(ValueError, match="has no s and V"):
        plots.dependency_heatmaps(none_block)
    with pytest.raises(ValueError, match="expected \\(9,\\) and \\(9, 9\\)"):
        plots.dependency_heatmaps({**result.transforms[0], "ks": [4, 5]})
    with pytest.raises(TypeError, match="`path` must be a file path"):
        plots.dependency_heatmaps(result, path=3)
    with pytest.raises(TypeError, match="sequence of 2 matplotlib Axes"):
        plots.dependency_heatmaps(result, axes=[None])


def test_kmeans_tiles_are_the_group_ids_of_each_filter(fitted):
    _, result, _ = fitted
    t = result.transforms[0]
    ids = np.asarray(t["ids"][0])
    kh, kw, cin = 3, 3, 8
    assert ids.shape == (kh * kw * cin,) and 1 < len(np.unique(ids)) <= 4
    fig = plots.kmeans_groups(result, "conv_a", channels=6, columns=4)
    tiles = image_axes(fig)
    assert len(tiles) == 6  # channels=6 of 8
    for c, ax in enumerate(tiles):
        # Oracle: Keras' kernel row (i*kw + j)*cin + c is tap (i, j) of input channel c.
        expected = np.array([[ids[(i * kw + j) * cin + c] for j in range(kw)] for i in range(kh)])
        np.testing.assert_array_equal(ax.images[0].get_array(), expected)
        assert [t.get_text() for t in ax.texts] == [str(v) for v in expected.ravel()]
        assert ax.get_title() == f"in {c}"
    # One colour per group: the k ids map to k distinct colours.
    image = tiles[0].images[0]
    colours = {tuple(np.round(image.to_rgba(np.array([[g]]))[0, 0], 4)) for g in range(4)}
    assert len(colours) == 4
    assert fig.get_supxlabel() and fig.get_supylabel() and "conv_a" in fig.get_suptitle()

    # A 1x1 kernel: one cell per input channel, laid out in rows of `columns`.
    ids_b = np.asarray(t["ids"][1])
    fig = plots.kmeans_groups(result, "conv_b", columns=5)
    (ax,) = image_axes(fig)
    grid = np.ma.filled(ax.images[0].get_array(), np.nan).astype(float)
    expected = np.full(10, np.nan)
    expected[:8] = ids_b
    np.testing.assert_array_equal(grid, expected.reshape(2, 5))
    assert ax.get_xlabel() and ax.get_ylabel()


def test_kmeans_groups_reject_bad_input(fitted):
    _, result, _ = fitted
    with pytest.raises(ValueError, match="layer_name='stem', expected one of"):
        plots.kmeans_groups(result, "stem")
    identity = dataclasses.replace(
        result, transforms=[{**result.transforms[0], "ids": [result.transforms[0]["ids"][0], None]}]
    )
    with pytest.raises(ValueError, match="'conv_b' has no k-means groups.*\\['conv_a'\\]"):
        plots.kmeans_groups(identity, "conv_b")
    with pytest.raises(TypeError, match="BiTATResult.*Received: TrainedBlock"):
        plots.kmeans_groups(result.transforms[0], "conv_a")
    with pytest.raises(ValueError, match="channels=0, expected an integer >= 1"):
        plots.kmeans_groups(result, "conv_a", channels=0)


def test_layer_history_plots_each_phase_in_order(fitted):
    _, result, _ = fitted
    history = result.history
    assert [h["phase"] for h in history] == ["quantize", "finetune", "quantize"]
    fig = plots.layer_history(result)
    acc_ax, loss_ax, pen_ax = fig.axes[:3]

    def line(ax, label):
        (found,) = [ln for ln in ax.lines if ln.get_label() == label]
        return np.asarray(found.get_xdata()), np.asarray(found.get_ydata())

    x, y = line(acc_ax, "train accuracy")
    np.testing.assert_array_equal(x, [0, 1, 2])
    np.testing.assert_allclose(y, [h["accuracy"][-1] for h in history])
    _, y = line(acc_ax, "validation accuracy")
    np.testing.assert_allclose(y, [h["val_accuracy"] for h in history])
    _, y = line(loss_ax, "train loss")
    np.testing.assert_allclose(y, [h["loss"][-1] for h in history])
    x, y = line(pen_ax, "train penalty")
    np.testing.assert_array_equal(x, [0, 2])  # the penalty exists in quantize phases only
    np.testing.assert_allclose(y, [history[0]["penalty"], history[2]["penalty"]])
    # The fourth panel: the mean fraction of the trained binary kernels' signs that flipped.
    flip_ax = fig.axes[3]
    assert history[1]["flip_rate"] == {}  # the fine-tune phase trains no binarized kernel
    x, y = line(flip_ax, "train rate")
    np.testing.assert_array_equal(x, [0, 2])
    np.testing.assert_allclose(
        y, [history[0]["flip_rate"]["conv_a"], history[2]["flip_rate"]["conv_b"]]
    )
    for ax in (acc_ax, loss_ax, pen_ax, flip_ax):
        assert ax.get_ylabel()
    # Accuracy stays linear; loss and penalty (lam = 100 terms) span decades: log scale.
    assert [ax.get_yscale() for ax in (acc_ax, loss_ax, pen_ax)] == ["linear", "log", "log"]
    assert flip_ax.get_xlabel()
    assert [t.get_text() for t in flip_ax.get_xticklabels()] == ["conv_a", "conv_b"]
    # Three axes given by the caller: no flip panel.
    import matplotlib.pyplot as plt

    fig3, three = plt.subplots(3, 1)
    plots.layer_history(result, axes=three)
    assert len(fig3.axes) == 3 and three[2].get_xlabel()
    legend = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert {"quantize", "finetune"} <= set(legend)
    # The history list works too; bad inputs say what they got.
    assert plots.layer_history(history).axes[0].lines
    with pytest.raises(ValueError, match="empty history"):
        plots.layer_history([])
    with pytest.raises(TypeError, match="Received: int"):
        plots.layer_history(3)
    with pytest.raises(ValueError, match="history\\[0\\]"):
        plots.layer_history([{"loss": 1.0}])


def oracle_errors(fp, binary, images):
    """Q_orig (Eq. 2) and Q_ours (Eq. 6 w/o l1, s and V from the FP inputs, Eq. 10) with
    numpy only: sum_i s_i^2 (v_i^T e)^2 = trace(E^T C E), whatever eigh's order and signs."""
    out = {}
    for name in ("conv_a", "conv_b"):
        layer = fp.get_layer(name)
        x = ops.convert_to_numpy(keras.Model(fp.input, layer.input)(images)).astype(np.float64)
        k = layer.kernel_size[0]
        pad = k // 2  # stride 1, odd kernel: TF SAME pads evenly
        xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
        rows = np.array(
            [
                xp[b, i : i + k, j : j + k, :].ravel()
                for b in range(len(x))
                for i in range(x.shape[1])
                for j in range(x.shape[2])
            ]
        )
        evals, evecs = np.linalg.eigh(rows.T @ rows / len(rows))
        w = ops.convert_to_numpy(layer.kernel).astype(np.float64)
        wb = ops.convert_to_numpy(binary.get_layer(name).kernel).astype(np.float64)
        w_q = np.where(wb >= 0, 1.0, -1.0) * np.abs(wb).mean(axis=(0, 1, 2))
        e = (w - w_q).reshape(-1, w.shape[-1])
        q_orig = float(np.sum(e**2))
        q_ours = float(np.sum((np.sqrt(np.maximum(evals, 0))[:, None] * (evecs.T @ e)) ** 2))
        out[name] = (q_orig, q_ours)
    return out


def test_quantization_errors_scale_free_measures(fitted, errors):
    fp, result, _ = fitted
    same = total = 0
    for name in ("conv_a", "conv_b"):
        layer = errors["layers"][name]
        w = ops.convert_to_numpy(fp.get_layer(name).kernel)
        wb = ops.convert_to_numpy(result.model.get_layer(name).kernel)
        kept = np.mean((w >= 0) == (wb >= 0))
        assert layer["signs_kept"] == pytest.approx(kept)
        same, total = same + kept * w.size, total + w.size
        # A least-squares scale per channel can only lower the error at the layer's scale.
        assert layer["q_orig_fit"] <= layer["q_orig"] * (1 + 1e-9)
        assert layer["q_ours_fit"] <= layer["q_ours"] * (1 + 1e-9)
    assert errors["signs_kept"] == pytest.approx(same / total)
    fits = [errors["layers"][n]["q_ours_fit"] for n in ("conv_a", "conv_b")]
    assert errors["q_ours_fit"] == pytest.approx(sum(fits))


def test_quantization_ratio_bars_equal_independent_errors(fitted, errors, tmp_path):
    fp, result, images = fitted
    oracle = oracle_errors(fp, result.model, images)
    fig = plots.quantization_ratio(result, fp, images, path=tmp_path / "q.png")
    assert (tmp_path / "q.png").read_bytes()[:8] == PNG_MAGIC
    q_ax, r_ax = fig.axes
    ratios = [p.get_height() for p in r_ax.patches]
    expected = [oracle[n][1] / oracle[n][0] for n in ("conv_a", "conv_b")]
    np.testing.assert_allclose(ratios, expected, rtol=1e-4)
    total = sum(o[1] for o in oracle.values()) / sum(o[0] for o in oracle.values())
    (dashed,) = r_ax.lines
    assert dashed.get_ydata()[0] == pytest.approx(total, rel=1e-4)
    heights = [p.get_height() for p in q_ax.patches]  # Q_orig bars, then Q_ours bars
    np.testing.assert_allclose(heights[:2], [oracle[n][0] for n in ("conv_a", "conv_b")])
    np.testing.assert_allclose(heights[2:], [oracle[n][1] for n in ("conv_a", "conv_b")], rtol=1e-4)
    assert r_ax.get_ylabel() == "Q_ours / Q_orig" and r_ax.get_xlabel() and q_ax.get_ylabel()
    assert q_ax.get_yscale() == "log"
    assert [t.get_text() for t in r_ax.get_xticklabels()] == ["conv_a", "conv_b"]

    # The errors dict, and a {label: errors} comparison, draw the same numbers.
    fig = plots.quantization_ratio({"BiTAT": errors, "again": errors})
    r_ax = fig.axes[1]
    np.testing.assert_allclose([p.get_height() for p in r_ax.patches], expected * 2, rtol=1e-4)
    assert any("BiTAT" in t.get_text() for t in r_ax.get_legend().get_texts())


def test_quantization_ratio_rejects_bad_input(fitted):
    fp, result, images = fitted
    with pytest.raises(TypeError, match="fp_model.*Received: NoneType"):
        plots.quantization_ratio(result)
    with pytest.raises(ValueError, match="images=None, expected"):
        plots.quantization_ratio(result, fp)
    with pytest.raises(TypeError, match="Received: list"):
        plots.quantization_ratio([1, 2])
    with pytest.raises(ValueError, match="no layer"):
        plots.quantization_ratio({"layers": {}, "q_orig": 0.0, "q_ours": 0.0, "ratio": 0.0})


def test_save_all_rejects_bad_input(fitted, tmp_path):
    _, result, _ = fitted
    with pytest.raises(TypeError, match="BiTATResult.*Received: list"):
        plots.save_all(result.transforms, tmp_path)
    with pytest.raises(TypeError, match="`directory`.*Received: int"):
        plots.save_all(result, 5)
    with pytest.raises(ValueError, match="kmeans_layers='first', expected 'top', 'all'"):
        plots.save_all(result, tmp_path, kmeans_layers="first")
