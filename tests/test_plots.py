"""Report plots: each writes a readable PNG; collapse scores match a plain loop; TensorBoard round trip."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import jensenshannon

from brainvlp.evaluate.plots import (
    collapse_scores,
    plot_label_efficiency,
    plot_recall_at_k,
    plot_roc_curves,
    plot_training_curves,
    read_training_curves,
)
from brainvlp.evaluate.plots_images import plot_attention_overlays, plot_retrieval_examples, plot_view_mds


def assert_png(path: Path, min_size: tuple[int, int] = (300, 200)) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1]
        assert image.width <= 4000 and image.height <= 4000


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """A plot that warns (missing glyph, empty contour, deprecated keyword) should be fixed, not ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DeprecationWarning)  # third-party import-time noise, as in pyproject
        yield


# --- Curves ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_roc_curves_for_every_task(tmp_path, task):
    rng = np.random.default_rng(0)
    n, c = 60, 3
    if task == "binary":
        y, names = rng.integers(0, 2, n), ["absent", "present"]
        curves = {"a": (y, y + rng.normal(0, 1, n)), "b": (y, rng.random(n))}
    elif task == "multiclass":
        y, names = rng.integers(0, c, n), ["glioma", "meningioma", "normal"]
        curves = {"a": (y, np.eye(c)[y] + rng.random((n, c))), "b": (y, rng.random((n, c)))}
    else:
        y, names = rng.integers(0, 2, (n, c)), ["oedema", "mass effect", "haemorrhage"]
        curves = {"a": (y, y + rng.normal(0, 1, (n, c)))}
    assert_png(plot_roc_curves(curves, names, task, tmp_path / "sub" / "roc.png"))


def test_roc_with_single_class_column_does_not_crash(tmp_path):
    rng = np.random.default_rng(1)
    y_NC = rng.integers(0, 2, (40, 5))
    y_NC[:, 1] = 0  # no positive: ROC undefined
    y_NC[:, 4] = 1  # no negative
    path = plot_roc_curves(
        {"m": (y_NC, rng.random((40, 5)))}, list("abcde"), "multilabel", tmp_path / "r.png"
    )
    assert_png(path)


def test_roc_rejects_mismatched_class_names(tmp_path):
    y = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match="class names"):
        plot_roc_curves({"m": (y, np.random.rand(4, 3))}, ["a", "b"], "multiclass", tmp_path / "r.png")
    with pytest.raises(ValueError, match="task"):
        plot_roc_curves({"m": (y, np.random.rand(4, 3))}, ["a", "b", "c"], "ordinal", tmp_path / "r.png")


def test_recall_at_k(tmp_path):
    rng = np.random.default_rng(2)
    ranks = {
        model: {"text_to_image": rng.integers(1, 51, 50), "image_to_text": rng.integers(1, 51, 50)}
        for model in ("brat", "convirt")
    }
    ranks["half"] = {"text_to_image": np.arange(1, 51)}  # one direction only is fine
    assert_png(plot_recall_at_k(ranks, 50, tmp_path / "recall.png"))
    with pytest.raises(ValueError, match=r"1\.\.50"):
        plot_recall_at_k({"m": {"text_to_image": np.array([0, 3])}}, 50, tmp_path / "bad.png")


def test_label_efficiency(tmp_path):
    results = {
        "brat": {0.01: (0.61, 0.55, 0.67), 0.1: (0.72, 0.68, 0.76), 1.0: (0.81, 0.79, 0.83)},
        "scratch": {0.01: (0.52, 0.45, 0.6), 0.1: (0.6, 0.55, 0.65), 1.0: (0.75, 0.72, 0.78)},
    }
    assert_png(plot_label_efficiency(results, "macro AUC", tmp_path / "eff.png"))


# --- Training curves ------------------------------------------------------------------------------------


def _write_history(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)


def test_training_curves_round_trip(tmp_path):
    written = {"loss": [(s, 2.0 / (s + 1)) for s in range(0, 50, 5)], "dev_R@5": [(10, 0.125), (20, 0.25)]}
    records = [{"step": step, "loss": value, "lr": 1e-3} for step, value in written["loss"]]
    records += [{"step": step, "dev_R@5": value, "study": "never read"} for step, value in written["dev_R@5"]]
    _write_history(tmp_path / "run", records)
    curves = read_training_curves(tmp_path / "run")
    assert curves == {tag: sorted(points) for tag, points in written.items()}

    path = plot_training_curves(
        {"brat": curves, "convirt": {"loss": written["loss"][::2]}}, tmp_path / "t.png"
    )
    assert path is not None
    assert_png(path)


def test_resumed_run_keeps_the_latest_value_of_a_step(tmp_path):
    _write_history(tmp_path, [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}])
    _write_history(tmp_path, [{"step": 1, "loss": 0.5 / 2}, {"step": 2, "loss": 0.25}])  # resumed at step 0
    assert read_training_curves(tmp_path)["loss"] == [(0, 1.0), (1, 0.25), (2, 0.25)]


def test_training_curves_empty(tmp_path):
    assert read_training_curves(tmp_path) == {}
    assert plot_training_curves({}, tmp_path / "none.png") is None
    assert plot_training_curves({"m": {"lr": [(0, 1e-3)]}}, tmp_path / "lr_only.png") is None
    assert plot_training_curves({"m": {"loss": [(0, 1.0)]}}, tmp_path / "x.png", tags=["dev_auc"]) is None
    assert not list(tmp_path.glob("*.png"))


# --- Collapse diagnostics -------------------------------------------------------------------------------


def reference_collapse(views_NQE: np.ndarray, attn_NQP: np.ndarray | None) -> dict[str, float]:
    """The definitions, one pair at a time in float64."""
    sums = {"view_collapse": [], "view_distance": [], "attention_collapse": [], "attention_distance": []}
    for n in range(views_NQE.shape[0]):
        per_image = {key: [] for key in sums}
        for i, j in itertools.combinations(range(views_NQE.shape[1]), 2):
            a, b = views_NQE[n, i].astype(np.float64), views_NQE[n, j].astype(np.float64)
            per_image["view_collapse"].append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            per_image["view_distance"].append(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))
            if attn_NQP is not None:
                p, q = attn_NQP[n, i].astype(np.float64), attn_NQP[n, j].astype(np.float64)
                per_image["attention_collapse"].append(p @ q / (np.linalg.norm(p) * np.linalg.norm(q)))
                per_image["attention_distance"].append(jensenshannon(p, q, base=2))
        for key, values in per_image.items():
            sums[key].append(np.mean(values) if values else math.nan)
    return {key: float(np.mean(values)) for key, values in sums.items()}


@pytest.mark.parametrize("with_attention", [True, False])
def test_collapse_scores_match_reference(with_attention):
    rng = np.random.default_rng(3)
    views = rng.normal(size=(4, 5, 6)).astype(np.float32)
    attn = rng.dirichlet(np.ones(7), size=(4, 5)).astype(np.float32) if with_attention else None
    got, want = collapse_scores(views, attn), reference_collapse(views, attn)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12, nan_ok=True), key
    assert all(isinstance(value, float) for value in got.values())
    assert math.isnan(got["attention_collapse"]) != with_attention


def test_identical_views_and_maps_are_fully_collapsed():
    rng = np.random.default_rng(4)
    views = np.repeat(rng.normal(size=(3, 1, 8)), 6, axis=1)
    attn = np.repeat(rng.dirichlet(np.ones(10), size=(3, 1)), 6, axis=1)
    scores = collapse_scores(views, attn)
    assert scores["view_collapse"] == pytest.approx(1.0)
    assert scores["attention_collapse"] == pytest.approx(1.0)
    assert scores["view_distance"] == pytest.approx(0.0, abs=1e-6)
    assert scores["attention_distance"] == pytest.approx(0.0, abs=1e-6)
    assert not any(math.isnan(value) for value in scores.values())


def test_orthogonal_views_and_disjoint_maps_are_diverse():
    one_hot = np.broadcast_to(np.eye(4), (2, 4, 4))
    scores = collapse_scores(one_hot, one_hot)  # one-hot attention: each query on its own token
    assert scores["view_collapse"] == pytest.approx(0.0, abs=1e-12)
    assert scores["view_distance"] == pytest.approx(math.sqrt(2))
    assert scores["attention_collapse"] == pytest.approx(0.0, abs=1e-12)
    assert scores["attention_distance"] == pytest.approx(1.0)


def test_view_collapse_ignores_each_views_scale():
    rng = np.random.default_rng(5)
    views = rng.normal(size=(3, 4, 5))
    scaled = views * rng.uniform(0.01, 100.0, size=(3, 4, 1))
    for key in ("view_collapse", "view_distance"):
        assert collapse_scores(scaled, None)[key] == pytest.approx(
            collapse_scores(views, None)[key], rel=1e-12
        )


def test_collapse_needs_two_queries_and_valid_attention():
    with pytest.raises(ValueError, match="Q >= 2"):
        collapse_scores(np.ones((3, 1, 4)), None)
    with pytest.raises(ValueError, match="non-negative"):
        collapse_scores(np.ones((2, 3, 4)), -np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match="N, Q"):
        collapse_scores(np.ones((2, 3, 4)), np.ones((2, 4, 5)))


def test_collapse_accepts_attention_on_a_token_grid():
    rng = np.random.default_rng(6)
    views, attn = rng.normal(size=(2, 3, 4)), rng.random((2, 3, 2, 2, 2))
    assert collapse_scores(views, attn) == collapse_scores(views, attn.reshape(2, 3, 8))


def test_view_mds(tmp_path):
    rng = np.random.default_rng(7)
    views, attn = rng.normal(size=(10, 6, 16)), rng.dirichlet(np.ones(27), size=(10, 6))
    assert_png(plot_view_mds(views, attn, tmp_path / "mds.png", max_images=4))
    assert_png(plot_view_mds(views, None, tmp_path / "mds_views.png"))
    collapsed = np.repeat(views[:, :1], 6, axis=1)  # degenerate distances must not break MDS
    assert_png(plot_view_mds(collapsed, np.repeat(attn[:, :1], 6, axis=1), tmp_path / "mds_flat.png"))
    assert_png(plot_view_mds(rng.normal(size=(2, 32, 8)), None, tmp_path / "mds_32.png"))


# --- Image panels ---------------------------------------------------------------------------------------


def blob(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_attention_overlays(tmp_path):
    rng = np.random.default_rng(8)
    shape = (12, 32, 32)
    mask = blob(shape, (8, 20, 12), 4)
    heat = np.exp(-((np.indices(shape) - np.array([8, 18, 14])[:, None, None, None]) ** 2).sum(0) / 30.0)
    examples = [
        {"volume_DHW": rng.random(shape), "heat_DHW": heat, "mask_DHW": mask, "title": "pLGG, BRAF fusion"},
        {"volume_DHW": rng.random(shape), "heat_DHW": np.zeros(shape), "mask_DHW": None, "title": "no mask"},
        {
            "volume_DHW": rng.random(shape),
            "heat_DHW": heat,
            "mask_DHW": np.zeros(shape, bool),
            "title": "empty",
        },
    ]
    assert_png(plot_attention_overlays(examples, tmp_path / "overlay.png"), min_size=(600, 600))


def test_image_panels_refuse_text_that_looks_like_a_report(tmp_path):
    shape = (4, 8, 8)
    example = {"volume_DHW": np.ones(shape), "heat_DHW": np.ones(shape), "mask_DHW": None, "title": "a\nb"}
    with pytest.raises(ValueError, match="short one-line"):
        plot_attention_overlays([example], tmp_path / "o.png")
    with pytest.raises(ValueError, match="short one-line"):
        plot_retrieval_examples(
            [{"query_label": "x" * 500, "query_slice_HW": np.ones((8, 8)), "hits": []}], tmp_path / "r.png"
        )


def test_retrieval_examples(tmp_path):
    rng = np.random.default_rng(9)
    examples = [
        {
            "query_label": "enhancing mass, oedema, midline shift, hydrocephalus",
            "query_slice_HW": rng.random((32, 32)),
            "hits": [(rng.random((32, 32)), k == 1, f"sim {0.9 - 0.1 * k:.2f}") for k in range(4)],
        },
        {
            "query_label": "normal",
            "query_slice_HW": rng.random((32, 32)),
            "hits": [(rng.random((32, 32)), True, "")],
        },
    ]
    assert_png(plot_retrieval_examples(examples, tmp_path / "retrieval.png"), min_size=(500, 300))
