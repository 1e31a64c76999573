"""The segmentation downstream (brat Tables 8-9): the spec, one run (train, dev selection, sliding-window
scoring) on synthetic masks, learning a bright tumour, the report in headless Chromium, and the whole job
on the tiny phantom's shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from brainvlp.downstream.config import DownstreamSpec, FitConfig, ModelEntry
from brainvlp.downstream.job import Run
from brainvlp.downstream.seg_fit import SegData, predict, run_segmentation_once
from brainvlp.downstream.seg_report import write_segmentation_report
from brainvlp.downstream.weights import resolve_init
from brainvlp.evaluate.html import CHROMIUM_BINARIES, screenshot
from brainvlp.spec import SpecError, parse

TINY = {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False}
SHAPE = (16, 16, 16)
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def _data(studies: int = 16, seed: int = 0) -> SegData:
    """Studies with one cubic tumour each (but every fourth): oedema shell (2), enhancing rim (3) and a
    necrotic centre (1), bright on channel 0 where it enhances and on channel 1 where it is oedema."""
    rng = np.random.default_rng(seed)
    volumes = rng.normal(0, 20, (studies, 2, *SHAPE)).astype(np.int16)
    masks = np.zeros((studies, *SHAPE), np.uint8)
    for n in range(studies):
        if n % 4 == 3:
            continue
        z, y, x = rng.integers(3, 8, 3)
        masks[n, z : z + 7, y : y + 7, x : x + 7] = 2
        masks[n, z + 1 : z + 6, y + 1 : y + 6, x + 1 : x + 6] = 3
        masks[n, z + 2 : z + 5, y + 2 : y + 5, x + 2 : x + 5] = 1
        volumes[n, 0][masks[n] == 3] += 400
        volumes[n, 1][masks[n] >= 1] += 300
    patients = np.repeat(np.arange(studies // 2), 2)
    return SegData(volumes, masks, patients, REGIONS, (1.0, 1.0, 1.0), 500.0)


ROWS = {"train": np.arange(12), "test": np.arange(12, 16), "external": np.arange(0)}


def _entry(**kwargs) -> ModelEntry:
    return parse(ModelEntry, {"name": "m", "init": "scratch", "vision": TINY, **kwargs})


@pytest.mark.parametrize("network", ["encoder_unet", "dynunet"])
def test_a_run_trains_selects_on_dev_and_scores_each_test_study(network: str) -> None:
    entry = (
        _entry(feature_size=4)
        if network == "encoder_unet"
        else parse(ModelEntry, {"name": "d", "init": "scratch", "network": network})
    )
    data = _data()
    init = resolve_init(entry, 2, SHAPE) if network == "encoder_unet" else None
    fit = FitConfig(epochs=2, batch_size=4, lr=1e-3, patch_size=(8, 8, 8), dev_fraction=0.2)
    result = run_segmentation_once(entry, init, data, fit, ROWS, 0)
    assert len(result.scores) == 4 and result.external_scores == []
    for region in REGIONS:
        for kind in ("Dice", "HD95", "LesionDice", "LesionHD95"):
            assert f"{kind}_{region}" in result.scores[0]
    assert [p["epoch"] for p in result.curve] == [1, 2] and all("dev_dice" in p for p in result.curve)
    assert 1 <= result.selected_epoch <= 2
    row, depth, pred_RHW = result.overlays[0]
    assert row in ROWS["test"] and pred_RHW.shape == (3, *SHAPE[1:])
    assert data.masks_NDHW[row, depth].any()


def test_a_run_learns_the_bright_tumour() -> None:
    data = _data(studies=24)
    rows = {"train": np.arange(16), "test": np.arange(16, 24), "external": np.arange(0)}
    fit = FitConfig(epochs=15, batch_size=4, lr=3e-3, dev_fraction=0.2)
    entry = _entry()
    result = run_segmentation_once(entry, resolve_init(entry, 2, SHAPE), data, fit, rows, 0)
    with_tumour = [
        s for row, s in zip(rows["test"], result.scores, strict=True) if data.masks_NDHW[row].any()
    ]
    assert np.mean([s["Dice_WT"] for s in with_tumour]) > 0.6


def test_sliding_windows_cover_a_volume_larger_than_the_patch() -> None:
    """A position-wise model predicts the same through 8^3 windows as on the whole 16 x 20 x 12 volume."""
    model = nn.Conv3d(2, 3, 1)
    volume = torch.randn(2, 2, 16, 20, 12)
    windows = predict(model, volume, FitConfig(window=(8, 8, 8), batch_size=3))
    whole = predict(model, volume, FitConfig())
    assert windows.shape == (2, 3, 16, 20, 12) and windows.dtype == torch.bool
    assert torch.equal(windows, whole)


def _spec(**task) -> dict:
    return {
        "kind": "downstream",
        "shards": "/nowhere",
        "task": {"name": "tumour", "type": "segmentation", **task},
        "models": [{"name": "scratch", "init": "scratch", "vision": TINY}],
    }


def test_the_segmentation_spec() -> None:
    spec = parse(DownstreamSpec, _spec())
    assert spec.task.region_labels == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert parse(DownstreamSpec, _spec(regions={"tumour": [1]})).task.region_labels == {"tumour": (1,)}
    with pytest.raises(SpecError, match=r"task\.regions\.x: list the mask labels"):
        parse(DownstreamSpec, _spec(regions={"x": []}))
    with pytest.raises(SpecError, match=r"task\.regions\.x\.0: must be in \[1, 255\]"):
        parse(DownstreamSpec, _spec(regions={"x": [0]}))
    with pytest.raises(SpecError, match=r"task\.classes: a segmentation task takes regions"):
        parse(DownstreamSpec, _spec(classes=["a", "b"]))
    data = _spec()
    data["models"].append({"name": "probe", "init": "scratch", "vision": TINY, "mode": "linear_probe"})
    with pytest.raises(SpecError, match=r"models\.1\.mode: segmentation fine-tunes"):
        parse(DownstreamSpec, data)
    data["models"][1] = {"name": "nnunet", "init": "scratch", "network": "dynunet", "vision": TINY}
    with pytest.raises(SpecError, match=r"models\.1\.network: dynunet is a whole network"):
        parse(DownstreamSpec, data)
    data["models"][1] = {"name": "nnunet", "init": "scratch", "network": "dynunet", "feature_size": 8}
    with pytest.raises(SpecError, match=r"models\.1\.feature_size: sets network: encoder_unet's"):
        parse(DownstreamSpec, data)
    data["models"][1] = {"name": "m", "init": "scratch", "vision": TINY, "base_filters": 8}
    with pytest.raises(SpecError, match=r"models\.1\.base_filters: sets the width of network: dynunet"):
        parse(DownstreamSpec, data)
    classify = {**_spec(), "task": {"finding": "side", "type": "multiclass"}}
    classify["models"] = [{"name": "nnunet", "init": "scratch", "network": "dynunet"}]
    with pytest.raises(SpecError, match=r"models\.0\.network: .* for segmentation"):
        parse(DownstreamSpec, classify)


def _report(tmp_path: Path) -> Path:
    spec = parse(DownstreamSpec, {**_spec(), "protocol": {"folds": 2, "seeds": 2, "fractions": [0.5, 1.0]},
                                  "bootstrap": {"resamples": 100}})  # fmt: skip
    data = _data()
    fit = FitConfig(epochs=2, batch_size=4, dev_fraction=0.2)
    entry = spec.models[0]
    init = resolve_init(entry, 2, SHAPE)
    runs = []
    for fraction in (0.5, 1.0):
        for seed in (0, 1):
            for fold, (train, test) in enumerate(
                ((np.arange(8), np.arange(8, 16)), (np.arange(8, 16), np.arange(8)))
            ):
                rows = {"train": train[: int(len(train) * fraction)], "test": test, "external": np.arange(0)}
                runs.append(
                    (
                        Run("scratch", fraction, seed, fold),
                        run_segmentation_once(entry, init, data, fit, rows, seed),
                    )
                )
    folds_N = np.repeat([1, 0], 8)
    return write_segmentation_report(tmp_path, spec, data, folds_N, runs)


def test_the_report_has_tables_8_9_overlays_curves_and_renders(tmp_path: Path) -> None:
    report = _report(tmp_path).read_text()
    for title in ("Dice ↑ at 50%", "lesion-wise Dice ↑ at 100%", "HD95 ↓ at 100%", "lesion-wise HD95 ↓"):
        assert title in report
    assert "| scratch | " in report and "| WT | TC | ET |" in report
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["runs"]) == 8 and "scratch|1.0" in metrics["summary"]
    assert (tmp_path / "overlays.png").exists() and (tmp_path / "curves.png").exists()
    if not any(shutil.which(name) for name in CHROMIUM_BINARIES):
        pytest.skip("chromium not installed")
    png = screenshot(tmp_path / "report.html", tmp_path / "shot.png", width=1000, height=2000, timeout_s=60)
    with Image.open(png) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float64)
    assert grey.std() > 10 and (grey < 245).mean() > 0.03


@pytest.mark.slow
def test_the_segmentation_job_on_the_tiny_phantom(local_ray, tmp_path: Path) -> None:
    from brainvlp.pipeline import load_spec
    from brainvlp.runner import run
    from conftest import ingest_tiny

    shards = ingest_tiny(tmp_path)
    spec = {
        **_spec(),
        "run_name": "seg",
        "output_root": str(tmp_path),
        "shards": str(shards),
        "models": [
            {"name": "scratch", "init": "scratch", "vision": TINY},
            {"name": "nnunet", "init": "scratch", "network": "dynunet"},
        ],
        "protocol": {"folds": 2, "seeds": 1, "fractions": [1.0], "splits": ["train", "dev", "test"]},
        "fit": {"epochs": 1, "batch_size": 4, "patch_size": [16, 16, 16]},
        "resources": {"cpus_per_run": 0.5},
        "bootstrap": {"resamples": 50},
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(spec))
    run(load_spec(path))
    metrics = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert len(metrics["runs"]) == 4 and (tmp_path / "seg" / "report.html").exists()
