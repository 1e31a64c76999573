"""GREEN itself: a local judge language model counts the errors of each generated report (Ostmeier et al.
2024, "GREEN: Generative Radiology Report Evaluation and Error Notation").

The extractors of ``evaluate.clinical`` read findings with rules; GREEN instead asks a fine-tuned LM
(GREEN-RadLlama2-7b, or any causal LM in a local directory) to compare a candidate report with the
reference and to write, per error category, how many clinically significant errors it found, and how
many findings match. The platform runs that model as one Ray task on a GPU of the user's cluster (no
network: ``from_pretrained`` of a local path), greedy, batched, and parses the counts:

- ``false_findings`` = (a) false report of a finding, ``missing_findings`` = (b) missing a finding,
  ``location_errors`` = (c) misidentified location, ``severity_errors`` = (d) misassessed severity; (e)
  and (f), comparisons with prior studies, are parsed and count toward GREEN but have no column;
- ``green`` = matched / (matched + all clinically significant errors), and 0 when nothing is matched,
  as GREEN's implementation scores it.

The prompt. GREEN's judges were fine-tuned on one prompt; give that template's file as ``prompt_file``
(a text with ``{reference}`` and ``{candidate}`` placeholders) to reproduce the paper. The default
template below states the same criteria and asks for the same output format in the platform's own words,
for general instruction-tuned judges. A response that does not follow the format is *unparsed*: its
counts are NaN, and the number of unparsed responses is reported next to the scores, never dropped
silently. Prompts and responses contain report text: they are neither logged nor stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainvlp.spec import NonNegativeFloat, PositiveInt

DEFAULT_PROMPT = """\
Task: judge a candidate radiology report against a reference report written by expert radiologists.

Count the clinically significant and the clinically insignificant errors of the candidate, in six \
categories:
(a) a finding reported in the candidate that the reference does not have;
(b) a finding of the reference that the candidate misses;
(c) a finding put in the wrong anatomic location or position;
(d) a finding whose severity is misjudged;
(e) a comparison with a prior study that the reference does not make;
(f) a change from a prior study, stated in the reference, that the candidate omits.
Judge the clinical findings, not the writing style.

Reference report:
{reference}

Candidate report:
{candidate}

Answer in exactly this format, also when there are no errors:
[Explanation]:
<explanation>

[Clinically Significant Errors]:
(a) <error type>: <number of errors>. <error 1>; <error 2>; ...
... one line for each of (a) to (f) ...

[Clinically Insignificant Errors]:
(a) <error type>: <number of errors>. <error 1>; <error 2>; ...
... one line for each of (a) to (f) ...

[Matched Findings]:
<number of matched findings>. <finding 1>; <finding 2>; ...
"""

CATEGORIES = "abcdef"
COLUMNS = {"a": "false_findings", "b": "missing_findings", "c": "location_errors", "d": "severity_errors"}
# Section headers of the response; a section runs to the next header. Bounded, so garbage stays linear.
_SECTION = re.compile(
    r"\[(Clinically Significant Errors|Clinically Insignificant Errors|Matched Findings)\]:"
)
_COUNT = re.compile(r"\(([a-f])\)[^:\n]{0,200}:\s*(\d{1,4})")
_LEADING_NUMBER = re.compile(r"^\s*(\d{1,4})")


@dataclass
class JudgeConfig:
    path: str = ""  # a local directory with a causal LM and its tokenizer (GREEN-RadLlama2-7b at full size)
    prompt_file: str | None = None  # a template with {reference} and {candidate}; None: DEFAULT_PROMPT
    batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 1024
    max_input_tokens: PositiveInt = 2048  # longer prompts keep their end (the answer format)
    num_gpus: NonNegativeFloat = 1.0  # of the Ray task; 0 runs it on CPU (slow; tests and tiny judges)


def parse_response(response: str) -> dict[str, float]:
    """GREEN's counts from one judge response; every value NaN when the format is not followed (no
    significant-errors section with a count for each of (a)-(f), or no matched-findings count)."""
    sections: dict[str, str] = {}
    text = response[-20000:]  # the counts end a response; a runaway one is not scanned whole
    headers = list(_SECTION.finditer(text))
    for header, following in zip(headers, [*headers[1:], None], strict=False):
        sections.setdefault(header[1], text[header.end() : following.start() if following else len(text)])
    significant = dict(_COUNT.findall(sections.get("Clinically Significant Errors", "")))
    matched = _LEADING_NUMBER.match(sections.get("Matched Findings", ""))
    if matched is None or set(significant) != set(CATEGORIES):
        return {name: math.nan for name in (*COLUMNS.values(), "matched_findings", "green")}
    errors = {category: int(significant[category]) for category in CATEGORIES}
    counts: dict[str, float] = {COLUMNS[c]: float(errors[c]) for c in COLUMNS}
    counts["matched_findings"] = float(matched[1])
    total = counts["matched_findings"] + sum(errors.values())
    counts["green"] = counts["matched_findings"] / total if counts["matched_findings"] else 0.0
    return counts


def _template(config: JudgeConfig) -> str:
    return Path(config.prompt_file).read_text() if config.prompt_file else DEFAULT_PROMPT


def judge_pairs(config: JudgeConfig, pairs: Sequence[tuple[str, str]]) -> list[dict[str, float]]:
    """GREEN's counts for each (reference, candidate) pair, in order, with the judge on this process's
    device (a GPU when there is one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(config.path, local_files_only=True)
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"  # generation continues the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.path, local_files_only=True, torch_dtype=dtype)
    model.to(device).eval()
    template, results = _template(config), []
    for start in range(0, len(pairs), config.batch_size):
        prompts = [
            template.format(reference=r, candidate=c) for r, c in pairs[start : start + config.batch_size]
        ]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                           max_length=config.max_input_tokens).to(device)  # fmt: skip
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        answers = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        results += [parse_response(answer) for answer in answers]
    return results


def run_judge(config: JudgeConfig, pairs: Sequence[tuple[str, str]]) -> list[dict[str, float]]:
    """``judge_pairs`` as one Ray task with ``num_gpus`` GPUs: the model loads once for every pair;
    identical pairs (a model that writes the same report for two studies) are judged once."""
    import ray

    unique = list(dict.fromkeys(pairs))
    task = ray.remote(num_gpus=config.num_gpus, num_cpus=1)(judge_pairs)
    judged = dict(zip(unique, ray.get(task.remote(config, unique)), strict=True))
    return [judged[pair] for pair in pairs]


def check_prompt(template: str) -> str | None:
    """Why a prompt template cannot be used, or None."""
    try:
        template.format(reference="r", candidate="c")
    except (KeyError, IndexError, ValueError) as err:
        return f"the template must contain only the placeholders {{reference}} and {{candidate}} ({err})"
    if "{reference}" not in template or "{candidate}" not in template:
        return "the template must contain {reference} and {candidate}"
    return None


def unparsed(results: Sequence[dict[str, Any]]) -> int:
    """How many judge responses did not follow the format."""
    return sum(math.isnan(r["green"]) for r in results)
