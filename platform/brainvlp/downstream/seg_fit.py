"""One segmentation run (brat Tables 8-9): an encoder under a U-Net decoder, or DynUNet, trained on some
studies' masks, selected on held-out training studies by mean Dice, and scored on the test studies.

- Targets are the spec's regions (``task.regions``, BraTS: whole tumour {1, 2, 3}, tumour core {1, 3},
  enhancing tumour {3}) as independent sigmoid channels, since they overlap.
- Loss: MONAI's ``DiceLoss(sigmoid=True)`` plus binary cross-entropy per channel. MONAI's ``DiceCELoss``
  would apply a softmax cross-entropy across the channels, which treats overlapping regions as exclusive
  classes, so the cross-entropy half is ``binary_cross_entropy_with_logits`` instead.
- Patches: with ``fit.patch_size`` each training volume is cropped by MONAI's ``RandCropByPosNegLabel``
  (half the crops centred on tumour, as nnU-Net oversamples foreground); inference covers the whole
  volume, in one pass or in MONAI's ``sliding_window_inference`` of ``fit.window`` (Gaussian blending,
  ``fit.sw_overlap``).
- Dev selection: ``fit.dev_fraction`` of the run's training studies, by patient, is held out; every
  ``fit.eval_every`` epochs the mean Dice over regions and dev studies is measured, and the best epoch's
  weights are the run's.
- Scores per test study: ``evaluate.segmentation.score_case`` (Dice, HD95, lesion-wise Dice and HD95
  per region).

Shape legend: N studies, B batch, C channels, R regions, D/H/W volume axes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.transforms import RandCropByPosNegLabel, RandSpatialCrop
from torch import nn

from brainvlp.downstream.config import FitConfig, ModelEntry
from brainvlp.downstream.fit import freeze_norms
from brainvlp.errors import UserError
from brainvlp.evaluate.segmentation import dice_per_region, regions_from_labels, score_case
from brainvlp.models.segmenter import build_dynunet, build_segmenter


@dataclass
class SegData:
    """What every segmentation run reads, in the object store once."""

    volumes_NCDHW: np.ndarray  # int16, as stored
    masks_NDHW: np.ndarray  # uint8 labels
    patients_N: np.ndarray
    regions: dict[str, tuple[int, ...]]
    spacing: tuple[float, float, float]  # mm per voxel of the stored volumes
    scale_max: float


@dataclass
class SegResult:
    test_rows: np.ndarray
    scores: list[dict[str, float]]  # per test study: Dice_WT, HD95_WT, LesionDice_WT, ...
    external_rows: np.ndarray
    external_scores: list[dict[str, float]]
    curve: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, dev_dice
    selected_epoch: int = 0
    # (row, axial slice index, predicted regions R x H x W uint8) of a few test studies, for overlays
    overlays: list[tuple[int, int, np.ndarray]] = field(default_factory=list)


def build_segmentation_model(entry: ModelEntry, init: dict[str, Any] | None, data: SegData) -> nn.Module:
    channels, shape, regions = data.volumes_NCDHW.shape[1], data.volumes_NCDHW.shape[2:], len(data.regions)
    if entry.network == "dynunet":
        return build_dynunet(channels, regions, tuple(shape), base_filters=entry.base_filters)
    assert init is not None
    try:
        return build_segmenter(
            init["vision"],
            channels,
            regions,
            entry.freeze_stages,
            init["state_dict"],
            feature_size=entry.feature_size,
        )
    except RuntimeError as err:  # load_state_dict's mismatch
        raise UserError(f"model {entry.name!r}: its weights do not fit its backbone: {err}") from err


def _inputs(data: SegData, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled volumes B x C x D x H x W and region targets B x R x D x H x W (float 0/1)."""
    volume = torch.from_numpy(data.volumes_NCDHW[rows].astype(np.float32) / data.scale_max)
    labels = torch.from_numpy(np.ascontiguousarray(data.masks_NDHW[rows]))
    target = torch.stack([regions_from_labels(m, data.regions) for m in labels]).float()
    return volume, target


def _crop(volume_BCDHW: torch.Tensor, target_BRDHW: torch.Tensor, patch: tuple[int, ...], seed: int) -> tuple:
    """One random patch per study, half of them centred on tumour where there is one (image and target
    cropped together); a study without tumour gets a uniformly placed patch."""
    balanced = RandCropByPosNegLabel(spatial_size=patch, pos=1, neg=1, num_samples=1, allow_smaller=True)
    anywhere = RandSpatialCrop(roi_size=patch, random_size=False)
    balanced.set_random_state(seed)
    anywhere.set_random_state(seed)
    volumes, targets = [], []
    for volume, target in zip(volume_BCDHW, target_BRDHW, strict=True):
        joint = torch.cat([volume, target])
        joint = balanced(joint, label=target[:1])[0] if target.any() else anywhere(joint)
        volumes.append(torch.as_tensor(joint[: volume.shape[0]]))
        targets.append(torch.as_tensor(joint[volume.shape[0] :]))
    return torch.stack(volumes), torch.stack(targets)


def predict(model: nn.Module, volume_BCDHW: torch.Tensor, fit: FitConfig) -> torch.Tensor:
    """Binary region masks B x R x D x H x W of whole volumes (in sliding windows of ``fit.window``)."""
    roi = fit.window or tuple(volume_BCDHW.shape[2:])
    with torch.no_grad():
        logits = sliding_window_inference(volume_BCDHW, roi, fit.batch_size, model, overlap=fit.sw_overlap,
                                          mode="gaussian")  # fmt: skip
    return torch.as_tensor(logits).float() > 0


def _dev_split(data: SegData, train_rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(training rows, dev rows): whole patients held out, at least one, never all."""
    patients = np.unique(data.patients_N[train_rows])
    if len(patients) < 2:
        return train_rows, train_rows[:0]
    count = min(len(patients) - 1, max(1, round(fraction * len(patients))))
    held = np.random.default_rng(seed).choice(patients, count, replace=False)
    is_dev = np.isin(data.patients_N[train_rows], held)
    return train_rows[~is_dev], train_rows[is_dev]


def _mean_dice(
    model: nn.Module, data: SegData, rows: np.ndarray, fit: FitConfig, device: torch.device
) -> float:
    scores = []
    for start in range(0, len(rows), fit.batch_size):
        volume, target = _inputs(data, rows[start : start + fit.batch_size])
        predicted = predict(model, volume.to(device), fit).cpu()
        scores += [
            float(np.mean(dice_per_region(p.numpy(), t.numpy() > 0)))
            for p, t in zip(predicted, target, strict=True)
        ]
    return float(np.mean(scores)) if scores else math.nan


def _train_epoch(
    model: nn.Module, data: SegData, rows: np.ndarray, fit: FitConfig, state: dict[str, Any]
) -> float:
    """One pass over ``rows`` in near-equal shuffled batches; the mean loss."""
    device, losses = state["device"], []
    model.train()
    freeze_norms(model)
    batches = np.array_split(state["rng"].permutation(rows), max(1, math.ceil(len(rows) / fit.batch_size)))
    for batch in batches:
        volume, target = _inputs(data, np.sort(batch))
        if fit.patch_size:
            volume, target = _crop(volume, target, fit.patch_size, int(state["rng"].integers(2**31)))
        logits = model(volume.to(device))
        target = target.to(device)
        loss = state["dice"](logits, target) + F.binary_cross_entropy_with_logits(logits, target)
        state["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        state["optimizer"].step()
        state["schedule"].step()
        losses.append(float(loss.detach()))
    model.eval()
    return float(np.mean(losses))


def run_segmentation_once(
    entry: ModelEntry, init: dict[str, Any] | None, data: SegData, fit: FitConfig, rows: dict, seed: int
) -> SegResult:
    """Train on ``rows["train"]`` (less its dev patients), select by dev Dice, score ``rows["test"]`` and
    ``rows["external"]``."""
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_segmentation_model(entry, init, data).to(device)
    train_rows, dev_rows = _dev_split(data, rows["train"], fit.dev_fraction, seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=fit.lr, weight_decay=fit.weight_decay)
    steps = fit.epochs * max(1, math.ceil(len(train_rows) / fit.batch_size))
    state = {
        "device": device,
        "rng": np.random.default_rng(seed),
        "optimizer": optimizer,
        "schedule": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
        "dice": DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5),
    }
    curve, best, best_dice, best_epoch = [], None, -math.inf, fit.epochs
    for epoch in range(1, fit.epochs + 1):
        point = {"epoch": epoch, "loss": _train_epoch(model, data, train_rows, fit, state)}
        if len(dev_rows) and (epoch % fit.eval_every == 0 or epoch == fit.epochs):
            point["dev_dice"] = _mean_dice(model, data, dev_rows, fit, device)
            if point["dev_dice"] > best_dice:
                best, best_dice, best_epoch = copy.deepcopy(model.state_dict()), point["dev_dice"], epoch
        curve.append(point)
    if best is not None:
        model.load_state_dict(best)
    scores, overlays = _score(model, data, rows["test"], fit, device)
    external, _ = _score(model, data, rows["external"], fit, device, keep=0)
    return SegResult(rows["test"], scores, rows["external"], external, curve, best_epoch, overlays)


def _score(
    model: nn.Module, data: SegData, rows: np.ndarray, fit: FitConfig, device: torch.device, keep: int = 2
) -> tuple[list[dict[str, float]], list[tuple[int, int, np.ndarray]]]:
    """Per-study scores of ``rows``; the axial slice with the largest true whole tumour of the first
    ``keep`` studies that have one, for the report's overlays."""
    names, scores, overlays = list(data.regions), [], []
    for start in range(0, len(rows), fit.batch_size):
        index = rows[start : start + fit.batch_size]
        volume, target = _inputs(data, index)
        predicted = predict(model, volume.to(device), fit).cpu().numpy()
        for row, pred_RDHW, true_RDHW in zip(index, predicted, target.numpy() > 0, strict=True):
            scores.append(score_case(pred_RDHW, true_RDHW, names, data.spacing))
            area_D = true_RDHW[0].sum(axis=(1, 2))
            if len(overlays) < keep and area_D.max() > 0:
                depth = int(area_D.argmax())
                overlays.append((int(row), depth, pred_RDHW[:, depth].astype(np.uint8)))
    return scores, overlays
