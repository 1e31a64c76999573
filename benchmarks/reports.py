"""Report processing time against report length: the platform's chunked path against pysbd on the whole text.

pysbd's rules are superlinear in the length of the text they see (issue 17: a 1 MB report kept an ingest
task busy for over 600 s). ``prepare_report`` segments in ``CHUNK_CHARS`` pieces and stops after the
sentences it keeps, so its time should stay flat (it reads only the first sentences) and, with no early
stop (``--all``), grow linearly. Prints seconds per length and the ratio against the whole-text baseline.

    python benchmarks/reports.py            # 10 kB .. 1 MB reports

Measured on the 2-core CPU (2026-12-05): prepare_report 0.015 / 0.009 / 0.020 / 0.130 s at 10 k / 50 k /
100 k / 1 M characters; every sentence 0.04 / 0.18 / 0.42 / 8.9 s (pysbd compiles a regex per sentence,
so its per-chunk cost is roughly constant); pysbd on the whole text 0.09 / 2.2 / 12.6 s (2.2x / 12x / 30x
the chunked time, growing with length). Ingest rejects reports over ``limits.max_report_chars`` (100,000)
before any of this runs.
"""

from __future__ import annotations

import argparse
import time

from brainvlp.data.reports import ReportConfig, _segmenter, iter_sentences, prepare_report
from brainvlp.tokenization import load_tokenizer

SENTENCE = "Finding {i} is a 2.3 x 1.8 cm lesion in the left frontal lobe, e.g. stable vs. prior. "


def report(chars: int) -> str:
    text, i = "FINDINGS: ", 0
    while len(text) < chars:
        text += SENTENCE.format(i=i)
        i += 1
    return text


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10_000, 50_000, 100_000, 1_000_000])
    parser.add_argument("--baseline-max", type=int, default=100_000, help="longest text given to pysbd whole")
    args = parser.parse_args()
    tokenizer, config = load_tokenizer("builtin:tiny"), ReportConfig()
    print(
        f"{'chars':>9} | {'prepare_report s':>16} | {'all sentences s':>15} | {'pysbd whole s':>13} | ratio"
    )
    for chars in args.lengths:
        text = report(chars)
        ours = timed(prepare_report, text, tokenizer, config)
        every = timed(lambda t: sum(1 for _ in iter_sentences(t)), text)
        whole = timed(_segmenter().segment, text) if chars <= args.baseline_max else float("nan")
        ratio = f"{whole / every:.1f}x" if whole == whole else "(baseline skipped: superlinear)"
        print(f"{chars:>9} | {ours:>16.3f} | {every:>15.3f} | {whole:>13.3f} | {ratio}")


if __name__ == "__main__":
    main()
