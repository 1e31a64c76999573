"""Q-Former (brat / BLIP-2) and sentence embeddings from token spans."""

from __future__ import annotations

import pytest
import torch

from brainvlp.data.shards import pad_spans
from brainvlp.models.config import QFormerConfig, TextConfig
from brainvlp.models.qformer import QFormer
from brainvlp.models.text import TextEncoder, _tiny_bert, span_means


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    return _tiny_bert().eval()


def test_span_means_match_a_loop_over_sentences() -> None:
    hidden_BTH = torch.randn(2, 9, 4, dtype=torch.float64)
    spans, mask = pad_spans([[[1, 3], [3, 8]], [[1, 2]]])
    assert mask.tolist() == [[True, True], [True, False]] and spans[1, 1].tolist() == [0, 0]
    got = span_means(hidden_BTH, torch.from_numpy(spans))
    for b, rows in enumerate([[(1, 3), (3, 8)], [(1, 2)]]):
        for s, (start, end) in enumerate(rows):
            torch.testing.assert_close(got[b, s], hidden_BTH[b, start:end].mean(0))
    assert not got[1, 1].any()


def test_sentence_and_report_embeddings_come_from_one_pass() -> None:
    encoder = TextEncoder(TextConfig(path="builtin:tiny", pooling="mean")).eval()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones_like(ids)
    spans = torch.tensor([[[1, 4], [4, 6]], [[1, 6], [0, 0]]])
    report_BH, sentences_BSH = encoder.encode(ids, mask, spans)
    hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(report_BH, encoder(ids, mask))
    torch.testing.assert_close(sentences_BSH[0, 1], hidden[0, 4:6].mean(0))


def test_views_and_cross_attention_maps(bert) -> None:
    qformer = QFormer(QFormerConfig(num_queries=4), bert, image_dim=8).eval()
    views_BQH, attn_BQP = qformer(torch.randn(3, 10, 8))
    assert views_BQH.shape == (3, 4, bert.config.hidden_size) and attn_BQP.shape == (3, 4, 10)
    torch.testing.assert_close(attn_BQP.sum(-1), torch.ones(3, 4))
    # Cross-attention every 2nd layer: layers 0, 2, ... have it, the others do not.
    layers = qformer.qformer.encoder.layer
    assert [hasattr(layer, "crossattention") for layer in layers] == [i % 2 == 0 for i in range(len(layers))]


def test_starts_from_the_text_encoder_weights(bert) -> None:
    qformer = QFormer(QFormerConfig(num_queries=4), bert, image_dim=8)
    layer, text_layer = qformer.qformer.encoder.layer[1], bert.encoder.layer[1]
    assert torch.equal(layer.attention.attention.query.weight, text_layer.attention.self.query.weight)
    assert torch.equal(layer.intermediate_query.dense.weight, text_layer.intermediate.dense.weight)
    assert torch.equal(layer.output.LayerNorm.weight, text_layer.output.LayerNorm.weight)
    assert torch.equal(qformer.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    random = QFormer(QFormerConfig(num_queries=4, init_from_text=False), bert, image_dim=8)
    assert not torch.equal(
        random.qformer.encoder.layer[1].intermediate_query.dense.weight, text_layer.intermediate.dense.weight
    )
    with pytest.raises(ValueError, match="has only 2"):
        QFormer(QFormerConfig(num_layers=3), bert, image_dim=8)


def test_itg_is_causal_over_the_report_and_sees_the_image(bert) -> None:
    qformer = QFormer(QFormerConfig(num_queries=4), bert, image_dim=8).eval()
    image = torch.randn(2, 10, 8)
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    logits_BTV = qformer.itg_logits(image, ids, mask)
    assert logits_BTV.shape == (2, 6, bert.config.vocab_size)
    later = ids.clone()
    later[:, 5] = 7  # a later token must not change earlier predictions
    torch.testing.assert_close(qformer.itg_logits(image, later, mask)[:, :5], logits_BTV[:, :5])
    other_image = qformer.itg_logits(torch.randn(2, 10, 8), ids, mask)
    assert not torch.allclose(other_image, logits_BTV)


def test_gradients_reach_queries_and_cross_attention(bert) -> None:
    qformer = QFormer(QFormerConfig(num_queries=4), bert, image_dim=8)
    image = torch.randn(2, 10, 8, requires_grad=True)
    views_BQH, attn_BQP = qformer(image)
    (views_BQH.square().mean() + attn_BQP.square().mean()).backward()
    assert qformer.query_tokens.grad.abs().sum() > 0 and image.grad.abs().sum() > 0
    assert qformer.qformer.encoder.layer[0].crossattention.attention.key.weight.grad.abs().sum() > 0
