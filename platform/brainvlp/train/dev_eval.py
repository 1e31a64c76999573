"""Periodic dev-split retrieval during training, for model selection (brat picks weights on its dev set).

Images and reports are scored with the training loss's own rule (dot product, max over views, PVA...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from brainvlp.evaluate.retrieval import retrieval_metrics_from_scores
from brainvlp.losses.scoring import NEEDS, concat, score_matrix
from brainvlp.train.task import IMAGE_KEYS, TEXT_KEYS, PretrainTask, to_device


def evaluate_dev(
    task: PretrainTask, dev_shard: Any, collate_fn: Callable, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Retrieval R@5 (both directions and their mean) over the whole dev split; no augmentation."""
    was_training = task.training
    task.eval()
    scoring = task.loss.scoring
    images, texts = [], []
    with torch.no_grad():
        for batch in dev_shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn):
            out = task.represent(to_device(batch, device), NEEDS[scoring])
            out = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}
            images.append({k: out[k] for k in IMAGE_KEYS if k in out})
            texts.append({k: out[k] for k in TEXT_KEYS if k in out})
    task.train(was_training)
    metrics = retrieval_metrics_from_scores(score_matrix(scoring, concat(images), concat(texts)))
    t2i, i2t = metrics["text_to_image"]["R@5"], metrics["image_to_text"]["R@5"]
    return {"dev_t2i_R@5": t2i, "dev_i2t_R@5": i2t, "dev_R@5": (t2i + i2t) / 2}
