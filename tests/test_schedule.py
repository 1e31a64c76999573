"""Learning-rate schedules: linear warm-up, then constant, cosine or SeLIP's polynomial decay."""

from __future__ import annotations

import math

import pytest
import torch

from brainvlp.spec import SpecError, parse
from brainvlp.train.config import TrainConfig
from brainvlp.train.engine import lr_lambda

WARMUP, TOTAL = 10, 110


@pytest.mark.parametrize("schedule", ["constant", "cosine", "poly"])
def test_warmup_is_linear(schedule: str) -> None:
    factor = lr_lambda(schedule, WARMUP, TOTAL)
    assert [factor(s) for s in range(WARMUP)] == pytest.approx([(s + 1) / WARMUP for s in range(WARMUP)])
    assert factor(WARMUP) == pytest.approx(1.0)


@pytest.mark.parametrize("power", [0.9, 2.0])
def test_poly_matches_formula_and_ends_at_zero(power: float) -> None:
    factor = lr_lambda("poly", WARMUP, TOTAL, poly_power=power)
    for step in (WARMUP, 35, 60, 109):
        progress = (step - WARMUP) / (TOTAL - WARMUP)
        assert factor(step) == pytest.approx((1 - progress) ** power)
    assert factor(60) == pytest.approx(0.5**power)
    assert factor(TOTAL) == 0.0
    assert factor(TOTAL + 5) == 0.0  # clamped past the end, never negative or complex


def test_poly_default_power_is_selip() -> None:
    assert lr_lambda("poly", 0, 100)(50) == pytest.approx(0.5**0.9)
    assert TrainConfig().poly_power == 0.9


def test_cosine_and_constant_unchanged() -> None:
    cosine, constant = lr_lambda("cosine", WARMUP, TOTAL), lr_lambda("constant", WARMUP, TOTAL)
    for step in (WARMUP, 35, 60, 109, TOTAL):
        progress = (step - WARMUP) / (TOTAL - WARMUP)
        assert cosine(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)))
        assert constant(step) == 1.0
    assert cosine(60) == pytest.approx(0.5)


def test_no_warmup_starts_at_full_rate() -> None:
    assert lr_lambda("poly", 0, 100)(0) == 1.0


def test_lambda_lr_scales_every_group() -> None:
    """Through torch's LambdaLR, as the Engine uses it: each group's own initial rate is scaled."""
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 1e-4}, {"params": params[1:], "lr": 5e-5}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("poly", 4, 20, 0.9))
    for _ in range(12):
        optimizer.step()
        scheduler.step()
    factor = (1 - (12 - 4) / 16) ** 0.9
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4 * factor, 5e-5 * factor])


@pytest.mark.parametrize("power", [0.0, -1.0])
def test_poly_power_must_be_positive(power: float) -> None:
    with pytest.raises(SpecError) as info:
        parse(TrainConfig, {"poly_power": power}, "pretrain.train")  # the field's domain, as in a spec
    assert "pretrain.train.poly_power" in str(info.value)
    assert "must be > 0" in str(info.value)
