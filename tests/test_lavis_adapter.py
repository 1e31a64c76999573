"""brat checkpoints in LAVIS key layout load into our Q-Former model, strictly, and are read safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from brainvlp.models.config import ModelConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.models.lavis import load_lavis_state_dict, read_checkpoint
from brainvlp.spec import parse

SMALL_DENSENET = {"name": "densenet121", "init_features": 8, "growth_rate": 4, "block_config": [1, 1, 1, 1]}
CONFIG = {
    "vision": SMALL_DENSENET,
    "text": {"path": "builtin:tiny"},
    "embed_dim": 8,
    "proj_hidden": None,
    "qformer": {"num_queries": 4},
}

# LAVIS's BertLayer names -> transformers' Blip2QFormerLayer names, written out for the test on its own.
LAYER_NAMES = {
    "attention.self.query": "attention.attention.query",
    "attention.self.key": "attention.attention.key",
    "attention.self.value": "attention.attention.value",
    "attention.output.dense": "attention.output.dense",
    "attention.output.LayerNorm": "attention.output.LayerNorm",
    "intermediate.dense": "intermediate.dense",
    "output.dense": "output.dense",
    "output.LayerNorm": "output.LayerNorm",
    "intermediate_query.dense": "intermediate_query.dense",
    "output_query.dense": "output_query.dense",
    "output_query.LayerNorm": "output_query.LayerNorm",
}
CROSS_NAMES = {
    "crossattention.self.query": "crossattention.attention.query",
    "crossattention.self.key": "crossattention.attention.key",
    "crossattention.self.value": "crossattention.attention.value",
    "crossattention.output.dense": "crossattention.output.dense",
    "crossattention.output.LayerNorm": "crossattention.output.LayerNorm",
}


def _model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(parse(ModelConfig, CONFIG, "model"), in_channels=1, volume_shape=(64, 64, 64))


@pytest.fixture(scope="module")
def model() -> DualEncoder:
    return _model()


def _like(tensor: torch.Tensor) -> torch.Tensor:
    return torch.randint(1, 9, tensor.shape) if not tensor.is_floating_point() else torch.randn(tensor.shape)


def lavis_state(model: DualEncoder) -> dict[str, torch.Tensor]:
    """A brat checkpoint as LAVIS saves it, with random tensors shaped for ``model``."""
    qformer = model.qformer
    state = {
        f"visual_encoder.densenet.features.{k}": _like(v)
        for k, v in model.vision.features.state_dict().items()
    }
    width = model.vision.out_dim
    state |= {"visual_encoder.densenet.class_layers.out.weight": torch.randn(1, width),
              "visual_encoder.densenet.class_layers.out.bias": torch.randn(1)}  # fmt: skip
    state |= {f"ln_vision.{k}": _like(v) for k, v in qformer.ln_vision.state_dict().items()}
    state["query_tokens"] = _like(qformer.query_tokens)
    embeddings = "Qformer.bert.embeddings."
    state[embeddings + "word_embeddings.weight"] = _like(qformer.word_embeddings.weight)
    state[embeddings + "position_embeddings.weight"] = _like(qformer.position_embeddings.weight)
    state |= {
        embeddings + f"LayerNorm.{k}": _like(v) for k, v in qformer.qformer.layernorm.state_dict().items()
    }
    state[embeddings + "position_ids"] = torch.arange(qformer.position_embeddings.num_embeddings)[None]
    for i, layer in enumerate(qformer.qformer.encoder.layer):
        names = LAYER_NAMES | (CROSS_NAMES if i % 2 == 0 else {})
        for lavis, ours in names.items():
            for k, v in layer.get_submodule(ours).state_dict().items():
                state[f"Qformer.bert.encoder.layer.{i}.{lavis}.{k}"] = _like(v)
    hidden = qformer.word_embeddings.embedding_dim
    head = "Qformer.cls.predictions."
    state[head + "bias"] = torch.randn(qformer.word_embeddings.num_embeddings)
    state[head + "decoder.bias"] = state[head + "bias"]  # tied, as LAVIS's state_dict lists it twice
    state[head + "decoder.weight"] = state[embeddings + "word_embeddings.weight"]
    state |= {head + "transform.dense.weight": torch.randn(hidden, hidden), head + "transform.dense.bias":
              torch.randn(hidden), head + "transform.LayerNorm.weight": torch.randn(hidden),
              head + "transform.LayerNorm.bias": torch.randn(hidden)}  # fmt: skip
    for lavis, ours in (("vision_proj", model.view_proj[1]), ("text_proj", model.text_proj[1])):
        state |= {f"{lavis}.{k}": _like(v) for k, v in ours.state_dict().items()}
    state |= {"itm_head.weight": torch.randn(2, hidden), "itm_head.bias": torch.randn(2)}
    state["temp"] = torch.tensor(0.05)
    return state


def test_every_lavis_key_lands_where_brat_reads_it(model) -> None:
    state = lavis_state(model)
    report = load_lavis_state_dict(model, state)
    q, text = model.qformer, model.text.model
    layer0, layer1 = q.qformer.encoder.layer[0], q.qformer.encoder.layer[1]
    src = "Qformer.bert.encoder.layer.{}.{}.weight".format
    pairs = [
        (model.vision.features.conv0.weight, "visual_encoder.densenet.features.conv0.weight"),
        (model.vision.features.denseblock2.denselayer1.layers.norm2.running_var,
         "visual_encoder.densenet.features.denseblock2.denselayer1.layers.norm2.running_var"),
        (q.ln_vision.weight, "ln_vision.weight"),
        (q.query_tokens, "query_tokens"),
        (layer1.attention.attention.query.weight, src(1, "attention.self.query")),
        (layer0.crossattention.attention.key.weight, src(0, "crossattention.self.key")),
        (layer0.intermediate_query.dense.weight, src(0, "intermediate_query.dense")),
        (layer0.output.dense.weight, src(0, "output.dense")),
        (q.qformer.layernorm.weight, "Qformer.bert.embeddings.LayerNorm.weight"),
        (q.word_embeddings.weight, "Qformer.bert.embeddings.word_embeddings.weight"),
        (q.lm_head.weight, "Qformer.cls.predictions.decoder.weight"),
        (q.lm_head.bias, "Qformer.cls.predictions.bias"),
        (model.view_proj[1].weight, "vision_proj.weight"),
        (model.text_proj[1].bias, "text_proj.bias"),
        # The text encoder is the Q-Former's BERT in text mode.
        (text.encoder.layer[1].attention.self.query.weight, src(1, "attention.self.query")),
        (text.encoder.layer[0].output.dense.weight, src(0, "output.dense")),
        (text.embeddings.LayerNorm.bias, "Qformer.bert.embeddings.LayerNorm.bias"),
        (text.embeddings.position_embeddings.weight, "Qformer.bert.embeddings.position_embeddings.weight"),
    ]  # fmt: skip
    for ours, key in pairs:
        assert torch.equal(ours, state[key]), key
    assert not torch.equal(layer0.output_query.dense.weight, layer0.output.dense.weight)
    assert not text.embeddings.token_type_embeddings.weight.any()
    assert report.temp == pytest.approx(0.05) and report.logit_scale == pytest.approx(20.0)
    assert {"itm_head.weight", "temp", "Qformer.cls.predictions.transform.dense.weight",
            "visual_encoder.densenet.class_layers.out.bias", "Qformer.bert.embeddings.position_ids"} <= set(
        report.ignored)  # fmt: skip
    assert set(report.loaded) | set(report.ignored) == set(state)
    assert {k.split(".")[0] for k in report.kept} == {"image_proj"} and report.ok


def test_torchvision_style_densenet_names_load(model) -> None:
    state = {k.replace(".layers.", "."): v for k, v in lavis_state(model).items()}
    load_lavis_state_dict(model, state)
    key = "visual_encoder.densenet.features.denseblock1.denselayer1.conv2.weight"
    assert torch.equal(model.vision.features.denseblock1.denselayer1.layers.conv2.weight, state[key])


def test_strict_lists_every_problem_and_loads_nothing(model) -> None:
    state = lavis_state(model)
    state["Qformer.bert.encoder.layer.0.attention.self.rotary.weight"] = torch.randn(2)
    del state["ln_vision.bias"]
    state["text_proj.weight"] = torch.randn(3, 3)
    before = model.qformer.query_tokens.detach().clone()
    with pytest.raises(ValueError, match="does not fit") as err:
        load_lavis_state_dict(model, state)
    for expected in ("attention.self.rotary.weight", "qformer.ln_vision.bias", "text_proj.weight (3, 3)"):
        assert expected in str(err.value)
    assert torch.equal(model.qformer.query_tokens, before)
    report = load_lavis_state_dict(model, state, strict=False)  # loads the rest
    assert report.missing == ["qformer.ln_vision.bias"] and len(report.mismatched) == 1
    assert torch.equal(model.qformer.ln_vision.weight, state["ln_vision.weight"])


def test_needs_single_linear_projections() -> None:
    vision = {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False}
    tiny = {**CONFIG, "vision": vision, "proj_hidden": 16}
    model = DualEncoder(parse(ModelConfig, tiny, "model"), in_channels=1, volume_shape=(16, 32, 32))
    with pytest.raises(ValueError, match="proj_hidden: None"):
        load_lavis_state_dict(model, {})


class NotATensor:
    pass


def test_read_checkpoint_round_trips_and_refuses_pickled_objects(tmp_path: Path) -> None:
    state = {
        "ln_vision.weight": torch.randn(4),
        "query_tokens": torch.randn(1, 2, 4),
        "temp": torch.tensor(0.07),
    }
    torch.save({"model": state, "epoch": 3}, tmp_path / "lavis.pth")
    save_file(state, tmp_path / "brat.safetensors")
    torch.save(state, tmp_path / "brat.bin")
    for name in ("lavis.pth", "brat.safetensors", "brat.bin"):
        loaded = read_checkpoint(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({"model": state, "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"expected a \.safetensors"):
        read_checkpoint(tmp_path / "brat.ckpt")


def test_downstream_fine_tunes_the_densenet_of_a_published_checkpoint(model, tmp_path: Path) -> None:
    from brainvlp.downstream.config import ModelEntry
    from brainvlp.downstream.fit import TaskData, build_classifier
    from brainvlp.downstream.weights import resolve_init

    state = lavis_state(model)
    torch.save({"model": state}, tmp_path / "brat.pth")
    entry = parse(
        ModelEntry,
        {"name": "brat", "init": "state_dict", "path": str(tmp_path / "brat.pth"), "adapter": "lavis",
         "vision": CONFIG["vision"]},
        "models.0",
    )  # fmt: skip
    data = TaskData(np.zeros((2, 1, 64, 64, 64), np.int16), [None, None], np.array([0, 1]), "binary", 1, 1.0)
    classifier = build_classifier(entry, resolve_init(entry, 1, (64, 64, 64)), data)
    ours = classifier.backbone.features.state_dict()
    reference = DualEncoder(parse(ModelConfig, CONFIG, "model"), in_channels=1, volume_shape=(64, 64, 64))
    load_lavis_state_dict(reference, state)
    assert ours.keys() == reference.vision.features.state_dict().keys()
    assert all(torch.equal(v, reference.vision.features.state_dict()[k]) for k, v in ours.items())
