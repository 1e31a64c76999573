"""Natural-language metrics of generated radiology reports (brat Table 4, one reference per study) as the
COCO caption toolkit defines them (Chen et al. 2015), computed by its maintained package ``pycocoevalcap``.

- BLEU-1..4 (Papineni et al. 2002): clipped n-gram precisions summed over the corpus, brevity penalty from
  the closest reference length; per study, the toolkit's sentence BLEU.
- METEOR 1.5 (Banerjee & Lavie 2005): the toolkit's Java jar (exact, stem, synonym, paraphrase matches),
  statistics summed over studies. Without ``java`` on the PATH it is NaN, with one warning.
- ROUGE-L (Lin 2004): LCS F-measure with beta 1.2 per study, the mean over studies.
- CIDEr-D (Vedantam et al. 2015): tf-idf cosine of 1..4-grams, clipped, Gaussian length penalty (sigma 6),
  x10, mean over studies. Document frequencies come from the corpus's references: a one-study corpus scores 0.

Text is tokenized here (``tokenize``), not by the toolkit's PTBTokenizer (Stanford CoreNLP in Java).

``bootstrap_ci`` is a percentile bootstrap over studies (and seeds) that scores every resample as the
toolkit scores that corpus (a study drawn twice counts twice, in CIDEr's document frequencies and log corpus
size too), from per-study statistics taken once: BLEU's n-gram counts, the jar's METEOR statistics (summed
as Meteor 1.5 sums them), ROUGE-L, and CIDEr's n-gram counts with the idf recomputed per resample. That takes
about 0.4 s for 200 studies x 1000 resamples (plus about 5 s for the jar), so no approximation is needed.
No report text is logged: only numbers leave this module.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import precook
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

log = logging.getLogger(__name__)
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# Runs of letters and digits, kept whole across an inner ".", "-" or "/"; every other character separates.
_TOKEN = re.compile(r"[^\W_]+(?:[./-][^\W_]+)*")
_TINY, _SMALL = 1e-15, 1e-9  # BleuScorer's guards against 0 / 0
# Meteor 1.5's English parameters (task "rank", the jar's default): alpha, beta, gamma, delta, and the
# weights of its exact, stem, synonym and paraphrase stages (edu.cmu.meteor.util.Constants).
_ALPHA, _BETA, _GAMMA, _DELTA = 0.85, 0.20, 0.60, 0.75
_STAGE_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])
_METEOR_TIMEOUT_S = 900.0  # a jar still busy after this is killed: an error instead of a hang
_CIDER_SIGMA = 6.0


def tokenize(text: str) -> str:
    """``text`` as the COCO toolkit scores it after PTB tokenization: lower-case tokens joined by spaces.

    A token is a run of letters and digits, kept whole across an inner ``.``, ``-`` or ``/`` ("3.2",
    "t1-weighted", "t2/flair"), as the PTB tokenizer keeps numbers and hyphenated words. Every other
    character separates tokens and is dropped, as the toolkit drops the PTB tokenizer's punctuation tokens.
    Unlike CoreNLP, a clitic is split at its apostrophe, which is dropped ("patient's" -> "patient s"), and
    symbols such as ``%`` are dropped rather than kept as tokens.
    """
    return " ".join(_TOKEN.findall(text.lower()))


def corpus_scores(
    references: Sequence[str], hypotheses: Sequence[str], *, meteor: bool = True
) -> dict[str, float]:
    """The corpus-level metrics (``METRICS``) as the COCO toolkit reports them; ``hypotheses[i]`` is the
    generated report of the study whose reference is ``references[i]``. ``meteor=False`` skips the jar
    (METEOR NaN), as does a missing Java runtime."""
    return _toolkit(references, hypotheses, meteor)[0]


def per_study_scores(
    references: Sequence[str], hypotheses: Sequence[str], *, meteor: bool = True
) -> dict[str, np.ndarray]:
    """Each metric per study, shape ``(N,)``, as the toolkit returns them: sentence BLEU-1..4, METEOR per
    segment, ROUGE-L, and CIDEr-D (with the document frequencies of the whole corpus)."""
    return _toolkit(references, hypotheses, meteor)[1]


def bootstrap_ci(
    references: Sequence[str],
    hypotheses: Sequence[str] | Sequence[Sequence[str]],
    groups: Sequence[Sequence[int]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    meteor: bool = True,
) -> dict[str, tuple[float, float, float]]:
    """(point estimate, low, high) of every metric: a percentile bootstrap over studies and seeds.

    ``hypotheses`` is one run (a report per study) or several seeds' runs (``hypotheses[s][i]``: seed s's
    report of study i) against the same references. The point estimate is the corpus metric
    (``corpus_scores``), averaged over seeds. Each of ``n_boot`` resamples draws, with replacement, as many
    seeds as there are and as many studies (paired across seeds) or, with ``groups`` (a partition of the
    study indices, e.g. one group per patient), as many whole groups; it scores each drawn seed's reports of
    the drawn studies as one corpus and averages over the drawn seeds. ``low`` and ``high`` are the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled values.
    """
    runs = [hypotheses] if hypotheses and isinstance(hypotheses[0], str) else list(hypotheses)
    if not references or not runs or any(len(r) != len(references) for r in runs) or n_boot < 1:
        raise ValueError(f"need runs of one report per reference ({len(references)}) and n_boot >= 1")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    refs = [tokenize(text) for text in references]
    group_of_N = _group_ids(groups, len(refs))
    use_meteor = meteor and _java()
    with _meteor_jar() if use_meteor else contextlib.nullcontext() as jar:
        stats = [_Statistics(refs, [tokenize(text) for text in run], jar) for run in runs]
    point = np.mean([run.scores(np.ones(len(refs))) for run in stats], axis=0)
    rng, n_groups = np.random.default_rng(seed), int(group_of_N.max()) + 1
    draws_BM = np.empty((n_boot, len(METRICS)))
    for b in range(n_boot):
        seeds = rng.integers(0, len(stats), len(stats))
        weights_N = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group_of_N]
        by_seed = {s: stats[s].scores(weights_N.astype(np.float64)) for s in set(seeds.tolist())}
        draws_BM[b] = np.mean([by_seed[s] for s in seeds.tolist()], axis=0)
    low, high = np.quantile(draws_BM, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {m: (float(point[k]), float(low[k]), float(high[k])) for k, m in enumerate(METRICS)}


def _toolkit(
    references: Sequence[str], hypotheses: Sequence[str], meteor: bool
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Corpus and per-study scores from the toolkit's scorers, inputs as ``{study: [tokenized text]}``."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need one hypothesis per reference: {len(references)} vs {len(hypotheses)}")
    gts = {i: [tokenize(text)] for i, text in enumerate(references)}
    res = {i: [tokenize(text)] for i, text in enumerate(hypotheses)}
    bleu, bleu_4N = Bleu(4).compute_score(gts, res, verbose=0)
    corpus = {f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)}
    per_study = {f"BLEU-{n + 1}": np.asarray(bleu_4N[n], np.float64) for n in range(4)}
    corpus["METEOR"], per_study["METEOR"] = math.nan, np.full(len(gts), np.nan)
    if meteor and _java():
        with _meteor_jar() as jar:
            score, scores_N = jar.compute_score(gts, res)
        corpus["METEOR"], per_study["METEOR"] = float(score), np.asarray(scores_N, np.float64)
    for name, scorer in (("ROUGE-L", Rouge()), ("CIDEr", Cider())):
        score, scores_N = scorer.compute_score(gts, res)
        corpus[name], per_study[name] = float(score), np.asarray(scores_N, np.float64)
    return {m: corpus[m] for m in METRICS}, {m: per_study[m] for m in METRICS}


class _Statistics:
    """One run's per-study statistics, from which the corpus metrics of any resample follow; a resample is
    ``weights_N``, how often each study was drawn."""

    def __init__(self, refs: list[str], hyps: list[str], jar: Meteor | None) -> None:
        if len(hyps) != len(refs):
            raise ValueError(f"need one hypothesis per reference: {len(refs)} vs {len(hyps)}")
        self.bleu_N10 = np.array([_bleu_counts(r, h) for r, h in zip(refs, hyps, strict=True)], np.float64)
        rouge = Rouge()
        self.rouge_N = np.array([rouge.calc_score([h], [r]) for r, h in zip(refs, hyps, strict=True)])
        self.meteor_N23 = None if jar is None else _meteor_stats(jar, refs, hyps)
        self.cider = _CiderCounts(refs, hyps)

    def scores(self, weights_N: np.ndarray) -> np.ndarray:
        """The metrics (``METRICS`` order) of the corpus where study i appears ``weights_N[i]`` times."""
        bleu = _bleu(weights_N @ self.bleu_N10)
        meteor = math.nan if self.meteor_N23 is None else _meteor_score(weights_N @ self.meteor_N23)
        rouge = float(weights_N @ self.rouge_N / weights_N.sum())
        return np.array([*bleu, meteor, rouge, self.cider.score(weights_N)])


def _bleu_counts(ref: str, hyp: str) -> list[float]:
    """Test length, closest reference length, then guessed and correct n-grams, n = 1..4 (``cook_test``)."""
    cooked = cook_test(hyp, cook_refs([ref], n=4), eff="closest", n=4)
    return [cooked["testlen"], cooked["reflen"], *cooked["guess"], *cooked["correct"]]


def _bleu(total_10: np.ndarray) -> list[float]:
    """Corpus BLEU-1..4 of summed counts, as ``BleuScorer.compute_score(option="closest")``."""
    testlen, reflen, guess, correct = total_10[0], total_10[1], total_10[2:6], total_10[6:10]
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    log_precisions = np.cumsum(np.log((correct + _TINY) / (guess + _SMALL)))
    return [float(math.exp(log_precisions[k] / (k + 1)) * penalty) for k in range(4)]


class _CiderCounts:
    """CIDEr-D of any resample from n-gram counts taken once (``precook``): ``CiderScorer.compute_cider``
    with the resample's document frequencies and log corpus size. One entry E per (study, n-gram of its
    hypothesis or reference)."""

    def __init__(self, refs: list[str], hyps: list[str]) -> None:
        vocab: dict[tuple[str, ...], int] = {}
        rows: list[tuple[int, int, int, int, int]] = []  # study, n-gram id, order - 1, hyp count, ref count
        lengths_N2 = []
        for i, (ref, hyp) in enumerate(zip(refs, hyps, strict=True)):
            hyp_counts, ref_counts = precook(hyp), precook(ref)
            for gram in hyp_counts.keys() | ref_counts.keys():
                gram_id = vocab.setdefault(gram, len(vocab))
                rows.append((i, gram_id, len(gram) - 1, hyp_counts.get(gram, 0), ref_counts.get(gram, 0)))
            lengths_N2.append([_bigrams(hyp_counts), _bigrams(ref_counts)])
        study_E, self.gram_E, order_E, hyp_E, ref_E = np.array(rows, np.int64).reshape(-1, 5).T
        self.n_studies, self.n_grams = len(refs), len(vocab)
        self.key_E = study_E * 4 + order_E
        self.ref_gram, self.ref_study = self.gram_E[ref_E > 0], study_E[ref_E > 0]
        self.clip_E = np.minimum(hyp_E, ref_E) * ref_E.astype(np.float64)
        self.hyp2_E, self.ref2_E = hyp_E.astype(np.float64) ** 2, ref_E.astype(np.float64) ** 2
        delta_N = np.diff(np.array(lengths_N2, np.float64).reshape(-1, 2), axis=1)[:, 0]
        self.penalty_N = np.exp(-(delta_N**2) / (2 * _CIDER_SIGMA**2))

    def score(self, weights_N: np.ndarray) -> float:
        """Corpus CIDEr-D of the resample ``weights_N``."""
        n_docs = weights_N.sum()
        df_V = np.bincount(self.ref_gram, weights=weights_N[self.ref_study], minlength=self.n_grams)
        idf2_E = ((np.log(n_docs) - np.log(np.maximum(df_V, 1.0))) ** 2)[self.gram_E]
        dot, hyp2, ref2 = (
            np.bincount(self.key_E, weights=idf2_E * x, minlength=4 * self.n_studies).reshape(-1, 4)
            for x in (self.clip_E, self.hyp2_E, self.ref2_E)
        )
        norms_N4 = np.sqrt(hyp2 * ref2)
        cosine_N4 = np.divide(dot, norms_N4, out=dot, where=norms_N4 > 0)  # as the toolkit: 0 if a norm is 0
        return float(weights_N @ (10.0 * cosine_N4.mean(1) * self.penalty_N) / n_docs)


def _bigrams(counts: dict[tuple[str, ...], int]) -> int:
    """The toolkit's CIDEr "length" of a text: its number of bigrams (``counts2vec`` counts order index 1)."""
    return sum(c for gram, c in counts.items() if len(gram) == 2)


def _meteor_stats(jar: Meteor, refs: list[str], hyps: list[str]) -> np.ndarray:
    """Per study, the jar's 23 statistics: test and reference length and function words, per stage (test
    content, reference content, test function, reference function matches), chunks, test and reference
    matched words. A perfect match's chunks are zeroed: ``MeteorStats.addStats`` skips them when summing."""
    stats_N23 = np.array([jar._stat(h, [r]).split() for r, h in zip(refs, hyps, strict=True)], np.float64)
    stages = stats_N23[:, 4:20].reshape(-1, 4, 4)
    perfect = (
        (stages[:, :, 0].sum(1) + stages[:, :, 2].sum(1) == stats_N23[:, 0])
        & (stages[:, :, 1].sum(1) + stages[:, :, 3].sum(1) == stats_N23[:, 1])
        & (stats_N23[:, 20] == 1)
    )
    stats_N23[perfect, 20] = 0.0
    return stats_N23


def _meteor_score(total_23: np.ndarray) -> float:
    """Meteor 1.5's score of summed statistics (``MeteorScorer.computeMetrics``)."""
    lengths, function_words, stages = total_23[0:2], total_23[2:4], total_23[4:20].reshape(4, 4)
    matched = _STAGE_WEIGHTS @ (_DELTA * stages[:, :2] + (1 - _DELTA) * stages[:, 2:])  # test, reference
    chunks, word_matches = total_23[20], total_23[21] + total_23[22]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = matched / (_DELTA * (lengths - function_words) + (1 - _DELTA) * function_words)
        f_mean = 1.0 / ((1 - _ALPHA) / precision + _ALPHA / recall)
        exact = stages[:, [0, 2]].sum() == lengths[0] and stages[:, [1, 3]].sum() == lengths[1]
        fragmentation = 0.0 if exact and chunks == 1 else chunks / (word_matches / 2)
        score = float(f_mean * (1 - _GAMMA * fragmentation**_BETA))
    return 0.0 if math.isnan(score) else max(score, 0.0)


@contextlib.contextmanager
def _meteor_jar() -> Iterator[Meteor]:
    """The toolkit's Meteor (its jar in a ``java`` subprocess), closed however the block ends. A watchdog
    kills a jar still running after ``_METEOR_TIMEOUT_S``, which ends the block in an error, not a hang."""
    jar = Meteor()
    process = jar.meteor_p
    watchdog = threading.Timer(_METEOR_TIMEOUT_S, process.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield jar
    except (ValueError, OSError) as error:  # no answer (float(b"")) or a broken pipe: did the jar die?
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        if process.returncode is None:
            raise
        raise RuntimeError(f"the METEOR jar ended without a score (timeout {_METEOR_TIMEOUT_S} s)") from error
    finally:
        watchdog.cancel()
        if jar.lock.locked():  # held if compute_score failed half-way; Meteor.__del__ acquires it again
            jar.lock.release()
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            with contextlib.suppress(OSError):  # flushing into a dead jar's pipe
                stream.close()


def _java() -> bool:
    """Whether METEOR can run (``java`` on the PATH); warns once per process when it cannot."""
    if shutil.which("java") is not None:
        return True
    _warn_without_java()
    return False


@functools.cache
def _warn_without_java() -> None:
    log.warning("METEOR needs a Java runtime and no `java` is on the PATH: METEOR is reported as NaN")


def _group_ids(groups: Sequence[Sequence[int]] | None, n_studies: int) -> np.ndarray:
    """Each study's group index, shape ``(N,)``; every study its own group when ``groups`` is None."""
    if groups is None:
        return np.arange(n_studies)
    members = [list(group) for group in groups]
    if any(not group for group in members) or sorted(i for g in members for i in g) != list(range(n_studies)):
        raise ValueError(f"groups must be non-empty and hold each study 0..{n_studies - 1} exactly once")
    group_of_N = np.empty(n_studies, np.int64)
    for g, group in enumerate(members):
        group_of_N[group] = g
    return group_of_N
