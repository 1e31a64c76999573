"""Load published brat checkpoints (LAVIS / BLIP-2 key names) into a ``DualEncoder`` with a Q-Former.

brat trains LAVIS's ``Blip2Qformer`` around a MONAI DenseNet-121. Key mapping, with
``L = Qformer.bert.encoder.layer.{i}``, ``Q = qformer.qformer.encoder.layer.{i}`` (transformers'
``Blip2QFormerModel``) and ``T = text.model.encoder.layer.{i}`` (our report / sentence encoder):

=================================================  =========================================================
LAVIS key                                          ours
=================================================  =========================================================
visual_encoder.densenet.features.*                 vision.features.* (torchvision-style ``denselayerN.norm1``
                                                   names gain MONAI's ``.layers.``)
ln_vision.*                                        qformer.ln_vision.*
query_tokens                                       qformer.query_tokens
Qformer.bert.embeddings.word_embeddings.*          qformer.word_embeddings.*, text.model.embeddings.word_...
Qformer.bert.embeddings.position_embeddings.*      qformer.position_embeddings.*, text.model.embeddings.pos...
Qformer.bert.embeddings.LayerNorm.*                qformer.qformer.layernorm.*, text.model.embeddings.Layer...
L.attention.self.{query,key,value}.*               Q.attention.attention.*, T.attention.self.*
L.attention.output.{dense,LayerNorm}.*             Q.attention.output.*, T.attention.output.*
L.crossattention.self.*                            Q.crossattention.attention.*
L.crossattention.output.*                          Q.crossattention.output.*
L.intermediate.dense.*                             Q.intermediate.dense.*, T.intermediate.dense.*
L.output.{dense,LayerNorm}.*                       Q.output.*, T.output.*
L.intermediate_query.dense.*                       Q.intermediate_query.dense.*
L.output_query.{dense,LayerNorm}.*                 Q.output_query.*
Qformer.cls.predictions.decoder.weight             qformer.lm_head.weight
Qformer.cls.predictions.bias (and its tied alias   qformer.lm_head.bias
``decoder.bias``)
vision_proj.*                                      view_proj.1.* (the Linear after the Dropout)
text_proj.*                                        text_proj.1.*
temp                                               not loaded: ``LoadReport.temp`` (the loss owns it)
=================================================  =========================================================

Why the BERT weights also fill the text encoder: in LAVIS the ITC text features come from the same
``Qformer.bert`` run on text alone (no queries: no cross-attention, only the text feed-forward block),
which is exactly a ``BertModel`` with those weights. Our text encoder is a separate module, so it gets a
copy. LAVIS's embeddings add no token-type vector, so ours is zeroed (its BERT sums the type-0 row).
LAVIS's ITC reads the ``[CLS]`` state: set ``text.pooling: cls`` to reproduce its report embeddings.

Ignored with a reason (``LoadReport.ignored``): DenseNet ``class_layers`` (our backbone keeps only
``features``), the ``position_ids`` buffer, ``itm_head`` (we have no matching loss), ``temp`` and the
LM head's ``transform`` (dense-GELU-LayerNorm before the decoder, which our single-Linear ``lm_head``
lacks: image-grounded generation logits differ from LAVIS's until that head is fine-tuned).
Left as initialised (``LoadReport.kept``): ``image_proj`` (the global-image head of CLIP-style losses;
brat reads images through the views), a BERT pooler, and BatchNorm step counters a checkpoint lacks.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from brainvlp.errors import UserError
from brainvlp.models.dual_encoder import DualEncoder

_L = r"Qformer\.bert\.encoder\.layer\.(\d+)\."
_Q = "qformer.qformer.encoder.layer.{}."
_T = "text.model.encoder.layer.{}."

# LAVIS key pattern -> our keys (``{}`` take the pattern's groups); the first matching pattern wins.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        r"visual_encoder\.densenet\.features\.(denseblock\d+\.denselayer\d+)\.((?:norm|conv)[12]\..+)",
        ("vision.features.{}.layers.{}",),
    ),
    (r"visual_encoder\.densenet\.features\.(.+)", ("vision.features.{}",)),
    (r"ln_vision\.(.+)", ("qformer.ln_vision.{}",)),
    (r"query_tokens", ("qformer.query_tokens",)),
    (
        r"Qformer\.bert\.embeddings\.word_embeddings\.(.+)",
        ("qformer.word_embeddings.{}", "text.model.embeddings.word_embeddings.{}"),
    ),
    (
        r"Qformer\.bert\.embeddings\.position_embeddings\.(.+)",
        ("qformer.position_embeddings.{}", "text.model.embeddings.position_embeddings.{}"),
    ),
    (
        r"Qformer\.bert\.embeddings\.LayerNorm\.(.+)",
        ("qformer.qformer.layernorm.{}", "text.model.embeddings.LayerNorm.{}"),
    ),
    (_L + r"attention\.self\.(.+)", (_Q + "attention.attention.{}", _T + "attention.self.{}")),
    (_L + r"attention\.output\.(.+)", (_Q + "attention.output.{}", _T + "attention.output.{}")),
    (_L + r"crossattention\.self\.(.+)", (_Q + "crossattention.attention.{}",)),
    (_L + r"crossattention\.output\.(.+)", (_Q + "crossattention.output.{}",)),
    (_L + r"intermediate\.(.+)", (_Q + "intermediate.{}", _T + "intermediate.{}")),
    (_L + r"output\.(.+)", (_Q + "output.{}", _T + "output.{}")),
    (_L + r"intermediate_query\.(.+)", (_Q + "intermediate_query.{}",)),
    (_L + r"output_query\.(.+)", (_Q + "output_query.{}",)),
    (r"Qformer\.cls\.predictions\.decoder\.weight", ("qformer.lm_head.weight",)),
    (r"Qformer\.cls\.predictions\.(?:decoder\.)?bias", ("qformer.lm_head.bias",)),  # tied aliases
    (r"vision_proj\.(weight|bias)", ("view_proj.1.{}",)),
    (r"text_proj\.(weight|bias)", ("text_proj.1.{}",)),
)

_IGNORED: tuple[tuple[str, str], ...] = (
    (r"visual_encoder\.densenet\.class_layers\..+", "DenseNet classification head: our backbone keeps only "
     "`features`"),
    (r"Qformer\.bert\.embeddings\.position_ids", "constant arange buffer, rebuilt by our modules"),
    (r"Qformer\.cls\.predictions\.transform\..+", "LM-head transform (dense-GELU-LayerNorm) has no "
     "counterpart: our qformer.lm_head is the decoder Linear alone, so ITG logits differ from LAVIS's"),
    (r"itm_head\..+", "image-text matching head: our model has no ITM loss"),
    (r"temp", "contrastive temperature: the loss owns it (see LoadReport.temp)"),
)  # fmt: skip

# Our keys no LAVIS key fills, left as initialised.
_KEPT: tuple[tuple[str, str], ...] = (
    (r"image_proj\..+", "global pooled-image head of CLIP-style losses; brat reads images through the "
     "Q-Former views (view_proj)"),
    (r"text\.model\.pooler\..+", "BERT pooler: LAVIS's BERT has none and TextEncoder never reads it"),
    (r".+\.num_batches_tracked", "BatchNorm step counter, unused with the default momentum"),
)  # fmt: skip

_TOKEN_TYPES = "text.model.embeddings.token_type_embeddings.weight"


@dataclass
class LoadReport:
    loaded: dict[str, list[str]] = field(default_factory=dict)  # LAVIS key -> our keys it filled
    ignored: dict[str, str] = field(default_factory=dict)  # LAVIS key -> why it has no counterpart
    derived: dict[str, str] = field(default_factory=dict)  # our key -> how it was filled without one
    kept: dict[str, str] = field(default_factory=dict)  # our key left as initialised -> why
    # Failures (strict mode raises on any): LAVIS keys we could not place, our keys nothing filled, and
    # shape mismatches or tied aliases that disagree.
    unmapped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    temp: float | None = None  # LAVIS's learnt ITC temperature

    @property
    def logit_scale(self) -> float | None:
        return None if self.temp is None else 1.0 / self.temp

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.missing or self.mismatched)

    def problems(self) -> str:
        lines = [f"{len(self.unmapped)} unmapped source keys:"]
        lines += [f"  {key}: {why}" for key, why in self.unmapped.items()]
        lines += [f"{len(self.missing)} target keys nothing filled:", *(f"  {key}" for key in self.missing)]
        lines += [f"{len(self.mismatched)} shape mismatches / conflicts:"]
        lines += [f"  {line}" for line in self.mismatched]
        return "\n".join(lines)


def _first(rules: tuple[tuple[str, str], ...], key: str) -> str | None:
    return next((reason for pattern, reason in rules if re.fullmatch(pattern, key)), None)


def _targets(key: str) -> tuple[str, ...]:
    for pattern, templates in _RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return tuple(template.format(*match.groups()) for template in templates)
    return ()


def load_lavis_state_dict(
    model: DualEncoder, state: Mapping[str, torch.Tensor], *, strict: bool = True
) -> LoadReport:
    """Copy a LAVIS-layout state dict into ``model`` (see the module docstring for the mapping).

    Strict: every source key is loaded or ignored with a reason, every target is filled (or listed in
    ``kept``) and shapes match; otherwise a ValueError lists every problem and nothing is loaded. Not
    strict: loads what fits and returns the problems in the report.
    """
    if model.qformer is None:
        raise UserError("LAVIS checkpoints hold a Q-Former: set model.qformer to load one")
    for name in ("view_proj", "text_proj"):
        head = getattr(model, name)
        if len(head) != 2 or not isinstance(head[1], nn.Linear):
            raise UserError(f"LAVIS's {name} is one Linear layer: set model.proj_hidden: None")
    own = model.state_dict()
    report = LoadReport()
    filled: dict[str, tuple[str, torch.Tensor]] = {}  # our key -> (LAVIS key, value)
    wrong_shape: set[str] = set()  # our keys a source of the wrong shape aimed at (reported once)
    for key, value in state.items():
        if key == "temp":
            report.temp = float(value)
        reason = _first(_IGNORED, key)
        if reason is not None:
            report.ignored[key] = reason
            continue
        targets = _targets(key)
        if not targets:
            report.unmapped[key] = "no rule for this key"
        absent = [t for t in targets if t not in own]
        if absent:
            report.unmapped[key] = f"this model has no {', '.join(absent)}"
        for target in (t for t in targets if t in own):
            if value.shape != own[target].shape:
                report.mismatched.append(f"{key} {tuple(value.shape)} -> {target} {tuple(own[target].shape)}")
                wrong_shape.add(target)
            elif target in filled and not torch.equal(filled[target][1], value):
                report.mismatched.append(f"{key} and {filled[target][0]} both fill {target} and differ")
            else:
                filled[target] = (key, value)
                report.loaded.setdefault(key, []).append(target)
    if _TOKEN_TYPES in own and _TOKEN_TYPES not in filled:
        filled[_TOKEN_TYPES] = ("", torch.zeros_like(own[_TOKEN_TYPES]))
        report.derived[_TOKEN_TYPES] = "zeros: LAVIS's BERT embeddings add no token-type vector"
    for target in own:
        if target not in filled and target not in wrong_shape:
            reason = _first(_KEPT, target)
            if reason is None:
                report.missing.append(target)
            else:
                report.kept[target] = reason
    if strict and not report.ok:
        raise UserError(f"LAVIS checkpoint does not fit this model:\n{report.problems()}")
    model.load_state_dict({**own, **{target: value for target, (_, value) in filled.items()}})
    return report


def lavis_vision_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image encoder's weights of a LAVIS checkpoint under our backbone's names (``features.*``): what a
    downstream classifier fine-tunes from published brat weights, without the Q-Former."""
    return {
        target.removeprefix("vision."): value
        for key, value in state.items()
        for target in _targets(key)
        if target.startswith("vision.")
    }


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``.pth``/``.pt``/``.bin``), unwrapping LAVIS's
    ``{"model": state, ...}``. Torch files load with ``weights_only``: no arbitrary objects unpickled."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    if path.suffix not in {".pth", ".pt", ".bin"}:
        raise UserError(f"{path}: expected a .safetensors, .pth, .pt or .bin checkpoint")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: holds objects other than tensors and plain containers; refusing to "
                         f"unpickle them (weights_only): {err}") from err  # fmt: skip
    if isinstance(saved, Mapping) and isinstance(saved.get("model"), Mapping):
        saved = saved["model"]
    if not isinstance(saved, Mapping):
        raise UserError(f"{path}: expected a state dict, got {type(saved).__name__}")
    not_tensors = [key for key, value in saved.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise UserError(f"{path}: state dict entries that are not tensors: {not_tensors}")
    return dict(saved)
