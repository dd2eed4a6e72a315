"""examples/principal_noise.py (paper Fig. 3): the run's outputs, and the noise really lying
in the span of the chosen principal components (numpy oracle)."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
from keras import ops

import bitat_keras as bk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pn():
    path = os.path.join(ROOT, "examples", "principal_noise.py")
    spec = importlib.util.spec_from_file_location("principal_noise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = (
    "--dataset digits --train-size 64 --test-size 96 --width 0.25 --blocks 64:1 "
    "--fp-epochs 0 --components 2 --repeats 1 --stats-images 16 --quiet"
).split()


@pytest.fixture(scope="module")
def report(pn, tmp_path_factory):
    out = tmp_path_factory.mktemp("noise")
    return pn.main([*TINY, "--scales", "1", "30", "--out", str(out)]), out


def test_main_writes_table_json_and_figure(report, capsys):
    rep, out = report
    with open(out / "principal_noise.json") as f:
        saved = json.load(f)
    assert saved["results"] == rep["results"] and saved["seed"] == 0
    assert saved["dataset"] == "digits" and saved["scales"] == [1.0, 30.0]
    assert saved["layers"] == {
        "block1_conv3x3": {"d": 72, "n": 2},
        "block1_conv1x1_a": {"d": 8, "n": 2},
        "block1_conv1x1_b": {"d": 8, "n": 2},
    }
    assert 0.0 <= saved["clean_accuracy"] <= 1.0
    keys = [(r["scale"], r["direction"], r["mode"]) for r in saved["results"]]
    assert keys == [(s, d, m) for s in (1.0, 30.0) for d in ("top", "bottom") for m in pn_modes()]
    for r in saved["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["output_change"] > 0
        assert r["accuracy_drop"] == pytest.approx(saved["clean_accuracy"] - r["accuracy"])
        assert len(r["accuracies"]) == 1
    # Fig. 3's point: noise on the top components changes the output far more than the
    # same noise on the bottom components, in both modes and at every scale.
    by_key = {(r["scale"], r["direction"], r["mode"]): r for r in saved["results"]}
    for s in (1.0, 30.0):
        for m in pn_modes():
            top, bottom = by_key[(s, "top", m)], by_key[(s, "bottom", m)]
            assert top["output_change"] > 3 * bottom["output_change"]
    with open(out / "principal_noise.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out / "principal_noise.png") > 10_000


def pn_modes():
    return ("independent", "progressive")


def test_table_lists_every_scale(pn, report):
    rep, _ = report
    table = pn.format_table(rep)
    lines = table.splitlines()
    assert "top-2 indep." in lines[2] and "bottom-2 progr." in lines[2]
    assert [line.split()[0] for line in lines[3:]] == ["1", "30"]
    first = next(r for r in rep["results"] if r["scale"] == 30.0 and r["direction"] == "bottom")
    assert f"{first['accuracy']:.4f}" in lines[4]


def test_results_are_reproducible_from_the_seed(pn, report, tmp_path):
    rep, _ = report
    again = pn.main([*TINY, "--scales", "30", "--out", str(tmp_path)])
    assert again["clean_accuracy"] == rep["clean_accuracy"]
    assert again["results"] == [r for r in rep["results"] if r["scale"] == 30.0]


def test_bad_arguments_fail_with_a_message(pn, tmp_path):
    with pytest.raises(SystemExit, match="--components must be >= 1, received 0"):
        pn.main([*TINY, "--components", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--scales must be > 0"):
        pn.main([*TINY, "--scales", "-1", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="direction='left', expected one of"):
        pn.component_rows(8, 2, "left")


def oracle_rows(model, layer, images):
    """im2col rows of the layer's real input with explicit loops (stride 1, odd kernel)."""
    x = ops.convert_to_numpy(keras.Model(model.input, layer.input)(images)).astype(np.float64)
    k = layer.kernel_size[0]
    p = k // 2
    xp = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    n, h, w, _ = x.shape
    return np.array(
        [xp[b, i : i + k, j : j + k].ravel() for b in range(n) for i in range(h) for j in range(w)]
    )


def assert_in_span_of_chosen_components(delta, rows, n, direction):
    """delta (d, c) must have no part along the eigenvectors whose eigenvalue is clearly
    apart from those of the chosen n (robust to ties, e.g. a null space at the bottom)."""
    evals, evecs = np.linalg.eigh(rows.T @ rows / len(rows))  # ascending
    chosen = evals[-n:] if direction == "top" else evals[:n]
    gap = 1e-3 * evals[-1]
    outside = (evals < chosen.min() - gap) | (evals > chosen.max() + gap)
    if direction == "top":
        assert outside.sum() == len(evals) - n  # a clear spectral gap: the exact span check
    else:
        assert outside.sum() >= 4  # at least the directions that carry the input variance
    norm = np.linalg.norm(delta)
    assert norm > 0
    leak = np.linalg.norm(evecs[:, outside].T @ delta)
    assert leak <= 1e-3 * norm, (direction, leak / norm, outside.sum())
    return leak / norm, int(outside.sum())


@pytest.mark.parametrize("direction", ["top", "bottom"])
def test_noise_lies_in_the_span_of_the_chosen_components(pn, direction):
    x, _ = bk.datasets.load("digits", "train", limit=16)
    keras.utils.set_random_seed(0)
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1)]
    )
    names = bk.models.eligible_layers(model)
    clean = {n: ops.convert_to_numpy(model.get_layer(n).kernel) for n in names}
    std = {n: float(np.std(w)) for n, w in clean.items()}
    kwargs = dict(components=2, direction=direction, scale=3.0, clean_std=std, seed=0)
    weights = model.get_weights()
    independent = pn.perturb(model, names, x, mode="independent", **kwargs)
    model.set_weights(weights)
    progressive = pn.perturb(model, names, x, mode="progressive", **kwargs)
    for name in names:  # the model now holds the progressive perturbation
        np.testing.assert_allclose(
            ops.convert_to_numpy(model.get_layer(name).kernel),
            clean[name] + progressive[name]["delta"],
            rtol=1e-6,
            atol=1e-7,
        )
    for index, name in enumerate(names):
        layer = model.get_layer(name)
        for mode, info in (("independent", independent), ("progressive", progressive)):
            # Oracle statistics: the clean network (independent), or the network with the
            # lower layers perturbed and this one and those above clean (progressive).
            for j, other in enumerate(names):
                below = mode == "progressive" and j < index
                delta = info[other]["delta"] if below else 0.0
                model.get_layer(other).kernel.assign(clean[other] + delta)
            rows = oracle_rows(model, layer, x)
            d = rows.shape[1]
            delta = info[name]["delta"].reshape(d, -1)
            assert info[name]["n"] == 2 and info[name]["d"] == d
            assert_in_span_of_chosen_components(delta, rows, 2, direction)
    # Same noise draws: the first layer's change is identical in both modes (same clean
    # statistics); a layer above sees different statistics once the lower ones moved.
    np.testing.assert_allclose(
        independent[names[0]]["delta"], progressive[names[0]]["delta"], rtol=1e-5, atol=1e-7
    )
    if direction == "top":
        assert not np.allclose(independent[names[1]]["delta"], progressive[names[1]]["delta"])
