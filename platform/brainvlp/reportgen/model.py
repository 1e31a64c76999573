"""One run's report generator: the entry's image encoder (an export's backbone or Q-Former, a state dict,
or scratch) under the spec's language model, and the batches it trains on.

Shape legend: B batch, C channels, D/H/W volume axes, T report tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from brainvlp.data.shards import decode_volumes
from brainvlp.downstream.config import ModelEntry
from brainvlp.downstream.weights import resolve_init
from brainvlp.models.config import VISION
from brainvlp.models.language import build_language_model, encode_reports, set_finetuning
from brainvlp.models.report_generator import QFormerViews, ReportGenerator, TokenMap
from brainvlp.reportgen.config import ReportGenSpec

COLUMNS = ["study_id", "volume", "volume_shape", "report_text", "findings"]


def image_encoder(entry: ModelEntry, inputs: str, in_channels: int, volume_shape: tuple[int, ...]) -> Any:
    """The entry's encoder of volumes into ``B x N x F`` features, with its initial weights."""
    if inputs == "views":  # the export's whole dual encoder: its Q-Former reads the backbone's tokens
        from brainvlp.export import load_export

        dual_encoder, _ = load_export(entry.path)
        return QFormerViews(dual_encoder)
    init = resolve_init(entry, in_channels, volume_shape)
    backbone = VISION.build(init["vision"], in_channels=in_channels)
    if init["state_dict"] is not None:
        backbone.load_state_dict(init["state_dict"])
    return TokenMap(backbone)


def build_generator(
    spec: ReportGenSpec, entry: ModelEntry, tokenizer: PreTrainedTokenizerFast, index: Mapping[str, Any]
) -> ReportGenerator:
    """Image encoder, bridge and LM; a pretrained encoder is frozen (brat), a scratch one trains."""
    shape = tuple(index["volume_shape"])
    encoder = image_encoder(entry, spec.generator.inputs, shape[0], shape[1:])
    lm_config = spec.generator.language_model
    language_model = set_finetuning(build_language_model(lm_config, tokenizer), lm_config)
    prompt = tokenizer(spec.generator.prompt, add_special_tokens=False)["input_ids"]
    return ReportGenerator(
        encoder,
        language_model,
        prompt,
        bridge_hidden=spec.generator.bridge_hidden,
        freeze_encoder=entry.init != "scratch",
    )


class Batches:
    """Ray Data numpy batches -> model inputs: volumes scaled by the shards' intensity scale, reports
    tokenised with the LM's tokenizer (ending in EOS)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, scale_max: float, max_tokens: int) -> None:
        self.tokenizer, self.scale_max, self.max_tokens = tokenizer, scale_max, max_tokens

    def __call__(self, batch: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Any]:
        volumes = decode_volumes(batch["volume"], batch["volume_shape"])
        reports = [str(text) for text in batch["report_text"]]
        encoded = encode_reports(self.tokenizer, reports, self.max_tokens)
        return {
            "study_id": [str(s) for s in batch["study_id"]],
            "reports": reports,
            "findings": [str(f) for f in batch["findings"]],
            "volume": (torch.from_numpy(volumes).float() / self.scale_max).to(device),
            "input_ids": encoded["input_ids"].to(device),
            "attention_mask": encoded["attention_mask"].to(device),
        }
