"""The report generator: bridge shapes, loss on report tokens only, frozen encoders, generation settings,
LoRA / full / frozen language models, and a trained tokenizer, on a tiny Llama built in code."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from brainvlp.models.config import DecodingConfig, LanguageModelConfig, ModelConfig, ReportGeneratorConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.models.language import (
    build_language_model,
    encode_reports,
    load_tokenizer_dir,
    set_finetuning,
    train_report_tokenizer,
)
from brainvlp.models.report_generator import IGNORE, QFormerViews, ReportGenerator, TokenMap
from brainvlp.spec import parse

REPORTS = [
    "A 2 cm enhancing mass in the left frontal lobe with surrounding oedema.",
    "No intracranial mass. The ventricles are normal in size.",
    "Two small lesions in the right parietal lobe, without enhancement.",
    "Resection cavity in the right temporal lobe. No residual enhancement.",
]
VOLUME = (32, 32, 32)
TINY_LM = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "vocab_size": 300}
TINY_VISION = {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False}


@pytest.fixture(scope="module")
def tokenizer():
    return train_report_tokenizer(REPORTS * 5, vocab_size=300)


def _lm(tokenizer, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = parse(LanguageModelConfig, {**TINY_LM, **overrides}, "language_model")
    return set_finetuning(build_language_model(config, tokenizer), config)


def _generator(
    tokenizer, *, freeze: bool = False, lm=None, bridge_hidden: int | None = 24
) -> ReportGenerator:
    from brainvlp.models.config import VISION, ResNetConfig

    torch.manual_seed(0)
    backbone = VISION.build(parse(ResNetConfig, TINY_VISION, "vision"), in_channels=1)
    prompt = tokenizer("Report:", add_special_tokens=False)["input_ids"]
    return ReportGenerator(
        TokenMap(backbone), lm or _lm(tokenizer), prompt, bridge_hidden=bridge_hidden, freeze_encoder=freeze
    )


def test_the_bridge_makes_soft_tokens_then_the_prompt_in_the_lm_width(tokenizer) -> None:
    model = _generator(tokenizer)
    volume = torch.randn(3, 1, *VOLUME)
    positions = model.image_encoder(volume).shape[1]
    prefix_BXL = model.prefix(volume)
    assert prefix_BXL.shape == (3, positions + len(model.prompt_ids_K), 32)
    prompt_embeds = model.language_model.get_input_embeddings()(model.prompt_ids_K)
    assert torch.equal(prefix_BXL[1, positions:], prompt_embeds)  # the prompt follows the soft tokens as is


def test_q_former_views_feed_the_bridge() -> None:
    model_config = parse(
        ModelConfig,
        {"vision": TINY_VISION, "text": {"path": "builtin:tiny"}, "qformer": {"num_queries": 3}},
        "model",
    )
    views = QFormerViews(DualEncoder(model_config, in_channels=1, volume_shape=VOLUME))
    assert views(torch.randn(2, 1, *VOLUME)).shape == (2, 3, views.out_dim)


def test_the_loss_is_cross_entropy_on_report_tokens_only(tokenizer) -> None:
    """Against a reference written out by hand: logits at the position before each report token predict
    it; the soft tokens, the prompt and the padding predict nothing."""
    model = _generator(tokenizer).double().eval()
    volume = torch.randn(2, 1, *VOLUME, dtype=torch.float64)
    batch = encode_reports(tokenizer, REPORTS[:2], max_length=64)
    out = model(volume, batch["input_ids"], batch["attention_mask"])
    prefix = out["logits"].shape[1] - batch["input_ids"].shape[1]
    terms = []
    for row in range(2):
        for t in range(int(batch["attention_mask"][row].sum())):
            logits = out["logits"][row, prefix + t - 1]
            terms.append(F.cross_entropy(logits[None], batch["input_ids"][row, t][None]))
    # Hugging Face's loss upcasts the logits to float32 whatever the model's dtype
    torch.testing.assert_close(out["loss"].double(), torch.stack(terms).mean(), rtol=1e-6, atol=1e-6)


def test_padding_and_the_prefix_logits_do_not_change_the_loss(tokenizer) -> None:
    model = _generator(tokenizer).double().eval()
    volume = torch.randn(1, 1, *VOLUME, dtype=torch.float64)
    short = encode_reports(tokenizer, REPORTS[1:2], max_length=64)
    padded = {k: F.pad(v, (0, 7), value=0) for k, v in short.items()}
    padded["input_ids"][:, -7:] = tokenizer.pad_token_id
    torch.testing.assert_close(
        model(volume, short["input_ids"], short["attention_mask"])["loss"],
        model(volume, padded["input_ids"], padded["attention_mask"])["loss"],
        rtol=1e-6,
        atol=1e-6,
    )
    assert IGNORE == -100  # Hugging Face's ignore_index


def test_a_frozen_encoder_gets_no_gradient_and_keeps_its_statistics(tokenizer) -> None:
    model = _generator(tokenizer, freeze=True).train()
    assert not model.image_encoder.training and model.bridge.training
    batch = encode_reports(tokenizer, REPORTS[:2], max_length=64)
    model(torch.randn(2, 1, *VOLUME), batch["input_ids"], batch["attention_mask"])["loss"].backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is not None for p in model.bridge.parameters())
    scratch = _generator(tokenizer, freeze=False).train()
    scratch(torch.randn(2, 1, *VOLUME), batch["input_ids"], batch["attention_mask"])["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scratch.image_encoder.parameters())


@pytest.mark.parametrize(("finetune", "trainable"), [("full", "all"), ("lora", "lora_"), ("frozen", "none")])
def test_finetuning_modes_train_the_right_weights(tokenizer, finetune: str, trainable: str) -> None:
    lm = _lm(tokenizer, finetune=finetune)
    names = [name for name, p in lm.named_parameters() if p.requires_grad]
    if trainable == "all":
        assert len(names) == len(list(lm.parameters()))
    elif trainable == "none":
        assert names == []
    else:
        assert names and all(trainable in name for name in names)
        assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in names} == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
        }


def test_an_unknown_lora_target_is_a_user_error(tokenizer) -> None:
    from brainvlp.errors import UserError

    with pytest.raises(UserError, match="not modules of"):
        _lm(tokenizer, finetune="lora", lora_targets=["query"])


def test_a_saved_model_loads_through_from_pretrained(tokenizer, tmp_path: Path) -> None:
    """The code path of a real local checkpoint (Llama-3.2-1B on a cluster): save, then load by path."""
    lm = _lm(tokenizer)
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    loaded_tokenizer = load_tokenizer_dir(tmp_path / "lm")
    config = parse(LanguageModelConfig, {"path": str(tmp_path / "lm"), "tokenizer": "model"}, "lm")
    loaded = build_language_model(config, loaded_tokenizer)
    ids = torch.tensor([[1, 5, 9, 2]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, lm(input_ids=ids).logits)
    assert loaded_tokenizer.decode(loaded_tokenizer(REPORTS[0])["input_ids"]) == REPORTS[0]


def test_generation_stops_at_the_length_and_respects_the_repetition_settings(tokenizer) -> None:
    model = _generator(tokenizer).eval()
    volume = torch.randn(2, 1, *VOLUME)
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    greedy = model.generate(volume, DecodingConfig(max_new_tokens=12), **special)
    assert greedy.shape[0] == 2 and greedy.shape[1] <= 12
    beams = model.generate(volume, DecodingConfig(max_new_tokens=12, num_beams=3), **special)
    assert beams.shape[0] == 2 and beams.shape[1] <= 12
    blocked = model.generate(volume, DecodingConfig(max_new_tokens=20, no_repeat_ngram_size=2), **special)
    for row in blocked.tolist():
        row = [t for t in row if t != tokenizer.pad_token_id]
        bigrams = list(itertools.pairwise(row))
        assert len(bigrams) == len(set(bigrams))


def test_a_tiny_generator_learns_to_write_the_report_of_each_volume(tokenizer) -> None:
    """Two distinct volumes, two reports: after a short fit, greedy decoding writes each one's report."""
    model = _generator(tokenizer, lm=_lm(tokenizer, hidden_size=64, intermediate_size=128))
    torch.manual_seed(1)
    volume = torch.stack([torch.zeros(1, *VOLUME), torch.ones(1, *VOLUME)])
    batch = encode_reports(tokenizer, REPORTS[:2], max_length=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        loss = model(volume, batch["input_ids"], batch["attention_mask"])["loss"]
        loss.backward()
        optimizer.step()
    model.eval()
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    written = model.generate(volume, DecodingConfig(max_new_tokens=40), **special)
    assert tokenizer.batch_decode(written, skip_special_tokens=True) == REPORTS[:2], float(loss)


def test_the_trained_tokenizer_round_trips_and_reports_end_in_eos(tokenizer) -> None:
    for text in REPORTS:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    batch = encode_reports(tokenizer, REPORTS, max_length=64)
    lengths = batch["attention_mask"].sum(1)
    assert all(batch["input_ids"][row, n - 1] == tokenizer.eos_token_id for row, n in enumerate(lengths))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert encode_reports(tokenizer, REPORTS, max_length=5)["input_ids"].shape[1] == 5


def test_the_spec_checks_the_language_model_settings() -> None:
    from brainvlp.spec import SpecError

    with pytest.raises(SpecError, match="scratch model has no tokenizer"):
        parse(LanguageModelConfig, {"tokenizer": "model"}, "lm")
    with pytest.raises(SpecError, match="must divide"):
        parse(LanguageModelConfig, {"hidden_size": 30, "num_heads": 4}, "lm")
    config = parse(ReportGeneratorConfig, {"inputs": "views", "decoding": {"num_beams": 4}}, "rg")
    assert config.decoding.num_beams == 4 and config.language_model.finetune == "full"
