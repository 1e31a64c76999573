"""Periodic dev-split retrieval during training, for model selection (brat picks weights on its dev set).

Shape legend: N dev studies, E embedding width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from brainvlp.evaluate.retrieval import retrieval_metrics
from brainvlp.train.task import PretrainTask, to_device


def evaluate_dev(
    task: PretrainTask, dev_shard: Any, collate_fn: Callable, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Retrieval R@5 (both directions and their mean) over the whole dev split; no augmentation."""
    was_training = task.training
    task.eval()
    images, texts = [], []
    with torch.no_grad():
        for batch in dev_shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn):
            image_emb_BE, text_emb_BE = task.embed(to_device(batch, device))
            images.append(image_emb_BE.float().cpu())
            texts.append(text_emb_BE.float().cpu())
    task.train(was_training)
    metrics = retrieval_metrics(torch.cat(images), torch.cat(texts))
    t2i, i2t = metrics["text_to_image"]["R@5"], metrics["image_to_text"]["R@5"]
    return {"dev_t2i_R@5": t2i, "dev_i2t_R@5": i2t, "dev_R@5": (t2i + i2t) / 2}
