"""Periodic dev-split evaluation during training, for model selection (brat picks weights on its dev set).

Images and reports are scored with the training loss's own rule (dot product, max over views, PVA...).
The dev loss is the training loss on dev batches, computed on each worker alone: every worker evaluates
the whole (unsplit) dev split, so gathering would only repeat the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from brainvlp.embed import IMAGE_KEYS, TEXT_KEYS, to_device
from brainvlp.evaluate.retrieval import retrieval_metrics_from_scores
from brainvlp.losses.base import total_loss
from brainvlp.losses.scoring import NEEDS, concat, score_matrix
from brainvlp.train.task import PretrainTask


def evaluate_dev(
    task: PretrainTask, dev_shard: Any, collate_fn: Callable, device: torch.device, batch_size: int
) -> dict[str, float]:
    """R@5 (both directions and their mean) and the loss over the whole dev split, without augmentation."""
    was_training = task.training
    task.eval()
    scoring = task.loss.scoring
    images, texts, loss_sum, rows = [], [], 0.0, 0
    with torch.no_grad(), task.loss.single_process():
        for batch in dev_shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn):
            out = task.represent(to_device(batch, device), NEEDS[scoring] | task.loss.inputs)
            out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
            loss_sum += float(total_loss(task.loss(out))) * len(batch["study_id"])
            rows += len(batch["study_id"])
            out = {k: v.cpu() for k, v in out.items()}
            images.append({k: out[k] for k in IMAGE_KEYS if k in out})
            texts.append({k: out[k] for k in TEXT_KEYS if k in out})
    task.train(was_training)
    metrics = retrieval_metrics_from_scores(score_matrix(scoring, concat(images), concat(texts)))
    t2i, i2t = metrics["text_to_image"]["R@5"], metrics["image_to_text"]["R@5"]
    return {"dev_t2i_R@5": t2i, "dev_i2t_R@5": i2t, "dev_R@5": (t2i + i2t) / 2, "dev_loss": loss_sum / rows}
