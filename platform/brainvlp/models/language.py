"""The language model that writes reports, its tokenizer, and how much of it trains (brat section 5).

- ``build_language_model``: a Hugging Face causal LM from a local directory, loaded with
  ``AutoModelForCausalLM.from_pretrained(path, local_files_only=True)`` (Llama-3.2-1B in brat; the hub is
  never reached), or with ``path: scratch`` a small Llama from ``LanguageModelConfig``'s sizes. Tests save a
  scratch model and load it back through ``from_pretrained``, the same code path a real checkpoint takes.
- ``train_report_tokenizer``: a byte-level BPE (the ``tokenizers`` library, GPT-2/Llama style) trained on the
  training split's reports, with ``<s>``, ``</s>`` and ``<pad>``; trained once on the driver and saved with
  the run, because BPE training breaks ties between equal pair counts by hash order and two processes
  would not agree on the ids.
- ``set_finetuning``: all weights, LoRA adapters on the attention projections (``peft``; Hu et al. 2022), or
  none (only the bridge learns).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

from brainvlp.errors import UserError
from brainvlp.models.config import LanguageModelConfig

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def train_report_tokenizer(reports: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE over ``reports`` (no text leaves this process: only the merges are kept)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte can be written, none is unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(reports, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def load_tokenizer_dir(path: str | Path) -> PreTrainedTokenizerFast:
    """A saved tokenizer (the run's trained one, or the LM's own), with a pad token for batching."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except OSError as err:
        raise UserError(f"no tokenizer in {path}: {err}") from None
    if tokenizer.pad_token is None:  # Llama ships without one; padding positions carry no loss anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_language_model(config: LanguageModelConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """The LM in float32 (the engine casts to bf16 on GPU), sized to the tokenizer."""
    if config.path == "scratch":
        llama = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=config.max_positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        return AutoModelForCausalLM.from_config(llama)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            config.path, local_files_only=True, torch_dtype=torch.float32
        )
    except OSError as err:
        raise UserError(f"language_model.path: no causal LM in {config.path}: {err}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # a tokenizer of our own, or added pads
        model.resize_token_embeddings(len(tokenizer))
    return model


def set_finetuning(model: PreTrainedModel, config: LanguageModelConfig) -> nn.Module:
    """Full fine-tuning, LoRA adapters (the returned ``PeftModel`` wraps ``model``), or a frozen LM."""
    if config.finetune == "full":
        return model
    if config.finetune == "frozen":
        model.requires_grad_(False)
        return model
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(config.lora_targets) - names)
    if missing:
        raise UserError(f"language_model.lora_targets: {missing} are not modules of {type(model).__name__}")
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def encode_reports(
    tokenizer: PreTrainedTokenizerFast, reports: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Report token ids ``B x T`` ending in EOS (so the model learns where a report stops), right-padded,
    with their attention mask; a report longer than ``max_length`` keeps its start and loses its EOS."""
    ids = [
        tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in reports
    ]
    ids = [row[:max_length] for row in ids]
    width = max(len(row) for row in ids)
    input_ids_BT = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask_BT = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids_BT[row, : len(tokens)] = torch.tensor(tokens)
        mask_BT[row, : len(tokens)] = 1
    return {"input_ids": input_ids_BT, "attention_mask": mask_BT}
