"""The evaluation report of one or more models on one split: ``metrics.json``, ``report.md`` and the
self-contained ``report.html``, with brat Table 2's retrieval table, a per-finding breakdown and plots
(recall@k, training curves, Q-view MDS with collapse scores, attention overlays, retrieval examples).

Privacy: the report holds numbers, finding labels, export paths and images; never report text or
study/patient ids (retrieval examples are labelled by the query's structured findings).

Shape legend: N studies of the split (image i and report i belong to study i), Q views, E embedding width,
P image positions, D/H/W volume axes.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from brainvlp.errors import MissingInputError
from brainvlp.evaluate import plots, plots_images
from brainvlp.evaluate.classification import bootstrap_ci
from brainvlp.evaluate.explain import attention_to_volume, explanation_dice
from brainvlp.evaluate.report import NOTES, check_details, column_title, format_value, json_safe
from brainvlp.evaluate.retrieval import DIRECTIONS
from brainvlp.models.classifier import token_grid

COLUMNS = ("R@1", "R@5", "R@10", "R@5(F)", "P@5(F)", "MdR", "MnR")
_DIRECTION_TITLES = {"text_to_image": "Text → image", "image_to_text": "Image → text"}
_MIN_FINDING_QUERIES = 3  # a per-finding R@5 over fewer queries is noise


def per_finding_recall(rank_N: np.ndarray, finding_sets: Sequence[frozenset[str]], k: int = 5) -> dict:
    """R@k of the queries that carry each finding: finding -> (R@k, number of such queries)."""
    hits_N = np.asarray(rank_N) <= k
    labels = sorted({label for labels in finding_sets for label in labels})
    breakdown = {}
    for label in labels:
        rows = [i for i, labels in enumerate(finding_sets) if label in labels]
        if len(rows) >= _MIN_FINDING_QUERIES:
            breakdown[label] = (float(hits_N[rows].mean()), len(rows))
    return breakdown


def write_comparison_report(
    run_dir: Path,
    results: Mapping[str, Mapping[str, Any]],
    chance: Mapping[str, float],
    details: Mapping[str, Any],
    study: Mapping[str, Any],
    downstream_dir: Path | None = None,
) -> Path:
    """``results``: model -> {metrics, ranks, scoring, sim_NN, views_NQE?, attn_NQP?, curves?};
    ``study``: the split's {finding_sets, slices_NHW (middle axial slices), volumes_NDHW, masks_NDHW}."""
    from brainvlp.evaluate.html import write_html_report

    check_details(details)
    run_dir.mkdir(parents=True, exist_ok=True)
    written_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    findings = {
        name: per_finding_recall(np.asarray(r["ranks"]["text_to_image"]), study["finding_sets"])
        for name, r in results.items()
    }
    collapse = {
        name: plots.collapse_scores(r["views_NQE"], r.get("attn_NQP"))
        for name, r in results.items()
        if r.get("views_NQE") is not None and r["views_NQE"].shape[1] >= 2
    }
    attention_dice = {
        name: view_attention_dice(r["attn_NQP"], study)
        for name, r in results.items()
        if r.get("attn_NQP") is not None
    }
    first = next(iter(results))
    record = {
        "title": "Retrieval evaluation",
        "written_at": written_at,
        "details": {**details, "scoring": results[first]["scoring"]},
        "metrics": results[first]["metrics"],  # the first model's, where one model is evaluated
        "chance": chance,
        "models": {
            name: {"scoring": r["scoring"], "metrics": r["metrics"], "per_finding_t2i_R@5": findings[name]}
            | ({"collapse": collapse[name]} if name in collapse else {})
            | ({"view_attention_dice": attention_dice[name]} if name in attention_dice else {})
            for name, r in results.items()
        },
    }
    (run_dir / "metrics.json").write_text(json.dumps(json_safe(record), indent=2, default=str) + "\n")
    figures = _write_figures(run_dir, results, collapse, study)
    report = run_dir / "report.md"
    extra = [_attention_dice_section(attention_dice)] if attention_dice else []
    if downstream_dir is not None:
        extra.append(downstream_section(Path(downstream_dir), run_dir))
    report.write_text(_markdown(results, chance, details, findings, collapse, figures, written_at, extra))
    write_html_report(report)
    return report


def retrieval_table(
    results: Mapping[str, Mapping[str, Any]], chance: Mapping[str, float], direction: str
) -> str:
    """brat Table 2's layout for one direction: a row per model, then chance."""
    present = [c for c in COLUMNS if any(c in r["metrics"][direction] for r in results.values())]
    lines = ["| model | " + " | ".join(column_title(c) for c in present) + " |"]
    lines.append("|---|" + "---:|" * len(present))
    for name, r in results.items():
        cells = [format_value(c, r["metrics"][direction].get(c)) for c in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| *chance* | " + " | ".join(format_value(c, chance.get(c), italic=True) for c in present) + " |"
    )
    return "\n".join(lines)


def _finding_table(findings: Mapping[str, Mapping[str, tuple[float, int]]]) -> str:
    labels = sorted({label for breakdown in findings.values() for label in breakdown})
    if not labels:
        return "_No finding is carried by enough test studies for a breakdown._"
    lines = ["| finding | queries | " + " | ".join(findings) + " |", "|---|---:|" + "---:|" * len(findings)]
    for label in labels:
        count = next(b[label][1] for b in findings.values() if label in b)
        cells = [f"{b[label][0]:.3f}" if label in b else "–" for b in findings.values()]
        lines.append(f"| {label} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_figures(run_dir: Path, results, collapse, study) -> dict[str, str]:
    figures = {}
    num_candidates = len(study["finding_sets"])
    plots.plot_recall_at_k(
        {n: r["ranks"] for n, r in results.items()}, num_candidates, run_dir / "recall_at_k.png"
    )
    figures["recall"] = "recall_at_k.png"
    curves = {n: r["curves"] for n, r in results.items() if r.get("curves")}
    if curves and plots.plot_training_curves(curves, run_dir / "training_curves.png") is not None:
        figures["training"] = "training_curves.png"
    for name in collapse:
        path = f"views_mds_{_slug(name)}.png"
        plots_images.plot_view_mds(results[name]["views_NQE"], results[name].get("attn_NQP"), run_dir / path)
        figures[f"mds:{name}"] = path
    overlays = _attention_examples(results, study)
    if overlays:
        plots_images.plot_attention_overlays(overlays, run_dir / "attention_overlays.png")
        figures["overlays"] = "attention_overlays.png"
    for name, r in results.items():
        path = f"retrieval_examples_{_slug(name)}.png"
        plots_images.plot_retrieval_examples(_retrieval_examples(r["sim_NN"], study), run_dir / path)
        figures[f"examples:{name}"] = path
    return figures


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _attention_examples(results, study, per_model: int = 2) -> list[dict[str, Any]]:
    """Mean Q-Former cross-attention of the first studies with a lesion, over their T1c slice."""
    masks = study.get("masks_NDHW")
    if masks is None:
        return []
    rows = [i for i, mask in enumerate(masks) if mask is not None and mask.any()][:per_model]
    examples = []
    for name, r in results.items():
        if r.get("attn_NQP") is None:
            continue
        for row in rows:
            volume_DHW = study["volumes_NDHW"][row]
            attn_P = r["attn_NQP"][row].mean(0)
            grid = token_grid(volume_DHW.shape, attn_P.size)
            examples.append(
                {
                    "volume_DHW": volume_DHW,
                    "heat_DHW": attention_to_volume(attn_P, volume_DHW.shape, grid_shape=grid),
                    "mask_DHW": masks[row] > 0,
                    "title": f"{name}: mean view attention",
                }
            )
    return examples


def _retrieval_examples(sim_NN: np.ndarray, study, count: int = 4, k: int = 5) -> list[dict[str, Any]]:
    """Text -> image examples: the first queries with findings, their top-k images in rank order."""
    sim_NN = np.asarray(sim_NN)
    queries = [i for i, labels in enumerate(study["finding_sets"]) if labels][:count] or [0]
    examples = []
    for query in queries:
        order = np.argsort(-sim_NN[:, query], kind="stable")[:k]  # images ranked for report `query`
        labels = sorted(study["finding_sets"][query])
        examples.append(
            {
                "query_label": ", ".join(label.split(":")[-1] for label in labels)[:100] or "no findings",
                "query_slice_HW": study["slices_NHW"][query],
                "hits": [
                    (study["slices_NHW"][i], bool(i == query), f"#{r + 1}") for r, i in enumerate(order)
                ],
            }
        )
    return examples


def _markdown(
    results, chance, details, findings, collapse, figures, written_at: str, extra: list[str]
) -> str:
    names = ", ".join(f"{n} ({r['scoring']})" for n, r in results.items())
    parts = [
        "# Retrieval evaluation",
        f"_Written {written_at}._ Models (scoring rule): {names}.",
        "## What was evaluated\n\n| | |\n|---|---|\n"
        + "\n".join(f"| {str(k).replace('_', ' ')} | {v} |" for k, v in details.items()),
    ]
    for direction in DIRECTIONS:
        parts.append(f"## {_DIRECTION_TITLES[direction]}\n\n" + retrieval_table(results, chance, direction))
    parts.append("\n".join(f"- {note}" for note in NOTES))
    parts.append(f"![recall@k per model and direction]({figures['recall']})")
    parts.append("## Text → image R@5 per finding\n\n" + _finding_table(findings))
    if "training" in figures:
        parts.append(f"## Training curves\n\n![training curves]({figures['training']})")
    if collapse:
        parts.append(_collapse_section(collapse, figures))
    if "overlays" in figures:
        parts.append(f"## Where the views look\n\n![attention overlays]({figures['overlays']})")
    parts.extend(part.strip() for part in extra)  # view-attention Dice, downstream tables
    for name in results:
        parts.append(f"## Retrieval examples: {name}\n\n![examples]({figures[f'examples:{name}']})")
    return "\n\n".join(parts) + "\n"


def _collapse_section(collapse: Mapping[str, Mapping[str, float]], figures: Mapping[str, str]) -> str:
    lines = [
        "## Collapse diagnostics (brat Fig. 3)",
        "",
        "Mean pairwise cosine similarity of an image's Q views (view collapse) and of their attention maps "
        "(attention collapse): 1 means all views are the same.",
        "",
        "| model | view collapse | attention collapse | view distance | attention JS distance |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, scores in collapse.items():
        cells = [
            f"{scores[k]:.3f}" if math.isfinite(scores[k]) else "n/a"
            for k in ("view_collapse", "attention_collapse", "view_distance", "attention_distance")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in collapse:
        lines += ["", f"![MDS of {name}'s views]({figures[f'mds:{name}']})"]
    return "\n".join(lines)


def view_attention_dice(attn_NQP: np.ndarray, study: Mapping[str, Any], threshold: float = 0.01) -> dict:
    """Dice of the mean view attention (upsampled, normalised, thresholded as pLGG does) against the lesion
    masks, in 3D and on the largest lesion's axial slice: mean over the studies with a lesion, with a
    bootstrap interval over them."""
    scores = {"dice_3d": [], "dice_slice": []}
    for row, mask in enumerate(study.get("masks_NDHW") or ()):
        if mask is None or not mask.any():
            continue
        attn_P = attn_NQP[row].mean(0)
        grid = token_grid(mask.shape, attn_P.size)
        agreement = explanation_dice(
            attention_to_volume(attn_P, mask.shape, grid_shape=grid), mask, threshold
        )
        scores["dice_3d"].append(agreement.dice_3d)
        scores["dice_slice"].append(agreement.dice_slice)
    return {k: vars(bootstrap_ci(v)) if v else None for k, v in scores.items()} | {
        "studies": len(scores["dice_3d"])
    }


def _attention_dice_section(attention_dice: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "\n## Does view attention find the lesion?\n",
        "Mean Q-Former attention over the views, upsampled to the volume, normalised to [0, 1] and "
        "thresholded at 0.01 (pLGG), against the lesion mask: Dice with a 95 % bootstrap interval over "
        "studies.\n",
        "| model | studies | Dice 3D | Dice axial slice |",
        "|---|---:|---:|---:|",
    ]
    for name, scores in attention_dice.items():
        cells = [_interval_text(scores[k]) for k in ("dice_3d", "dice_slice")]
        lines.append(f"| {name} | {scores['studies']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _interval_text(interval: Mapping[str, float] | None) -> str:
    if interval is None:
        return "–"
    return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def downstream_section(downstream_dir: Path, run_dir: Path) -> str:
    """The downstream job's AUC table (mean with its interval over seeds) and plots, copied beside this
    report so that its HTML embeds them."""
    metrics_file = downstream_dir / "metrics.json"
    if not metrics_file.exists():
        raise MissingInputError(f"{metrics_file} not found: is {downstream_dir} a downstream run directory?")
    summary = json.loads(metrics_file.read_text())
    fractions = sorted({f for model in summary["summary"].values() for f in model}, key=float)
    task = summary["task"]
    lines = [
        f"\n## Downstream: {task['name']} ({task['type']})\n",
        "AUC: mean over seeds of the cross-validated estimate, 95 % bootstrap interval over seeds.\n",
        "| model | " + " | ".join(f"{100 * float(f):g} % labels" for f in fractions) + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    for model, by_fraction in summary["summary"].items():
        cells = [_interval_text(by_fraction.get(f, {}).get("auc_mean")) for f in fractions]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    for name, caption in (("label_efficiency.png", "label efficiency"), ("roc.png", "ROC curves")):
        if (downstream_dir / name).exists():
            shutil.copyfile(downstream_dir / name, run_dir / f"downstream_{name}")
            lines += ["", f"![{caption}](downstream_{name})"]
    return "\n".join(lines) + "\n"
