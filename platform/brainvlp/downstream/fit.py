"""One downstream run: build the classifier a model entry describes, train it on some rows, score others.

Two paths share the optimiser, schedule and loss:

- ``finetune``: the whole classifier trains on volumes (the first ``freeze_stages`` backbone stages frozen,
  their batch-norm statistics too);
- ``linear_probe``: the backbone is frozen, so its token maps are computed once per model
  (``embed_tokens``) and every probe run trains only the head on them: 45 probe runs cost one forward pass.

Explanations (self-attention or Grad-CAM, see ``models.classifier``) are scored against the lesion masks with
Dice in 3D and on the axial slice with the largest lesion (``evaluate.explain``).

Shape legend: N studies of the task, C channels, D/H/W volume axes, P positions, F backbone width,
K outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainvlp.downstream.config import FitConfig, ModelEntry
from brainvlp.errors import UserError
from brainvlp.evaluate.explain import attention_to_volume, explanation_dice
from brainvlp.models.classifier import Classifier, freeze_stages, grad_cam


@dataclass
class TaskData:
    """What every run of a downstream job reads: the task's studies, in the object store once."""

    volumes_NCDHW: np.ndarray  # int16, as stored
    masks: list[np.ndarray | None]  # uint8 D x H x W lesion masks (None: none stored)
    y: np.ndarray  # (N,) class ids or (N, K) 0/1
    task: str  # binary / multiclass / multilabel
    num_outputs: int
    scale_max: float


@dataclass
class RunResult:
    test_rows: np.ndarray
    scores: np.ndarray  # (N_test,) positive-class probabilities for binary, else (N_test, K)
    external_scores: np.ndarray  # the same for the external test rows (empty without them)
    dice_3d: list[float] = field(default_factory=list)
    dice_slice: list[float] = field(default_factory=list)
    heat_maps: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (row, P-vector) examples


def build_classifier(entry: ModelEntry, init: dict[str, Any], data: TaskData) -> Classifier:
    """The entry's classifier with its initial backbone weights (``init`` from ``config.resolve_init``)."""
    model = Classifier(
        init["vision"],
        in_channels=data.volumes_NCDHW.shape[1],
        volume_shape=data.volumes_NCDHW.shape[2:],
        num_outputs=data.num_outputs,
        image_pool=init["image_pool"],
        dropout=entry.dropout,
    )
    if init["state_dict"] is not None:
        try:
            model.backbone.load_state_dict(init["state_dict"], strict=True)
        except RuntimeError as err:
            raise UserError(f"model {entry.name!r}: its weights do not fit its backbone: {err}") from err
    return model


def embed_tokens(model: Classifier, data: TaskData, batch_size: int) -> dict[str, np.ndarray]:
    """Frozen-backbone token maps ``N x P x F`` (and self-attention ``N x P`` where there is one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    tokens, attention = [], []
    with torch.no_grad():
        for start in range(0, len(data.y), batch_size):
            index = np.arange(start, min(start + batch_size, len(data.y)))
            tokens.append(model.backbone(_volumes(data, index, device)).float().cpu())
            attn_BPP = getattr(model.backbone, "last_attention_BPP", None)
            if attn_BPP is not None:
                attention.append(attn_BPP.mean(1).float().cpu())
    out = {"tokens_NPF": torch.cat(tokens).numpy()}
    if attention:
        out["attention_NP"] = torch.cat(attention).numpy()
    return out


def run_once(
    entry: ModelEntry,
    init: dict[str, Any],
    data: TaskData,
    fit: FitConfig,
    rows: dict[str, np.ndarray],
    seed: int,
    cached: dict[str, np.ndarray] | None = None,
) -> RunResult:
    """Train on ``rows["train"]``, score ``rows["test"]`` and ``rows["external"]`` and explain
    ``rows["explain"]`` (test rows with a lesion). ``cached`` holds ``embed_tokens``'s output for probes."""
    torch.manual_seed(seed)
    scored = np.concatenate([rows["test"], rows["external"]])
    # A run given a GPU (resources.gpus_per_run) sees it as CUDA; Ray hides it from the other runs.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_classifier(entry, init, data).to(device)
    if entry.mode == "linear_probe":
        if cached is None:
            raise ValueError("a linear probe needs the cached token maps of its frozen backbone")
        tokens_NPF = torch.tensor(cached["tokens_NPF"], device=device)
        probe = lambda index: model.head(model.pool(tokens_NPF[index]))  # noqa: E731
        _train(model.head, probe, data, fit, rows["train"], seed)
        scores = _predict(probe, data, scored)
        heat = _probe_explanations(model, tokens_NPF, cached.get("attention_NP"), rows["explain"])
    else:
        freeze_stages(model.backbone, entry.freeze_stages)
        finetune = lambda index: model(_volumes(data, index, device))  # noqa: E731
        _train(model, finetune, data, fit, rows["train"], seed)
        scores = _predict(finetune, data, scored)
        heat = _explanations(model, data, rows["explain"], fit.batch_size)
    result = RunResult(rows["test"], scores[: len(rows["test"])], scores[len(rows["test"]) :])
    for row, heat_P in heat:
        attn_DHW = attention_to_volume(heat_P, data.masks[row].shape, grid_shape=model.grid_dhw)
        agreement = explanation_dice(attn_DHW, data.masks[row], threshold=fit.explain_threshold)
        result.dice_3d.append(agreement.dice_3d)
        result.dice_slice.append(agreement.dice_slice)
    result.heat_maps = heat[: fit.keep_heat_maps]
    return result


def _volumes(data: TaskData, index: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    volume = torch.from_numpy(data.volumes_NCDHW[index].astype(np.float32) / data.scale_max)
    return volume.to(device) if device is not None else volume


def _loss(logits_BK: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "multiclass":
        return F.cross_entropy(logits_BK, y)
    target = y.float().view_as(logits_BK)
    return F.binary_cross_entropy_with_logits(logits_BK, target)


def _train(
    module: nn.Module, logits_of: Any, data: TaskData, fit: FitConfig, train_rows: np.ndarray, seed: int
) -> None:
    """Minibatch training of the trainable parameters of ``module`` (whose logits ``logits_of(rows)``
    computes): a probe's head at the probe rate for ``probe_epochs``, else the classifier."""
    probe = not isinstance(module, Classifier)
    epochs, lr = (fit.probe_epochs, fit.probe_lr) if probe else (fit.epochs, fit.lr)
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(fit, parameters, lr)
    steps_per_epoch = math.ceil(len(train_rows) / fit.batch_size)
    schedule = _schedule(fit, optimizer, epochs * steps_per_epoch, steps_per_epoch)
    rng = np.random.default_rng(seed)
    device = next(module.parameters()).device
    y = torch.tensor(data.y, device=device)  # a copy: arrays from the object store are read-only
    module.train()
    freeze_norms(module)
    for _ in range(epochs):
        # Near-equal batches: a trailing batch of one study would trip batch norm on small feature maps.
        for batch in np.array_split(rng.permutation(train_rows), steps_per_epoch):
            index = np.sort(batch)
            loss = _loss(logits_of(index), y[index], data.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    module.eval()


def freeze_norms(module: nn.Module) -> None:
    """Batch norms whose parameters are frozen keep their statistics (pLGG freezes whole early stages)."""
    for norm in module.modules():
        frozen = not any(p.requires_grad for p in norm.parameters(recurse=False))
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and frozen:
            norm.eval()


def _optimizer(fit: FitConfig, parameters: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if fit.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=fit.weight_decay)
    kind = torch.optim.AdamW if fit.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=lr, weight_decay=fit.weight_decay)


def _schedule(fit: FitConfig, optimizer: torch.optim.Optimizer, total: int, per_epoch: int) -> Any:
    if fit.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if fit.schedule == "step":  # pLGG's StepLR, its step size counted in epochs
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=fit.step_epochs * per_epoch, gamma=fit.gamma
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _predict(logits_of: Any, data: TaskData, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits_NK = torch.cat([logits_of(rows[s : s + 64]) for s in range(0, len(rows), 64)])
    logits_NK = logits_NK.float().cpu()
    if data.task == "multiclass":
        return torch.softmax(logits_NK, -1).numpy()
    probs_NK = torch.sigmoid(logits_NK).numpy()
    return probs_NK[:, 0] if data.task == "binary" else probs_NK


def _explanations(
    model: Classifier, data: TaskData, rows: np.ndarray, batch_size: int
) -> list[tuple[int, np.ndarray]]:
    heat = []
    for start in range(0, len(rows), batch_size):
        index = rows[start : start + batch_size]
        volume = _volumes(data, index, next(model.parameters()).device)
        with torch.no_grad():
            target_B = model(volume).argmax(-1)  # the predicted class; binary: the one output
        heat.extend(zip(index.tolist(), model.explain(volume, target_B).float().cpu().numpy(), strict=True))
    return heat


def _probe_explanations(
    model: Classifier, tokens_NPF: torch.Tensor, attention_NP: np.ndarray | None, rows: np.ndarray
) -> list[tuple[int, np.ndarray]]:
    """A probe's explanations from the cached token maps: the backbone's self-attention, else Grad-CAM
    through the head alone (the frozen backbone's part of the gradient is the same for every class)."""
    if len(rows) == 0:
        return []
    if attention_NP is not None:
        return list(zip(rows.tolist(), attention_NP[rows], strict=True))
    tokens_BPF = tokens_NPF[torch.as_tensor(rows, device=tokens_NPF.device)].clone().requires_grad_(True)
    with torch.enable_grad():
        logits_BK = model.head(model.pool(tokens_BPF))
        cam_BP = grad_cam(tokens_BPF, logits_BK, logits_BK.detach().argmax(-1))
    return list(zip(rows.tolist(), cam_BP.float().cpu().numpy(), strict=True))
