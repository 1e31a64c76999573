"""How long ``brainvlp validate`` takes to answer, against the issue's target of 2 s.

Each case runs ``brainvlp validate SPEC [--set ...]`` as a fresh process (what a user waits for: the
interpreter, the imports, the spec and input checks), ``--repeats`` times; the figure is the median wall
time. Cases: the quickstart (valid), and bad specs and inputs that must fail with one stderr line and exit
status 2. Each row also says whether the case kept that contract (status and line count).

Measured on this project's 2-core CPU machine, median of 3: the quickstart took 8.0 s before issue 17's
changes, 5.9 s with MONAI and transformers imported inside the model builders (and no interpreter teardown
when nothing started), 2.7-3.1 s with MONAI, DeepSpeed and scikit-learn lazy everywhere, and 0.39 s (0.59 s
of CPU) once the spec classes moved into torch-free config modules (``docs/architecture.md``): parsing a
spec imports neither torch, Ray nor MONAI. Every bad-spec case takes 0.36-0.41 s; a missing export takes
~1.2 s, because checking an export's metadata imports ``brainvlp.export`` (torch).

Run: ``python benchmarks/validate.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
TARGET_S = 2.0
SHARDS_FORMAT = "brainvlp-shards/3"  # brainvlp.data.shards.FORMAT, not imported: this script stays light
ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",  # else DeepSpeed warns on stderr while it looks for an accelerator
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def cases(tmp: Path) -> list[tuple[str, list[str], int]]:
    """(name, arguments after ``validate``, expected exit status)."""

    def spec(name: str, data: dict | str) -> str:
        path = tmp / f"{name}.yaml"
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return str(path)

    ingest = {"kind": "ingest", "output_root": str(tmp / "runs"), "tokenizer": "builtin:tiny"}
    shards = tmp / "shards"  # an index alone: validation reads no shard
    shards.mkdir()
    (shards / "index.json").write_text(json.dumps({"format": SHARDS_FORMAT, "splits": {"test": 10}}))
    evaluate = {"kind": "evaluate", "output_root": str(tmp / "runs"), "shards": str(shards)}
    return [
        ("quickstart (valid)", [str(QUICKSTART), "--set", f"output_root={tmp / 'runs'}"], 0),
        ("unknown key", [spec("unknown_key", {"kind": "phantom", "dataset": {"num_studys": 3}})], 2),
        ("unknown kind", [spec("unknown_kind", {"kind": "pretrian"})], 2),
        ("YAML syntax error", [spec("yaml_syntax", "kind: phantom\ndataset: {num_studies: 3\n")], 2),
        ("malformed --set", [str(QUICKSTART), "--set", "pretrain.train.epochs=[1, 2"], 2),
        ("missing manifest", [spec("missing_manifest", {**ingest, "manifest": str(tmp / "nope.csv")})], 2),
        (
            "missing shards",
            [spec("missing_shards", {"kind": "pretrain", "data": {"shards": str(tmp / "x")}})],
            2,
        ),
        ("missing export", [spec("missing_export", {**evaluate, "model": str(tmp / "x")})], 2),
        (
            "later step alone",
            [str(QUICKSTART), "--set", f"output_root={tmp / 'runs'}", "--set", "steps=[evaluate]"],
            2,
        ),
    ]


def command() -> list[str]:
    script = Path(sys.executable).parent / "brainvlp"  # the console script, as a user runs it
    return [str(script)] if script.exists() else [sys.executable, "-m", "brainvlp.cli"]


def time_case(args: list[str], repeats: int) -> tuple[float, float, subprocess.CompletedProcess]:
    """Median wall and CPU (user + system) seconds of ``repeats`` runs, and the last run's output. CPU time
    is the steadier figure on a busy machine; wall time is what the user waits."""
    walls, cpus, proc = [], [], None
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            [*command(), "validate", *args], cwd=REPO, env=ENV, capture_output=True, text=True
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus), proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"brainvlp validate, median of {args.repeats} runs each; target {TARGET_S:g} s\n")
    print(f"{'case':<22} {'wall s':>7} {'cpu s':>6}  {'target':<6}  contract")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, case_args, expected in cases(Path(tmp)):
            median, cpu, proc = time_case(case_args, args.repeats)
            lines = proc.stderr.splitlines()
            kept = proc.returncode == expected and (expected == 0 or len(lines) == 1)
            failures += not kept
            verdict = "ok" if median <= TARGET_S else "SLOW"
            shown = lines[-1] if lines else proc.stdout.strip()
            status = "ok" if kept else f"BROKEN (exit {proc.returncode}, {len(lines)} stderr lines)"
            print(f"{name:<22} {median:7.2f} {cpu:6.2f}  {verdict:<6}  {status}: {shown[:90]}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
