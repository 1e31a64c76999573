"""brat loss (METHODS 3 ``brat``; seeds: brat): view-sentence contrastive + quality-diversity + ITG.

Shape legend: B local batch, G global batch (B x world_size), Q views, S sentences (padded to
``max_sentences`` so that every worker gathers one shape), P image positions, T report tokens, V vocabulary,
D embedding width.

- Contrastive: the score of image b and report g is PVA (or ColBERT) over the Q x S view-sentence
  similarities; the CLIP loss on the B x G score matrix, both directions, negatives from every worker.
- Diversity: ``dpp`` on the views' cross-attention maps (float32 even under bf16), ``repulsion`` on the
  views (the "w/ PR" baseline), or none ("w/o QD").
- ITG: next-token cross-entropy of the report under the Q-Former's causal text mode.
Total = contrastive + diversity_weight * diversity + itg_weight * itg (all weights 1 by default).

Ablations of brat Table 2 are settings of this loss and ``qformer_itc``: ColBERT = ``matching: colbert``,
brat w/o QD = ``diversity: none``, brat w/ PR = ``diversity: repulsion``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainvlp.losses.base import Gather, LogitScale, Loss, no_gather, symmetric_infonce
from brainvlp.losses.config import BratLossConfig, Diversity
from brainvlp.losses.matching import dpp_loss, repulsion_loss
from brainvlp.losses.scoring import pad_sentences, pair_scores


def diversity_terms(
    kind: Diversity, weight: float, outputs: dict[str, torch.Tensor], eps: float
) -> dict[str, torch.Tensor]:
    """The weighted view-diversity term of brat's ablations, keyed so that it is summed into the loss."""
    if kind == "dpp":
        return {"dpp_loss": weight * dpp_loss(outputs["attn"], eps=eps)}
    if kind == "repulsion":
        return {"repulsion_loss": weight * repulsion_loss(outputs["views"])}
    return {}


def itg_loss(logits_BTV: torch.Tensor, input_ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the report's real (non-padding) tokens after the first."""
    targets_BT = input_ids_BT[:, 1:].masked_fill(mask_BT[:, 1:] == 0, -100)
    return F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1).float(), targets_BT.flatten(), ignore_index=-100)


class BratLoss(Loss):
    def __init__(
        self, config: BratLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__(config, rank=rank, world_size=world_size, gather=gather)
        self.scale = LogitScale(config.temperature, learnable=config.learnable_temperature)

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        config = self.config
        views_BQD = F.normalize(outputs["views"].float(), dim=-1)
        sentences_BSD = pad_sentences(F.normalize(outputs["sentences"].float(), dim=-1), config.max_sentences)
        mask_BS = pad_sentences(outputs["sentence_mask"], config.max_sentences)
        # Collectives carry floats: the mask travels as 0/1 and comes back as bool.
        views_GQD, sentences_GSD = self.gather(views_BQD), self.gather(sentences_BSD)
        mask_GS = self.gather(mask_BS.float()) > 0.5
        sim_i2t_BG = pair_scores(
            self.scoring, {"views": views_BQD}, {"sentences": sentences_GSD, "sentence_mask": mask_GS}
        )
        sim_t2i_GB = pair_scores(
            self.scoring, {"views": views_GQD}, {"sentences": sentences_BSD, "sentence_mask": mask_BS}
        )
        scale = self.scale()
        result = {
            "contrastive_loss": symmetric_infonce(scale, sim_i2t_BG, sim_t2i_GB.T, rank=self.rank),
            "logit_scale": scale.detach(),
        }
        result |= diversity_terms(
            config.diversity, config.diversity_weight, {**outputs, "views": views_BQD}, config.dpp_eps
        )
        if config.itg_weight > 0:
            itg = itg_loss(outputs["itg_logits"], outputs["input_ids"], outputs["attention_mask"])
            result["itg_loss"] = config.itg_weight * itg
        return result
