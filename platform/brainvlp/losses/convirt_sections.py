"""ConVIRT with report sections (METHODS 3 ``convirt``, section variant; "Modified ConVIRT", seeds/003).

Shape legend: B local batch, G global batch (B x world_size), D embedding width, K = 2 sections.

The model encodes two sections (``model.text.sections``, FINDINGS and IMPRESSION by default) separately and
averages their projected embeddings into the report embedding (``PretrainTask.section_embeddings``). Then

    global = lambda_g l(image -> text) + (1 - lambda_g) l(text -> image)                  (ConVIRT)
    local  = alpha l(findings -> impression) + (1 - alpha) l(impression -> findings)     (Eq. 1 of seeds/003)
    loss   = lambda_local local + (1 - lambda_local) global

each l an InfoNCE term with temperature tau averaged over its queries; the paper's values are tau = 0.1 and
0.75 for all three weights. The local term only involves reports that have both sections: others are
neither queries nor candidates (the paper filtered such reports out; here they still train the global
term). With no such report in the gathered batch the local term is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainvlp.losses.base import Gather, Loss, no_gather
from brainvlp.losses.config import ConvirtSectionsLossConfig
from brainvlp.losses.convirt import convirt_terms


def masked_infonce(
    query_BD: torch.Tensor,
    candidate_GD: torch.Tensor,
    valid_B: torch.Tensor,
    valid_G: torch.Tensor,
    labels_B: torch.Tensor,
    temperature: float,
    world_size: int,
) -> torch.Tensor:
    """Mean over valid queries of -log softmax(cos / tau) at the query's match, over valid candidates only.

    The sum over this worker's valid queries is divided by the global batch's count over the world size,
    so that the mean of the workers' values is the global batch's mean whatever each worker holds.
    """
    logits_BG = (query_BD @ candidate_GD.T / temperature).masked_fill(~valid_G, float("-inf"))
    # Invalid query rows may have no finite logit at all; give them a harmless one before the softmax.
    logits_BG = torch.where(valid_B[:, None], logits_BG, 0.0)
    per_query_B = F.cross_entropy(logits_BG, torch.where(valid_B, labels_B, 0), reduction="none")
    return (per_query_B * valid_B).sum() * world_size / valid_G.sum().clamp(min=1)


class ConvirtSectionsLoss(Loss):
    def __init__(
        self,
        config: ConvirtSectionsLossConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        gather: Gather = no_gather,
    ) -> None:
        super().__init__(config, rank=rank, world_size=world_size, gather=gather)

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        config = self.config
        section_BKD, present_BK = outputs["section_emb"], outputs["section_mask"]
        if section_BKD.shape[1] != 2:
            raise ValueError(
                f"convirt_sections needs exactly 2 text sections (model.text.sections), "
                f"found {section_BKD.shape[1]}"
            )
        image_to_text, text_to_image, _ = convirt_terms(
            outputs["image_emb"], outputs["text_emb"], config.temperature, rank=self.rank, gather=self.gather
        )
        global_loss = config.image_to_text_weight * image_to_text + (1 - config.image_to_text_weight) * (
            text_to_image
        )
        findings_BD, impression_BD = F.normalize(section_BKD, dim=-1).unbind(1)
        both_B = present_BK.all(1)
        both_G = self.gather(both_B.to(findings_BD.dtype)) > 0.5
        findings_GD, impression_GD = self.gather(findings_BD), self.gather(impression_BD)
        labels_B = torch.arange(both_B.shape[0], device=both_B.device) + self.rank * both_B.shape[0]
        common = (both_B, both_G, labels_B, config.temperature, self.world_size)
        f2i = masked_infonce(findings_BD, impression_GD, *common)
        i2f = masked_infonce(impression_BD, findings_GD, *common)
        alpha = config.findings_to_impression_weight
        local_loss = alpha * f2i + (1 - alpha) * i2f
        return {
            "contrastive_loss": config.local_weight * local_loss + (1 - config.local_weight) * global_loss,
            "global": global_loss.detach(),
            "local": local_loss.detach(),
            "image_to_text": image_to_text.detach(),
            "text_to_image": text_to_image.detach(),
        }
