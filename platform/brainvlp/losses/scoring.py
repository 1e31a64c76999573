"""How one image is scored against one report: the same rule for a method's loss and for its retrieval.

Shape legend: B images, G reports, Q query views per image, S sentences per report, D embedding width.

- ``dot``: cosine of the global image and report embeddings (CLIP, ConVIRT).
- ``max_query``: the best of the Q-Former's views against the report embedding (BLIP-2 ITC, brat's
  "Q-Former" baseline).
- ``colbert``, ``pva``: the views against the report's sentences (brat and its ColBERT baseline;
  ``brainvlp.losses.matching``).

Representations are dicts: images carry ``image_emb`` (B x D) or ``views`` (B x Q x D); reports carry
``text_emb`` (G x D) or ``sentences`` (G x S x D) with ``sentence_mask`` (G x S, True = real sentence).
All embeddings are expected L2-normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from brainvlp.losses.matching import colbert_scores, pva_scores

SCORINGS = ("dot", "max_query", "colbert", "pva")
# What each scoring reads: "global" = image and report embeddings, "views" = the Q-Former's views,
# "report" = the report embedding alone, "sentences" = sentence embeddings.
NEEDS = {
    "dot": frozenset({"global"}),
    "max_query": frozenset({"views", "report"}),
    "colbert": frozenset({"views", "sentences"}),
    "pva": frozenset({"views", "sentences"}),
}
# Image rows scored at once in ``score_matrix``: PVA holds a rows x G x Q x S tensor.
_ROWS = 16


def pair_scores(
    scoring: str, image: Mapping[str, torch.Tensor], text: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Scores ``B x G`` of every image against every report, differentiable."""
    if scoring == "dot":
        return image["image_emb"] @ text["text_emb"].T
    if scoring == "max_query":
        return torch.einsum("bqd,gd->bgq", image["views"], text["text_emb"]).amax(-1)
    sim_BGQS = torch.einsum("bqd,gsd->bgqs", image["views"], text["sentences"])
    if scoring == "colbert":
        return colbert_scores(sim_BGQS, text["sentence_mask"])
    if scoring == "pva":
        return pva_scores(sim_BGQS, text["sentence_mask"])
    raise ValueError(f"unknown scoring {scoring!r}; expected one of {SCORINGS}")


def score_matrix(
    scoring: str, image: Mapping[str, torch.Tensor], text: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """All-pairs scores for retrieval, in blocks of image rows so memory stays bounded (no gradient)."""
    num_images = next(iter(image.values())).shape[0]
    with torch.no_grad():
        blocks = [
            pair_scores(scoring, {k: v[start : start + _ROWS] for k, v in image.items()}, text)
            for start in range(0, num_images, _ROWS)
        ]
    return torch.cat(blocks)


def concat(parts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join per-batch representations; sentence tensors are padded to the longest report first."""
    width = max((p["sentences"].shape[1] for p in parts if "sentences" in p), default=0)
    joined = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if key in ("sentences", "sentence_mask"):
            tensors = [pad_sentences(t, width) for t in tensors]
        joined[key] = torch.cat(tensors)
    return joined


def pad_sentences(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim 1 (sentences) to ``width`` with zeros / False, e.g. so that every worker gathers one shape."""
    if tensor.shape[1] > width:
        raise ValueError(f"{tensor.shape[1]} sentences exceed the padded width {width}")
    padded = tensor.new_zeros((tensor.shape[0], width, *tensor.shape[2:]))
    padded[:, : tensor.shape[1]] = tensor
    return padded
