"""Embedding: a batch of shard rows -> the image and report representations a loss or a scoring reads.

Shape legend: B batch, C channels, D/H/W volume axes, T tokens, S sentences, H text feature width,
E embedding width, K report sections, P image positions.

Below training and evaluation both: pretraining extends ``Embedder`` with augmentation and the loss
(``brainvlp.train.task``); retrieval evaluation and dev evaluation use it as it is. It computes only the
representations asked for (``brainvlp.losses.scoring.NEEDS``: global embeddings, Q-Former views, sentence
embeddings, generation logits). A frozen text encoder's outputs are cached per study: running it every
step would cost more than the whole image step on a CPU (PHANTOM-NOTES.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from brainvlp.losses.scoring import pad_sentences
from brainvlp.losses.selip import CLAUSE_KEYS
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.models.text import section_tokens
from brainvlp.sections import SECTION_KEYS

# Keys of ``Embedder.represent``'s output that describe the image side and the report side.
IMAGE_KEYS, TEXT_KEYS = ("image_emb", "views"), ("text_emb", "sentences", "sentence_mask")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a collated batch's tensors to the device (study ids stay a list)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Embedder(nn.Module):
    """A model's representations of a batch: ``represent(batch, needs)`` computes only what is asked."""

    def __init__(self, model: DualEncoder, *, scale_max: float) -> None:
        super().__init__()
        self.model = model
        self.scale_max = scale_max
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.section_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare_volume(self, volume_BCDHW: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """int16 volumes -> the model's input: scaled to about [0, 1] by the shards' intensity scale."""
        return (volume_BCDHW.float() / self.scale_max).to(dtype)

    def text_features(
        self, batch: dict[str, Any], *, sentences: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Report features ``B x H`` and, if asked, sentence features ``B x S x H`` (before projection)."""
        spans = batch["spans"] if sentences else None
        if not self.model.text.frozen:
            return self.model.text_features(batch["input_ids"], batch["attention_mask"], spans)
        ids = batch["study_id"]
        missing = [
            i
            for i, s in enumerate(ids)
            if s not in self.text_cache or (sentences and self.text_cache[s][1] is None)
        ]
        if missing:
            with torch.no_grad():
                mask = batch["attention_mask"][missing]
                keep = int(mask.sum(1).max())  # trim shared padding before the encoder sees it
                report_MH, sentences_MSH = self.model.text_features(
                    batch["input_ids"][missing][:, :keep],
                    mask[:, :keep],
                    None if spans is None else spans[missing],
                )
            for row, i in enumerate(missing):
                count = int(batch["sentence_mask"][i].sum())
                cached = None if sentences_MSH is None else sentences_MSH[row, :count]
                self.text_cache[ids[i]] = (report_MH[row], cached)
        report_BH = torch.stack([self.text_cache[s][0] for s in ids])
        if not sentences:
            return report_BH, None
        width = batch["sentence_mask"].shape[1]
        return report_BH, torch.stack([pad_sentences(self.text_cache[s][1][None], width)[0] for s in ids])

    def section_features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``B x K x H`` of the model's K text sections, each encoded on its own, and a bool
        ``B x K`` of which reports have them (cached per study for a frozen encoder)."""
        sections = [SECTION_KEYS.index(name) for name in self.model.text.sections]
        ids, frozen = batch["study_id"], self.model.text.frozen
        rows = [i for i, s in enumerate(ids) if not frozen or s not in self.section_cache]
        if rows:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                features, present = zip(
                    *(self._encode_section(batch, rows, section) for section in sections), strict=True
                )
            features_MKH, present_MK = torch.stack(features, 1), torch.stack(present, 1)
            if not frozen:
                return features_MKH, present_MK
            for row, i in enumerate(rows):
                self.section_cache[ids[i]] = (features_MKH[row], present_MK[row])
        return tuple(torch.stack([self.section_cache[s][part] for s in ids]) for part in (0, 1))

    def _encode_section(
        self, batch: dict[str, Any], rows: list[int], section: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = ("input_ids", "attention_mask", "spans", "section_ids")
        ids_MT, mask_MT, present_M = section_tokens(*(batch[key][rows] for key in keys), section)
        return self.model.text(ids_MT, mask_MT), present_M

    def section_embeddings(
        self, batch: dict[str, Any], text_emb_BE: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected section embeddings ``B x K x E``, their presence ``B x K``, and the report embedding as
        the normalised mean of the present ones (``text_emb_BE``, the whole report's, where none is)."""
        features_BKH, present_BK = self.section_features(batch)
        section_BKE = self.model.project_text(features_BKH.to(text_emb_BE.dtype))
        weights_BK1 = present_BK.unsqueeze(-1).to(section_BKE.dtype)
        mean_BE = torch.nn.functional.normalize((section_BKE * weights_BK1).sum(1), dim=-1)
        return section_BKE, present_BK, torch.where(present_BK.any(1, keepdim=True), mean_BE, text_emb_BE)

    def represent(self, batch: dict[str, Any], needs: frozenset[str]) -> dict[str, torch.Tensor]:
        """What a loss or a scoring rule reads (see ``brainvlp.losses.scoring.NEEDS``)."""
        dtype = next(self.model.image_proj.parameters()).dtype
        out: dict[str, torch.Tensor] = {}
        if needs & {"global", "views", "itg", "local"}:  # one backbone pass serves them all
            tokens_BPF = self.model.vision(self.prepare_volume(batch["volume"], dtype))
        if "global" in needs:
            out["image_emb"] = self.model.image_embedding(tokens_BPF)
        if needs & {"views", "itg"}:
            out["views"], out["attn"] = self.model.encode_views(tokens_BPF)
        out.update(self.represent_text(batch, needs, dtype))
        if "local" in needs:
            out.update(self.local_features(batch, tokens_BPF))
        if "location" in needs:
            out["location"] = batch["location"]
        if "clauses" in needs:
            out.update({key: batch[key] for key in CLAUSE_KEYS})
        if "itg" in needs:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            out["itg_logits"] = self.model.qformer.itg_logits(tokens_BPF, ids, mask)
            out["input_ids"], out["attention_mask"] = ids, mask
        return out

    def represent_text(
        self, batch: dict[str, Any], needs: frozenset[str], dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """The report side: report embedding (section-wise if the model says so), sentence embeddings."""
        out: dict[str, torch.Tensor] = {}
        if not needs & {"global", "report", "sentences"}:
            return out
        report_BH, sentences_BSH = self.text_features(batch, sentences="sentences" in needs)
        if needs & {"global", "report"}:
            out["text_emb"] = self.model.project_text(report_BH.to(dtype))
            if self.model.text.sections:
                section_BKE, present_BK, out["text_emb"] = self.section_embeddings(batch, out["text_emb"])
                if "sections" in needs:
                    out["section_emb"], out["section_mask"] = section_BKE, present_BK
        if "sentences" in needs:
            out["sentences"] = self.model.project_sentences(sentences_BSH.to(dtype))
            out["sentence_mask"] = batch["sentence_mask"]
        return out

    def local_features(self, batch: dict[str, Any], tokens_BPF: torch.Tensor) -> dict[str, torch.Tensor]:
        """pLGG's local representations: image positions and report content tokens, each with its
        counterpart weighted by cross-attention to the other (``brainvlp.models.local_align``)."""
        if self.model.local_align is None:
            raise ValueError("this model has no local alignment: set model.local for the local triplet term")
        ids_BT, mask_BT = batch["input_ids"], batch["attention_mask"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.model.text.frozen):
            hidden_BTH = self.model.text.hidden_states(ids_BT, mask_BT)
        positions_T = torch.arange(ids_BT.shape[1], device=ids_BT.device)
        spans_BS2 = batch["spans"]
        inside_BST = (positions_T >= spans_BS2[..., :1]) & (positions_T < spans_BS2[..., 1:])
        return self.model.local_align(tokens_BPF, hidden_BTH.to(tokens_BPF.dtype), inside_BST.any(1))
