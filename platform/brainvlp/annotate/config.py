"""The ``kind: annotate`` spec and its annotators, registered by name in ``ANNOTATORS``.

Torch-free, like every spec module: each annotator config names the class that implements it in its own
file of this package (``phantom.py``, ``rules.py``, ``lm.py``), imported only when a run builds it.

An ``lm`` annotator reads two prompt templates, text files the user may edit: ``rewrite_prompt`` and
``findings_prompt`` (None: the defaults shipped in ``prompts/``). Each must contain the placeholder
``{report}``, which is replaced by the report text (plain replacement, not ``str.format``: the templates
quote JSON, braces included). With ``clauses: true`` the findings template must also contain ``{clauses}``
where SeLIP's clause question (``prompts/clauses.txt``) goes; otherwise ``{clauses}`` is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from brainvlp.data.manifest import ManifestColumns
from brainvlp.errors import UserError
from brainvlp.registry import Registry
from brainvlp.spec import JobSpec, NonNegativeFloat, PositiveFloat, PositiveInt, Range, SpecError

ANNOTATORS = Registry("annotator")
PLACEHOLDER = "{report}"
CLAUSES_PLACEHOLDER = "{clauses}"
PROMPT_KINDS = ("rewrite", "findings")
DEFAULT_SEQUENCES = ("t1c", "flair")  # ingest's default image columns


@dataclass
class AnnotatorConfig:
    """Base of every annotator config; ``name`` selects the registered annotator. ``actors`` Ray Data
    actors each build the annotator once and annotate ``batch_size`` reports per call."""

    registry: ClassVar[Registry] = ANNOTATORS
    name: str
    actors: PositiveInt = 1
    batch_size: PositiveInt = 64
    num_cpus: PositiveFloat = 1.0  # per actor
    num_gpus: NonNegativeFloat = 0.0  # per actor

    def fingerprint(self) -> dict[str, str]:
        """What beyond the config decides the annotations (model files): part of each part's digest."""
        return {}


@ANNOTATORS.register("phantom", "brainvlp.annotate.phantom:PhantomAnnotator")
@dataclass
class PhantomAnnotatorConfig(AnnotatorConfig):
    """The phantom's own reader (``phantom.extract``): exact on phantom reports, no rewrite."""

    name: str = "phantom"


@ANNOTATORS.register("rules", "brainvlp.annotate.rules:RulesAnnotator")
@dataclass
class RulesAnnotatorConfig(AnnotatorConfig):
    """Rules for real report text (``evaluate.rules_extract``), no rewrite. ``unstated``: what a yes/no
    finding the report does not state becomes: ``normal`` (false; brat's rule, as the lm prompt) or
    ``unknown`` (left out)."""

    name: str = "rules"
    unstated: Literal["normal", "unknown"] = "normal"


@ANNOTATORS.register("lm", "brainvlp.annotate.lm:LMAnnotator")
@dataclass
class LMAnnotatorConfig(AnnotatorConfig):
    """A local Hugging Face causal LM (a directory of ``save_pretrained``; the hub is never reached),
    greedy. ``rewrite``: also replace each report by the model's rewrite (findings are then read from it)."""

    name: str = "lm"
    path: str = ""
    rewrite: bool = False
    # Also ask for SeLIP's per-abnormality clauses (findings' ``clauses``): an answer without them is retried
    # like an invalid one. Off by default: they lengthen every answer, and only SeLIP reads them.
    clauses: bool = False
    rewrite_prompt: str | None = None  # a template file with {report}; None: prompts/rewrite.txt
    findings_prompt: str | None = None  # a template file with {report}; None: prompts/findings.txt
    max_new_tokens: PositiveInt = 1024  # a rewrite is about as long as the report
    max_input_tokens: PositiveInt = 4096  # a longer prompt is not cut (its report would be): too_long
    batch_size: PositiveInt = 8
    num_gpus: NonNegativeFloat = 1.0
    chat_template: bool = True  # wrap each prompt in the tokenizer's chat template, when it has one
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bfloat16 on GPU, else float32
    # auto: vLLM where installed and a GPU is visible, else transformers' generate (lm.py says why not
    # ray.data.llm); greedy either way
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    # vllm: the share of the GPU its engine may take
    gpu_memory_utilization: Annotated[float, Range(gt=0, le=1)] = 0.9

    def validate(self, path: str) -> None:
        if not self.path:
            raise SpecError(f"{path}.path".lstrip("."), "the local directory of the model is required")

    def fingerprint(self) -> dict[str, str]:
        """Names, sizes and times of the model's files: new weights at the same path redo the parts."""
        root = Path(self.path).expanduser()
        if not root.is_dir():
            return {}
        return {
            str(f.relative_to(root)): f"{f.stat().st_size}:{f.stat().st_mtime_ns}"
            for f in sorted(root.rglob("*"))
            if f.is_file()
        }


@dataclass
class AnnotateSpec(JobSpec):
    kind: Literal["annotate"] = "annotate"
    # CSV, TSV, JSONL or Parquet; a local path or a filesystem URI. In a pipeline, the phantom step's
    # manifest by default.
    manifest: str | None = None
    manifest_encoding: str = "utf-8"  # of CSV, TSV, JSONL; "auto" detects it
    columns: ManifestColumns = field(default_factory=ManifestColumns)
    # Image path columns, made absolute in the output so ingest finds the images from the run directory
    # (with columns.mask and columns.dicom). None: the ingest step's sequences, run alone ("t1c", "flair").
    sequences: tuple[str, ...] | None = None
    annotator: AnnotatorConfig | None = None
    rows_per_shard: PositiveInt = 1000  # rows per part: the unit of resumption
    output_format: Literal["parquet", "jsonl"] = "parquet"

    def validate(self, path: str) -> None:
        if self.annotator is None:
            names = ", ".join(ANNOTATORS.names)
            raise SpecError(f"{path}.annotator.name".lstrip("."), f"required; choose one of: {names}")
        if self.columns.report is None:
            raise SpecError(f"{path}.columns.report".lstrip("."), "annotation reads reports: name the column")
        if not path and self.manifest is None:  # run on its own: no pipeline step will provide it
            raise SpecError("manifest", "required: path or URI of a CSV, TSV, JSONL or Parquet manifest")

    @property
    def output_name(self) -> str:
        return f"manifest.{self.output_format}"


def check_prompt_text(template: str, *, clauses: bool = False) -> str | None:
    """Why a prompt template cannot be used, or None; ``clauses``: a findings template that must ask them."""
    if PLACEHOLDER not in template:
        return f"the template must contain the placeholder {PLACEHOLDER} (where the report goes)"
    if clauses and CLAUSES_PLACEHOLDER not in template:
        return f"clauses: true needs the placeholder {CLAUSES_PLACEHOLDER} (where the clause question goes)"
    return None


def default_prompt(kind: str) -> str:
    """A shipped template (package data ``prompts/<kind>.txt``)."""
    return resources.files("brainvlp.annotate").joinpath("prompts", f"{kind}.txt").read_text("utf-8")


def read_prompts(config: AnnotatorConfig) -> dict[str, str]:
    """The templates of an ``lm`` annotator by kind ({} for others), read on the driver so that actors on
    other nodes need not see the files; an unusable file is a ``UserError`` naming it."""
    if not isinstance(config, LMAnnotatorConfig):
        return {}
    prompts = {}
    for kind in PROMPT_KINDS:
        file = getattr(config, f"{kind}_prompt")
        try:
            text = default_prompt(kind) if file is None else Path(file).expanduser().read_text("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            where = f"annotator.{kind}_prompt: {file}"
            raise UserError(f"{where}: cannot read it ({type(err).__name__})") from None
        asks_clauses = kind == "findings" and config.clauses
        problem = check_prompt_text(text, clauses=asks_clauses)
        if problem:
            raise UserError(f"annotator.{kind}_prompt: {file or 'default'}: {problem}")
        prompts[kind] = text.replace(CLAUSES_PLACEHOLDER, default_prompt("clauses") if asks_clauses else "")
    return prompts
