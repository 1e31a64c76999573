"""COCO caption metrics against hand-computed values and the toolkit itself; the bootstrap's intervals.

Shape legend: N studies, S seeds.
"""

from __future__ import annotations

import logging
import math
import shutil

import numpy as np
import pytest
from pycocoevalcap.meteor.meteor import Meteor

from brainvlp.evaluate import nlg

java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs a Java jar")
WORDS = ("left", "right", "frontal", "parietal", "lobe", "mass", "lesion", "enhancing", "small", "large",
         "no", "midline", "shift", "oedema")  # fmt: skip


def _corpus(n: int, seeds: int, rng: np.random.Generator) -> tuple[list[str], list[list[str]]]:
    """N references of 4..12 words and S runs that keep each word with probability 0.7."""
    refs = [" ".join(rng.choice(WORDS, rng.integers(4, 13))) + "." for _ in range(n)]
    runs = [[" ".join(w if rng.random() < 0.7 else rng.choice(WORDS) for w in r.split()) for r in refs]
            for _ in range(seeds)]  # fmt: skip
    return refs, runs


def _expanded(refs: list[str], hyps: list[str], weights_N: np.ndarray) -> tuple[list[str], list[str]]:
    """The corpus where study i appears weights_N[i] times (a bootstrap resample, written out)."""
    rows = np.repeat(np.arange(len(refs)), weights_N.astype(int))
    return [refs[i] for i in rows], [hyps[i] for i in rows]


def _as_dicts(refs: list[str], hyps: list[str]) -> tuple[dict, dict]:
    return {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}


def _same(a: dict[str, tuple[float, float, float]], b: dict[str, tuple[float, float, float]]) -> bool:
    """Equal intervals, NaN (METEOR without the jar) equal to NaN."""
    return a.keys() == b.keys() and np.array_equal([*a.values()], [*b.values()], equal_nan=True)


def test_tokenize_lowercases_keeps_numbers_and_hyphenated_words_and_drops_punctuation() -> None:
    assert nlg.tokenize("A 3.2 cm T1-weighted lesion (left)!") == "a 3.2 cm t1-weighted lesion left"
    assert nlg.tokenize("No mass.\nT2/FLAIR: normal; 5% shift, e.g. here.") == (
        "no mass t2/flair normal 5 shift e.g here"
    )
    assert nlg.tokenize('The patient\'s scan -- "stable"') == "the patient s scan stable"
    assert nlg.tokenize("") == nlg.tokenize(" ... ||| ") == ""


def test_bleu_of_a_two_study_corpus_by_hand() -> None:
    # Study 1: "the cat sat on the mat" / "the cat sat on a mat": matches 5/6 unigrams (one "the" clipped),
    #   3/5 bigrams (the cat, cat sat, sat on), 2/4 trigrams, 1/3 4-grams; 6 hypothesis words, 6 reference.
    # Study 2: "no mass lesion is seen today" / "no mass lesion is seen": 5/5, 4/4, 3/3, 2/2; 5 and 6 words.
    # Corpus: p1 = 10/11, p2 = 7/9, p3 = 5/7, p4 = 3/5; c = 11 < r = 12, so BP = exp(1 - 12/11).
    # BLEU-n = BP * (p1 ... pn)^(1/n). Study 2's sentence BLEU-1 = exp(1 - 6/5) * 1.
    refs = ["The cat sat on the mat.", "No mass lesion is seen today."]
    hyps = ["the cat sat on a mat", "No mass lesion is seen"]
    precisions = np.array([10 / 11, 7 / 9, 5 / 7, 3 / 5])
    brevity = math.exp(1 - 12 / 11)
    scores = nlg.corpus_scores(refs, hyps, meteor=False)
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(brevity * np.prod(precisions[:n]) ** (1 / n), abs=1e-6)
    assert nlg.per_study_scores(refs, hyps, meteor=False)["BLEU-1"][1] == pytest.approx(math.exp(-0.2))


def test_rouge_l_by_hand() -> None:
    # "small lesion in the left frontal lobe" (7 words) against "lesion in the right frontal lobe with
    # oedema" (8): LCS "lesion in the frontal lobe" = 5, P = 5/8, R = 5/7, F = (1 + b^2) P R / (R + b^2 P)
    # with b = 1.2. The second study is exact (F = 1); the corpus value is the mean over studies.
    refs = ["Small lesion in the left frontal lobe.", "No shift."]
    hyps = ["lesion in the right frontal lobe with oedema", "no shift"]
    precision, recall, beta2 = 5 / 8, 5 / 7, 1.2**2
    expected = (1 + beta2) * precision * recall / (recall + beta2 * precision)
    np.testing.assert_allclose(nlg.per_study_scores(refs, hyps, meteor=False)["ROUGE-L"], [expected, 1.0])
    assert nlg.corpus_scores(refs, hyps, meteor=False)["ROUGE-L"] == pytest.approx((expected + 1) / 2)


def test_cider_of_an_exact_corpus_is_ten_per_study_with_all_four_orders_and_lower_when_wrong() -> None:
    # Hypothesis = reference: the tf-idf vectors coincide, so each order's cosine is 1 and the Gaussian
    # length penalty is exp(0) = 1; CIDEr-D = 10 * mean over n = 1..4. Every n-gram occurs in one of the two
    # references: idf = log(2) - log(1) > 0. The 3-word report has no 4-gram, so its 4-gram norm is 0 and
    # the toolkit leaves that cosine at 0: 10 * 3/4 = 7.5. The corpus value is the mean, 8.75.
    refs = ["alpha beta gamma delta", "one two three"]
    np.testing.assert_allclose(nlg.per_study_scores(refs, refs, meteor=False)["CIDEr"], [10.0, 7.5])
    assert nlg.corpus_scores(refs, refs, meteor=False)["CIDEr"] == pytest.approx(8.75)
    # A one-study corpus: log(corpus size) = log(1) = 0 = every n-gram's log document frequency, so all idf
    # weights vanish and even an exact report scores 0: CIDEr needs a corpus.
    assert nlg.corpus_scores(refs[:1], refs[:1], meteor=False)["CIDEr"] == 0.0
    wrong = nlg.corpus_scores(refs, ["alpha beta gamma one", "one two three"], meteor=False)["CIDEr"]
    longer = nlg.corpus_scores(refs, [refs[0] + " x y z w v u", refs[1]], meteor=False)["CIDEr"]
    assert wrong < 8.75 and longer < 8.75


def test_resampled_metrics_equal_the_toolkit_on_the_written_out_resample() -> None:
    """BLEU from summed counts and CIDEr with the resample's document frequencies are the toolkit's values
    on the corpus with the drawn studies repeated."""
    rng = np.random.default_rng(1)
    refs, (hyps,) = _corpus(30, 1, rng)
    stats = nlg._Statistics([nlg.tokenize(t) for t in refs], [nlg.tokenize(t) for t in hyps], None)
    for weights_N in (np.ones(30), np.bincount(rng.integers(0, 30, 30), minlength=30).astype(float)):
        expected = nlg.corpus_scores(*_expanded(refs, hyps, weights_N), meteor=False)
        np.testing.assert_allclose(stats.scores(weights_N), list(expected.values()), rtol=1e-12)


@java
def test_meteor_is_one_for_an_exact_report_zero_for_a_disjoint_one_and_resamples_as_the_jar() -> None:
    """Our sum of the jar's statistics scores a resample (a repeated study, all four match stages used:
    lesion/lesions stem, big/large synonym, haemorrhage/bleeding paraphrase) as the jar does."""
    refs = ["the large lesions are enhancing", "a dog ran", "no midline shift", "small mass seen",
            "the lesion is big", "there is no evidence of haemorrhage"]  # fmt: skip
    hyps = ["the large lesions are enhancing", "zzz", "no big shift of the midline", "small lesion is seen",
            "the lesions are large", "there is no sign of bleeding"]  # fmt: skip
    weights_N = np.array([0.0, 2.0, 1.0, 1.0, 3.0, 1.0])
    with nlg._meteor_jar() as jar:
        corpus, per_study_N = jar.compute_score(*_as_dicts(refs, hyps))
        stats_N23 = nlg._meteor_stats(jar, refs, hyps)
        resampled, _ = jar.compute_score(*_as_dicts(*_expanded(refs, hyps, weights_N)))
    assert per_study_N[0] > 0.9 and per_study_N[1] == 0.0
    assert (stats_N23[:, 4:20].reshape(-1, 4, 4).sum(0)[:, 0] > 0).all()  # content matches in every stage
    assert nlg._meteor_score(np.ones(6) @ stats_N23) == pytest.approx(corpus, abs=1e-12)
    assert nlg._meteor_score(weights_N @ stats_N23) == pytest.approx(resampled, abs=1e-12)


@java
def test_the_meteor_jar_is_closed_after_use() -> None:
    with nlg._meteor_jar() as jar:
        pass
    assert jar.meteor_p.returncode is not None and not jar.lock.locked()
    Meteor.__del__(jar)  # what garbage collection runs later: returns at once


@java
def test_a_jar_that_dies_is_an_error_not_a_hang() -> None:
    with pytest.raises(RuntimeError, match="METEOR jar ended"), nlg._meteor_jar() as jar:
        jar.meteor_p.kill()  # as the watchdog does after _METEOR_TIMEOUT_S
        jar.compute_score(*_as_dicts(["no mass"], ["no mass"]))
    assert not jar.lock.locked()


def test_without_java_meteor_is_nan_with_one_warning(monkeypatch, caplog) -> None:
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)
    nlg._warn_without_java.cache_clear()
    with caplog.at_level(logging.WARNING, logger=nlg.__name__):
        first = nlg.corpus_scores(["no mass"], ["no mass"])
        per_study = nlg.per_study_scores(["no mass"], ["no mass"])
    assert math.isnan(first["METEOR"]) and np.isnan(per_study["METEOR"]).all()
    assert first["BLEU-1"] == pytest.approx(1.0)
    assert len([r for r in caplog.records if "METEOR" in r.getMessage()]) == 1


def test_bootstrap_holds_the_estimate_repeats_for_a_seed_and_narrows_with_studies(caplog, capsys) -> None:
    rng = np.random.default_rng(0)
    small_refs, (small_hyps,) = _corpus(20, 1, rng)
    large_refs, (large_hyps,) = _corpus(200, 1, rng)
    with caplog.at_level(logging.DEBUG):
        wide = nlg.bootstrap_ci(small_refs, small_hyps, n_boot=200, seed=3, meteor=False)
    assert _same(wide, nlg.bootstrap_ci(small_refs, small_hyps, n_boot=200, seed=3, meteor=False))
    assert not _same(wide, nlg.bootstrap_ci(small_refs, small_hyps, n_boot=200, seed=4, meteor=False))
    narrow = nlg.bootstrap_ci(large_refs, large_hyps, n_boot=200, seed=3, meteor=False)
    point = nlg.corpus_scores(small_refs, small_hyps, meteor=False)
    for metric in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"):
        estimate, low, high = wide[metric]
        assert estimate == pytest.approx(point[metric], rel=1e-12)
        assert low <= estimate <= high, metric
        assert narrow[metric][2] - narrow[metric][1] < high - low, metric
    assert all(math.isnan(v) for v in wide["METEOR"])
    assert not capsys.readouterr().out and not any(w in caplog.text for w in WORDS)  # numbers only


def test_bootstrap_over_seeds_averages_the_runs_and_resamples_whole_groups() -> None:
    rng = np.random.default_rng(2)
    refs, runs_SN = _corpus(40, 3, rng)
    result = nlg.bootstrap_ci(refs, runs_SN, n_boot=100, meteor=False)
    for metric in ("BLEU-4", "ROUGE-L", "CIDEr"):
        mean = np.mean([nlg.corpus_scores(refs, run, meteor=False)[metric] for run in runs_SN])
        assert result[metric][0] == pytest.approx(mean, rel=1e-12)
        assert result[metric][1] <= result[metric][0] <= result[metric][2]
    singletons = [[i] for i in range(40)]
    by_study = nlg.bootstrap_ci(refs, runs_SN[0], n_boot=50, meteor=False)
    assert _same(nlg.bootstrap_ci(refs, runs_SN[0], singletons, n_boot=50, meteor=False), by_study)
    # One group of every study: each resample is the whole corpus, so the interval is the point.
    whole = nlg.bootstrap_ci(refs, runs_SN[0], [list(range(40))], n_boot=20, meteor=False)
    for estimate, low, high in whole.values():
        assert math.isnan(estimate) or estimate == pytest.approx(low) == pytest.approx(high)
    with pytest.raises(ValueError, match="exactly once"):
        nlg.bootstrap_ci(refs, runs_SN[0], [list(range(39))], meteor=False)
    with pytest.raises(ValueError, match="one report per reference"):
        nlg.bootstrap_ci(refs, [runs_SN[0], runs_SN[1][:-1]], meteor=False)
