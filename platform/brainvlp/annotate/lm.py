"""The ``lm`` annotator: a local causal language model rewrites each report and answers the finding
questions of brat's Fig. 14 as JSON (brat section 8 used GPT-4; here the model runs on the user's GPUs).

Method, per batch of reports:

1. Rewrite (``rewrite: true``): the rewrite template with the report in place of ``{report}``; the
   response, stripped, replaces the report. An empty rewrite ends the row (``empty_rewrite``), and the row's
   report is then left empty: the raw text may hold what the rewrite was meant to remove.
2. Findings: the findings template with the (rewritten) report; the response is read into findings
   (``base.parse_answer``: the first JSON object, then the schema).
3. Retry: a row whose answer is invalid is asked once more, greedy again, with the reason appended to its
   prompt (the reason names the rule broken, never the answer or the report). A second invalid answer
   leaves the row without findings, with the reason as its status.

Decoding is greedy (``do_sample=False``): the same model, prompt and batch give the same answer, so a
rerun reproduces the annotations. Prompts are sorted by length within a batch (brat sorted reports by
length) so that left padding stays small. A prompt longer than ``max_input_tokens`` is not cut (that would
cut its report or its instructions): the row is ``too_long``. With ``chat_template`` (default) and a
tokenizer that has one, each prompt is the user turn of a chat, as instruction-tuned models expect.

Engines (``engine``): ``transformers`` (``generate`` on padded batches; what tests run on CPU) or ``vllm``
(one ``vllm.LLM`` per actor, greedy ``SamplingParams``; continuous batching and paged attention, several
times ``generate``'s throughput on a GPU). ``auto`` picks vLLM where it is installed and a GPU is visible.
The vLLM engine lives in our own Ray Data actor rather than in ``ray.data.llm``'s processors: a row needs
up to three passes with state between them (rewrite, findings, one retry with the reason), and as
processors each pass would be its own stage with its own engine replicas, i.e. three model loads or three
times the GPU memory. Both engines see the same token ids (the tokenizer's chat template applied here) and
the same length rule. Prompts and responses hold report text: never logged.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

from brainvlp.annotate.base import Annotation, Answer, parse_answer, to_json
from brainvlp.annotate.config import PLACEHOLDER, LMAnnotatorConfig

RETRY_NOTE = (
    "\n\nYour previous answer could not be used: {error}. Answer again with one JSON object only, "
    "with the keys and answer options listed above."
)


def resolve_engine(engine: str, gpu: bool) -> str:
    """``auto``: vLLM where it is installed and a GPU is visible (vLLM needs one), else transformers."""
    if engine != "auto":
        return engine
    return "vllm" if gpu and importlib.util.find_spec("vllm") is not None else "transformers"


class LMAnnotator:
    """Loads the model once (an actor's lifetime); ``annotate`` runs the method of the module docstring."""

    def __init__(self, config: LMAnnotatorConfig, prompts: Mapping[str, str]) -> None:
        self.config, self.prompts = config, dict(prompts)
        self.model: Any = None
        self.tokenizer: Any = None
        self._load()

    def _load(self) -> None:
        import torch
        from transformers import AutoTokenizer

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.engine = resolve_engine(self.config.engine, self.device.type == "cuda")
        name = self.config.dtype
        if name == "auto":
            name = "bfloat16" if self.device.type == "cuda" else "float32"
        if self.engine == "vllm":
            from vllm import LLM, SamplingParams

            self.model = LLM(
                model=self.config.path, tokenizer=self.config.path, dtype=name, seed=0,
                max_model_len=self.config.max_input_tokens + self.config.max_new_tokens,
                gpu_memory_utilization=self.config.gpu_memory_utilization,
            )  # fmt: skip
            self.sampling = SamplingParams(temperature=0.0, max_tokens=self.config.max_new_tokens)
            self.tokenizer = self.model.get_tokenizer()
            return
        from transformers import AutoModelForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(self.config.path, local_files_only=True)
        tokenizer.padding_side = "left"  # generation continues each prompt from its end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            self.config.path, local_files_only=True, torch_dtype=getattr(torch, name)
        )
        self.model, self.tokenizer = model.to(self.device).eval(), tokenizer

    def prompt(self, kind: str, report: str, error: str = "") -> str:
        """The ``kind`` template filled with ``report`` (and, for a retry, the reason appended)."""
        text = self.prompts[kind].replace(PLACEHOLDER, report)
        return text + RETRY_NOTE.format(error=error) if error else text

    def _chat(self, prompt: str) -> str:
        if self.config.chat_template and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    def _generate(self, prompts: Sequence[str]) -> list[str | None]:
        """Greedy responses to ``prompts`` in order; None for a prompt over ``max_input_tokens``."""
        if not prompts:
            return []
        texts = [self._chat(p) for p in prompts]
        templated = self.config.chat_template and getattr(self.tokenizer, "chat_template", None)
        ids = self.tokenizer(texts, add_special_tokens=not templated)["input_ids"]
        fits = sorted((i for i in range(len(texts)) if len(ids[i]) <= self.config.max_input_tokens),
                      key=lambda i: len(ids[i]))  # fmt: skip
        answers: list[str | None] = [None] * len(texts)
        complete = self._complete_vllm if self.engine == "vllm" else self._complete_transformers
        for index, answer in zip(fits, complete([list(ids[i]) for i in fits]) if fits else [], strict=True):
            answers[index] = answer
        return answers

    def _complete_transformers(self, ids: list[list[int]]) -> list[str]:
        import torch

        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        padded = {key: value.to(self.device) for key, value in padded.items()}
        with torch.no_grad():
            out = self.model.generate(**padded, max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        return self.tokenizer.batch_decode(out[:, padded["input_ids"].shape[1] :], skip_special_tokens=True)

    def _complete_vllm(self, ids: list[list[int]]) -> list[str]:
        requests = [{"prompt_token_ids": prompt} for prompt in ids]  # vLLM's TokensPrompt
        outputs = self.model.generate(requests, self.sampling, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]  # vLLM keeps the requests' order

    def _rewrite(self, reports: Sequence[str]) -> list[str | Annotation]:
        """Each report's rewrite, or the Annotation that ends its row (too long, empty rewrite)."""
        answers = self._generate([self.prompt("rewrite", r) for r in reports])
        return [
            Annotation("too_long") if a is None else a.strip() or Annotation("empty_rewrite", report="")
            for a in answers
        ]

    def _findings(self, reports: Sequence[str]) -> list[tuple[Answer, int]]:
        """Each report's checked answer and how many answers were asked for (2: retried once)."""
        answers = self._generate([self.prompt("findings", r) for r in reports])
        checked = [self._check(a) for a in answers]
        calls = [0 if a is None else 1 for a in answers]
        retry = [i for i, c in enumerate(checked) if c.findings is None and answers[i] is not None]
        again = self._generate([self.prompt("findings", reports[i], checked[i].error) for i in retry])
        for index, answer in zip(retry, again, strict=True):
            checked[index] = self._check(answer)
            calls[index] += 1
        return list(zip(checked, calls, strict=True))

    def _check(self, response: str | None) -> Answer:
        """A response read into findings; with ``clauses``, one without them is invalid (and retried)."""
        if response is None:
            return Answer(None, "too_long")
        answer = parse_answer(response)
        if self.config.clauses and answer.findings is not None and "clauses" not in answer.findings:
            return Answer(None, "invalid_findings", "'clauses' is missing: one object per abnormality")
        return answer

    def annotate(self, reports: Sequence[str]) -> list[Annotation]:
        rewritten: list[str | Annotation] = list(self._rewrite(reports) if self.config.rewrite else reports)
        texts = [(i, t) for i, t in enumerate(rewritten) if isinstance(t, str)]
        results: list[Annotation] = [t if isinstance(t, Annotation) else Annotation("") for t in rewritten]
        answers = self._findings([t for _, t in texts])
        for (index, text), (answer, calls) in zip(texts, answers, strict=True):
            findings = to_json(answer.findings) if answer.findings is not None else None
            report = text if self.config.rewrite else None
            results[index] = Annotation(answer.status, findings, report, calls)
        return results
