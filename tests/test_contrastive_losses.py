"""CLIP and ConVIRT losses vs float64 double-loop references; gradients, invariances; the 2-process gather
for every loss that contrasts across the batch."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from brainvlp.data.clauses import encode_clauses
from brainvlp.distributed import gather_features
from brainvlp.losses.base import total_loss
from brainvlp.losses.config import (
    LOSSES,
    BratLossConfig,
    ClipLossConfig,
    ConvirtLossConfig,
    ConvirtSectionsLossConfig,
    QFormerItcLossConfig,
    SelipLossConfig,
    TripletLossConfig,
)


def reference_info_nce(img: torch.Tensor, txt: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """lambda * l(image -> text) + (1 - lambda) * l(text -> image), term by term, averaged over pairs.

    ConVIRT's Eq. 1-3; CLIP's symmetric loss is lambda = 0.5.
    """
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        i2t = [math.exp(float(img[i] @ txt[k]) / tau) for k in range(n)]
        t2i = [math.exp(float(txt[i] @ img[k]) / tau) for k in range(n)]
        total += lam * -math.log(i2t[i] / sum(i2t)) + (1 - lam) * -math.log(t2i[i] / sum(t2i))
    return torch.tensor(total / n, dtype=torch.float64)


def make_loss(temperature: float = 0.1, **kwargs) -> torch.nn.Module:
    return LOSSES.build(ClipLossConfig(temperature=temperature), **kwargs).double()


def test_matches_reference_float64() -> None:
    torch.manual_seed(0)
    img, txt = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    got = make_loss(0.1)({"image_emb": img, "text_emb": txt})["contrastive_loss"]
    torch.testing.assert_close(got, reference_info_nce(img, txt, 0.1, 0.5))


def test_gradients_reach_both_towers_and_temperature() -> None:
    torch.manual_seed(1)
    img = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = make_loss()
    loss({"image_emb": img, "text_emb": txt})["contrastive_loss"].backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0
    assert loss.scale.log_scale.grad is not None and loss.scale.log_scale.grad != 0
    assert torch.autograd.gradcheck(
        lambda a, b: make_loss()({"image_emb": a, "text_emb": b})["contrastive_loss"], (img, txt)
    )


def test_invariant_to_batch_permutation_and_scale() -> None:
    torch.manual_seed(2)
    img, txt = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    perm = torch.randperm(5)
    loss = make_loss()
    base = loss({"image_emb": img, "text_emb": txt})["contrastive_loss"]
    permuted = loss({"image_emb": img[perm], "text_emb": txt[perm]})["contrastive_loss"]
    scaled = loss({"image_emb": 3 * img, "text_emb": 0.5 * txt})["contrastive_loss"]
    torch.testing.assert_close(base, permuted)
    torch.testing.assert_close(base, scaled)


def test_perfect_alignment_beats_random() -> None:
    torch.manual_seed(3)
    emb = torch.randn(8, 16, dtype=torch.float64)
    loss = make_loss(0.05)
    aligned = loss({"image_emb": emb, "text_emb": emb})["contrastive_loss"]
    shuffled = loss({"image_emb": emb, "text_emb": emb.roll(1, 0)})["contrastive_loss"]
    assert aligned < 0.1 < shuffled


def test_fixed_temperature_is_not_trained() -> None:
    loss = LOSSES.build(ClipLossConfig(learnable_temperature=False))
    assert not loss.scale.log_scale.requires_grad


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, config: object, data: dict, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        chunk = next(iter(data.values())).shape[0] // world_size
        local = {k: v[rank * chunk : (rank + 1) * chunk].clone() for k, v in data.items()}
        for value in local.values():
            value.requires_grad_(value.is_floating_point())
        gather = lambda x: gather_features(x, world_size=world_size)  # noqa: E731
        loss = LOSSES.build(config, rank=rank, world_size=world_size, gather=gather).double()
        value = total_loss(loss(local))
        value.backward()
        out[rank] = (value.detach(), {k: v.grad for k, v in local.items() if v.is_floating_point()})
    finally:
        dist.destroy_process_group()


def _local_features(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Local image positions and report tokens with their weighted counterparts (pLGG Eq. 2)."""
    text_mask = torch.arange(4) < torch.tensor([[4], [3], [4], [2], [4], [3], [1], [4]])
    out = {
        key: torch.randn(8, 3, 4, generator=gen, dtype=torch.float64)
        for key in ("image_local", "image_weighted")
    }
    for key in ("text_local", "text_weighted"):
        out[key] = torch.randn(8, 4, 4, generator=gen, dtype=torch.float64) * text_mask[..., None]
    return out


def _clauses() -> dict[str, torch.Tensor]:
    """Clause tensors of 8 studies, two without clauses (no SeLIP target), the rest of varied lengths."""
    site = {"modality": "FLAIR", "side": "left", "site": "frontal lobe", "appearance": "lesion"}
    other = {**site, "side": "right", "site": "posterior fossa", "appearance": "enhancing mass"}
    studies = [[site], [other], [], [site], [site, other], [other, site, site], [site], []]
    findings = [json.dumps({"clauses": clauses}) if clauses else "" for clauses in studies]
    encoded = encode_clauses(findings, [str(i) for i in range(8)])
    return {key: torch.from_numpy(value) for key, value in encoded.items()}


def _views_and_sentences(gen: torch.Generator) -> dict[str, torch.Tensor]:
    mask = torch.rand(8, 3, generator=gen) < 0.6
    mask[:, 0] = True
    mask[5, 2] = True  # workers hold different sentence counts: the loss pads them to one shape
    return {
        "views": torch.randn(8, 4, 5, generator=gen, dtype=torch.float64),
        "sentences": torch.randn(8, 3, 5, generator=gen, dtype=torch.float64),
        "sentence_mask": mask,
        "text_emb": torch.randn(8, 5, generator=gen, dtype=torch.float64),
    }


@pytest.mark.parametrize(
    "config",
    [
        ClipLossConfig(temperature=0.1),
        ConvirtLossConfig(),
        ConvirtSectionsLossConfig(),
        BratLossConfig(diversity="none", itg_weight=0.0, max_sentences=3),
        BratLossConfig(matching="colbert", diversity="none", itg_weight=0.0, max_sentences=3),
        QFormerItcLossConfig(),
        TripletLossConfig(candidates=7),  # hard negatives: the draw must not differ between runs
        SelipLossConfig(max_clauses=3, max_words=20),
        TripletLossConfig(candidates=7, local_weight=0.5, max_tokens=5),
    ],
    ids=[
        "clip",
        "convirt",
        "convirt_sections",
        "brat",
        "brat-colbert",
        "qformer_itc",
        "triplet",
        "selip",
        "triplet-local",
    ],
)
def test_gathered_two_process_run_equals_global_batch(config: object) -> None:
    """Mean of per-worker losses is the global-batch loss; gradients averaged as DeepSpeed does match."""
    gen = torch.Generator().manual_seed(4)
    if isinstance(config, ClipLossConfig | ConvirtLossConfig | TripletLossConfig | SelipLossConfig):
        data = {"image_emb": torch.randn(8, 4, generator=gen, dtype=torch.float64)}
        data["text_emb"] = torch.randn(8, 4, generator=gen, dtype=torch.float64)
        data["location"] = torch.tensor([0, 1, 0, 2, 1, 1, -1, 2])
        data["section_emb"] = torch.randn(8, 2, 4, generator=gen, dtype=torch.float64)
        present = [[1, 1], [1, 0], [1, 1], [0, 1], [1, 1], [1, 1], [0, 0], [1, 1]]
        data["section_mask"] = torch.tensor(present, dtype=torch.bool)
        data.update(_clauses())
        data.update(_local_features(gen))
    else:
        data = _views_and_sentences(gen)
    manager = mp.get_context("spawn").Manager()
    out = manager.dict()
    mp.start_processes(_worker, args=(2, _free_port(), config, data, out), nprocs=2, start_method="spawn")
    full_data = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in data.items()}
    full = total_loss(LOSSES.build(config).double()(full_data))
    full.backward()
    torch.testing.assert_close((out[0][0] + out[1][0]) / 2, full.detach())
    # Each worker's gradient sums every worker's loss through the gather; averaging over 2 workers
    # gives the gradient of the global-batch loss.
    for key, value in full_data.items():
        if value.grad is not None:
            torch.testing.assert_close(torch.cat([out[0][1][key], out[1][1][key]]) / 2, value.grad)


@pytest.mark.parametrize("world_size", [1])
def test_gather_is_identity_on_one_worker(world_size: int) -> None:
    x = torch.randn(3, 2)
    assert gather_features(x, world_size=world_size) is x


@pytest.mark.parametrize(("tau", "lam"), [(0.1, 0.75), (0.5, 0.0), (0.07, 1.0)])
def test_convirt_matches_reference_float64(tau: float, lam: float) -> None:
    torch.manual_seed(5)
    img, txt = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    loss = LOSSES.build(ConvirtLossConfig(temperature=tau, image_to_text_weight=lam))
    got = loss({"image_emb": img, "text_emb": txt})["contrastive_loss"]
    torch.testing.assert_close(got, reference_info_nce(img, txt, tau, lam))


def test_convirt_with_equal_weights_is_clip_at_a_fixed_temperature() -> None:
    torch.manual_seed(6)
    img, txt = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    convirt = LOSSES.build(ConvirtLossConfig(temperature=0.2, image_to_text_weight=0.5))
    clip = make_loss(0.2)
    batch = {"image_emb": img, "text_emb": txt}
    torch.testing.assert_close(convirt(batch)["contrastive_loss"], clip(batch)["contrastive_loss"])


def test_convirt_gradients_and_permutation_invariance() -> None:
    torch.manual_seed(7)
    img = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = LOSSES.build(ConvirtLossConfig())
    assert torch.autograd.gradcheck(
        lambda a, b: loss({"image_emb": a, "text_emb": b})["contrastive_loss"], (img, txt)
    )
    perm = torch.randperm(4)
    base = loss({"image_emb": img, "text_emb": txt})["contrastive_loss"]
    permuted = loss({"image_emb": img[perm], "text_emb": txt[perm]})["contrastive_loss"]
    torch.testing.assert_close(base, permuted)


def test_convirt_weight_out_of_range_is_a_spec_error() -> None:
    from brainvlp.spec import SpecError, parse

    with pytest.raises(SpecError, match=r"loss.image_to_text_weight: must be in \[0, 1\]"):
        parse(ConvirtLossConfig, {"name": "convirt", "image_to_text_weight": 1.5}, "loss")
