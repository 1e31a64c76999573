"""ConVIRT-sections: the loss against a float64 loop reference, gradients and invariances; cutting a
report's sections out of its single token sequence; the section index a batch carries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainvlp.data.batches import section_ids
from brainvlp.losses.config import LOSSES, ConvirtSectionsLossConfig
from brainvlp.models.config import ModelConfig, TextConfig
from brainvlp.models.text import section_tokens
from brainvlp.sections import SECTION_KEYS

FINDINGS, IMPRESSION = SECTION_KEYS.index("findings"), SECTION_KEYS.index("impression")


def reference_loss(image, text, sections, present, tau, lam_global, alpha, lam_local) -> float:
    """Term by term: ConVIRT between image and report, and between the two sections of reports that have
    both, restricted to such reports as queries and as candidates."""
    image, text, sections = (
        F.normalize(image, dim=-1),
        F.normalize(text, dim=-1),
        F.normalize(sections, dim=-1),
    )
    n = image.shape[0]

    def nce(queries, candidates, i, pool):
        logits = [math.exp(float(queries[i] @ candidates[k]) / tau) for k in pool]
        return -math.log(math.exp(float(queries[i] @ candidates[i]) / tau) / sum(logits))

    everyone = range(n)
    global_loss = (
        sum(
            lam_global * nce(image, text, i, everyone) + (1 - lam_global) * nce(text, image, i, everyone)
            for i in everyone
        )
        / n
    )
    both = [i for i in everyone if present[i].all()]
    local = sum(
        alpha * nce(sections[:, 0], sections[:, 1], i, both)
        + (1 - alpha) * nce(sections[:, 1], sections[:, 0], i, both)
        for i in both
    ) / max(1, len(both))
    return lam_local * local + (1 - lam_local) * global_loss


def make_batch(seed: int, n: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    present = torch.ones(n, 2, dtype=torch.bool)
    present[1, 0] = present[3, 1] = False
    return {
        "image_emb": torch.randn(n, 5, generator=gen, dtype=torch.float64),
        "text_emb": torch.randn(n, 5, generator=gen, dtype=torch.float64),
        "section_emb": torch.randn(n, 2, 5, generator=gen, dtype=torch.float64),
        "section_mask": present,
    }


@pytest.mark.parametrize(
    ("tau", "lam_global", "alpha", "lam_local"),
    [(0.1, 0.75, 0.75, 0.75), (0.5, 0.2, 0.0, 1.0), (0.2, 1, 1, 0)],
)
def test_matches_reference_float64(tau: float, lam_global: float, alpha: float, lam_local: float) -> None:
    batch = make_batch(0)
    config = ConvirtSectionsLossConfig(
        temperature=tau,
        image_to_text_weight=lam_global,
        findings_to_impression_weight=alpha,
        local_weight=lam_local,
    )
    got = LOSSES.build(config)(batch)["contrastive_loss"]
    expected = reference_loss(
        batch["image_emb"], batch["text_emb"], batch["section_emb"], batch["section_mask"],
        tau, lam_global, alpha, lam_local,
    )  # fmt: skip
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_gradients_and_batch_permutation() -> None:
    batch = make_batch(1, n=4)
    loss = LOSSES.build(ConvirtSectionsLossConfig())
    floats = ("image_emb", "text_emb", "section_emb")

    def value(*tensors):
        return loss({**batch, **dict(zip(floats, tensors, strict=True))})["contrastive_loss"]

    inputs = tuple(batch[k].clone().requires_grad_(True) for k in floats)
    assert torch.autograd.gradcheck(value, inputs)
    value(*inputs).backward()
    # Report 1 lacks its findings: its findings embedding gets no gradient, its impression none either.
    assert inputs[2].grad[1].abs().sum() == 0 and inputs[2].grad[0].abs().sum() > 0
    perm = torch.randperm(4)
    permuted = {k: v[perm] for k, v in batch.items()}
    torch.testing.assert_close(loss(permuted)["contrastive_loss"], loss(batch)["contrastive_loss"])


def test_no_report_with_both_sections_leaves_the_global_term() -> None:
    batch = make_batch(2)
    batch["section_mask"][:, 1] = False
    out = LOSSES.build(ConvirtSectionsLossConfig(local_weight=0.75))(batch)
    assert out["local"] == 0
    torch.testing.assert_close(out["contrastive_loss"], 0.25 * out["global"])


def test_section_tokens_cut_each_section_with_the_special_tokens() -> None:
    # [CLS]=2 f1 f1 | f2 | i1 i1 [SEP]=3 pad; report 2: impression only, then a padded sentence slot.
    input_ids = torch.tensor([[2, 11, 12, 13, 21, 22, 3, 0], [2, 31, 32, 3, 0, 0, 0, 0]])
    mask = (torch.arange(8) < torch.tensor([[7], [4]])).long()
    spans = torch.tensor([[[1, 3], [3, 4], [4, 6]], [[1, 3], [0, 0], [0, 0]]])
    sections = torch.tensor([[FINDINGS, FINDINGS, IMPRESSION], [IMPRESSION, -1, -1]])
    ids, ids_mask, present = section_tokens(input_ids, mask, spans, sections, FINDINGS)
    assert ids[0, : int(ids_mask[0].sum())].tolist() == [2, 11, 12, 13, 3]
    assert ids[1, : int(ids_mask[1].sum())].tolist() == [2, 3] and present.tolist() == [True, False]
    ids, ids_mask, present = section_tokens(input_ids, mask, spans, sections, IMPRESSION)
    assert ids[0, : int(ids_mask[0].sum())].tolist() == [2, 21, 22, 3]
    assert ids[1, : int(ids_mask[1].sum())].tolist() == [2, 31, 32, 3] and present.tolist() == [True, True]


def test_batch_section_ids_follow_section_keys() -> None:
    names = np.array([["findings", "impression"], ["report"]], dtype=object)
    ids = section_ids(names, 3)
    assert ids.tolist() == [[FINDINGS, IMPRESSION, -1], [SECTION_KEYS.index("report"), -1, -1]]


def test_unknown_text_section_is_a_spec_error() -> None:
    from brainvlp.spec import SpecError, parse

    with pytest.raises(SpecError, match=r"model\.text\.sections.*'finding'"):
        parse(TextConfig, {"sections": ["finding", "impression"]}, "model.text")


@pytest.mark.parametrize("freeze", [False, True])
def test_task_averages_separately_encoded_sections(freeze: bool) -> None:
    from brainvlp.models.dual_encoder import DualEncoder
    from brainvlp.spec import parse
    from brainvlp.train.task import PretrainTask

    config = {
        "vision": {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False},
        "text": {"path": "builtin:tiny", "freeze": freeze, "sections": ["findings", "impression"]},
        "embed_dim": 8,
    }
    torch.manual_seed(0)
    model = DualEncoder(parse(ModelConfig, config, "model"), in_channels=1, volume_shape=(16, 32, 32)).eval()
    task = PretrainTask(model, LOSSES.build(ConvirtSectionsLossConfig()), scale_max=800, augment=None).eval()
    input_ids = torch.tensor([[2, 11, 12, 13, 21, 22, 3], [2, 31, 32, 3, 0, 0, 0]])
    batch = {
        "study_id": ["a", "b"],
        "volume": torch.zeros(2, 1, 16, 32, 32, dtype=torch.int16),
        "input_ids": input_ids,
        "attention_mask": (input_ids > 0).long(),
        "spans": torch.tensor([[[1, 4], [4, 6]], [[1, 3], [0, 0]]]),
        "sentence_mask": torch.tensor([[True, True], [True, False]]),
        "section_ids": torch.tensor([[FINDINGS, IMPRESSION], [IMPRESSION, -1]]),
    }
    with torch.no_grad():
        out = task.represent(batch, frozenset({"global", "sections"}))
        again = task.represent(batch, frozenset({"global", "sections"}))  # from the cache when frozen
        alone = model.project_text(
            model.text(torch.tensor([[2, 21, 22, 3]]), torch.ones(1, 4, dtype=torch.long))
        )
    assert out["section_mask"].tolist() == [[True, True], [False, True]]
    torch.testing.assert_close(out["section_emb"][0, 1], alone[0])  # IMPRESSION encoded on its own
    expected = F.normalize(out["section_emb"][0].sum(0), dim=0)
    torch.testing.assert_close(out["text_emb"][0], expected)
    torch.testing.assert_close(out["text_emb"][1], out["section_emb"][1, 1])  # one section: itself
    torch.testing.assert_close(again["text_emb"], out["text_emb"])
    assert (len(task.section_cache) == 2) == freeze
