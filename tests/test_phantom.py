"""The phantom dataset: determinism, file consistency, anatomy of lesions, and report/findings agreement."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainvlp.findings import (
    LESION_COUNT_BUCKETS,
    LOCATIONS,
    MASS_BUCKETS,
    NORMAL_CLAUSE,
    SIDES,
    TUMOR_LOCATIONS,
    positive_findings,
    study_clauses,
)
from brainvlp.phantom.anatomy import REGION_BOXES, load_template
from brainvlp.phantom.generate import (
    FINDING_COLUMNS,
    PhantomConfig,
    assign_studies,
    generate_phantom,
    simulate_study,
)
from brainvlp.phantom.reports import LOCATION_WORDS, Lesion, study_findings

CONFIG = PhantomConfig(
    num_studies=12, num_patients=8, shape=(36, 40, 36), lesion_probability=0.7, seed=3, corrupt_studies=2
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _load_images(out: Path, rows: list[dict[str, str]], seq: str) -> dict[str, np.ndarray]:
    return {row["study_id"]: np.asarray(nib.load(out / row[seq]).dataobj) for row in rows}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    generate_phantom(CONFIG, out)
    return out


@pytest.fixture(scope="module")
def studies() -> list:
    return [simulate_study(CONFIG, record) for record in assign_studies(CONFIG)]


def test_same_seed_same_dataset_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_phantom(CONFIG, again)
    for name in ("reports.csv", "findings.csv", "manifest.csv", "lesions.csv"):
        assert (dataset / name).read_bytes() == (again / name).read_bytes()
    rows = _read_csv(dataset / "manifest.csv")
    first, second = _load_images(dataset, rows, "flair"), _load_images(again, rows, "flair")
    assert all(np.array_equal(first[sid], second[sid]) for sid in first)

    other = tmp_path / "other"
    generate_phantom(PhantomConfig(**{**CONFIG.__dict__, "seed": 4}), other)
    assert (dataset / "reports.csv").read_bytes() != (other / "reports.csv").read_bytes()
    other_rows = _read_csv(other / "manifest.csv")
    assert not np.array_equal(
        np.asarray(nib.load(dataset / rows[-1]["flair"]).dataobj),
        np.asarray(nib.load(other / other_rows[-1]["flair"]).dataobj),
    )


def test_a_study_does_not_depend_on_generation_order(studies: list) -> None:
    records = assign_studies(CONFIG)
    for record in reversed(records[:3]):
        alone = simulate_study(CONFIG, record)
        reference = studies[record.index]
        assert alone.report == reference.report
        assert np.array_equal(alone.images["t1c"], reference.images["t1c"])
        assert np.array_equal(alone.mask, reference.mask)


def test_manifest_reports_and_findings_agree(dataset: Path) -> None:
    manifest = _read_csv(dataset / "manifest.csv")
    reports = {row["study_id"]: row["report"] for row in _read_csv(dataset / "reports.csv")}
    findings = {row["study_id"]: row for row in _read_csv(dataset / "findings.csv")}
    assert list(manifest[0]) == ["patient_id", "study_id", "t1c", "flair", "mask", "report", "findings"]
    ids = [row["study_id"] for row in manifest]
    assert ids == sorted(ids) and len(set(ids)) == CONFIG.num_studies
    assert set(ids) == set(reports) == set(findings)
    for row in manifest:
        assert row["report"] == reports[row["study_id"]]
        assert "FINDINGS:\n" in row["report"] and "\n\nIMPRESSION:\n" in row["report"]
        parsed = json.loads(row["findings"])
        assert list(parsed) == [*FINDING_COLUMNS, "clauses"]
        assert parsed["clauses"] and study_clauses(parsed) == parsed["clauses"]
        flat = findings[row["study_id"]]
        assert list(flat) == ["study_id", *FINDING_COLUMNS]
        assert flat["locations"] == ";".join(parsed["locations"])
        assert flat["midline_shift"] == str(parsed["midline_shift"]).lower()
        assert set(parsed["locations"]) <= set(LOCATIONS) and parsed["side"] in SIDES
        assert parsed["lesion_count_bucket"] in LESION_COUNT_BUCKETS
        assert parsed["largest_mass_bucket"] in MASS_BUCKETS and parsed["tumor_location"] in TUMOR_LOCATIONS


def test_nifti_files_load_with_grid_affine(dataset: Path) -> None:
    template = load_template(CONFIG.shape, CONFIG.resolved_voxel_size)
    for row in _read_csv(dataset / "manifest.csv")[CONFIG.corrupt_studies :]:
        for column in ("t1c", "flair", "mask"):
            assert not Path(row[column]).is_absolute()
            image = nib.load(dataset / row[column])
            assert image.shape == CONFIG.shape
            assert np.allclose(image.affine, template.affine)
            assert np.allclose(image.header.get_zooms(), CONFIG.resolved_voxel_size)
            assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        mask = np.asarray(nib.load(dataset / row["mask"]).dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2, 3}


def test_corrupt_studies_are_unreadable_but_listed(dataset: Path) -> None:
    rows = _read_csv(dataset / "manifest.csv")
    for row in rows[: CONFIG.corrupt_studies]:
        with pytest.raises(Exception):  # noqa: B017 - garbage and truncated gzip fail differently
            nib.load(dataset / row["t1c"]).get_fdata()
        assert nib.load(dataset / row["flair"]).shape == CONFIG.shape
    nib.load(dataset / rows[CONFIG.corrupt_studies]["t1c"]).get_fdata()


def test_lesions_lie_in_the_brain_in_their_named_region(studies: list) -> None:
    template = load_template(CONFIG.shape, CONFIG.resolved_voxel_size)
    checked = 0
    for study in studies:
        for number, lesion in enumerate(study.lesions, start=1):
            core = study.template_labels == number
            assert core.any() and template.brain[core].all()
            centroid = np.argwhere(core).mean(axis=0)
            centre_mm = nib.affines.apply_affine(template.affine, centroid)
            box = REGION_BOXES[lesion.location]
            assert all(low <= c <= high for c, (low, high) in zip(centre_mm, box, strict=True)), lesion
            assert template.brain[tuple(np.round(centroid).astype(int))]
            checked += 1
        if study.lesions and max(lesion.largest_cm for lesion in study.lesions) >= 1.5:
            assert np.isin(study.mask, (1, 3)).any()  # a tumour core: enhancing or not
    assert checked >= 5


def test_region_boxes_are_disjoint_and_sided() -> None:
    assert set(REGION_BOXES) == set(LOCATIONS)
    for a, b in combinations(REGION_BOXES.values(), 2):
        assert any(ha < lb or hb < la for (la, ha), (lb, hb) in zip(a, b, strict=True))
    for name, ((low, high), _, _) in REGION_BOXES.items():
        assert (high < 0) if name.startswith("left_") else (low > 0) if name.startswith("right_") else True


def _lesion_sentences(report: str) -> list[str]:
    sentences = re.split(r"(?<=\.)\s+|\n+", report)
    return [s for s in sentences if re.search(r"\b(lesions?|mass|focus)\b", s) and not s.startswith("No ")]


def test_reports_name_every_lesion_location(studies: list) -> None:
    for study in studies:
        for lesion in study.lesions:
            assert LOCATION_WORDS[lesion.location] in study.report.lower()
        for sentence in _lesion_sentences(study.report):
            assert any(words in sentence.lower() for words in LOCATION_WORDS.values()), sentence
        assert re.findall(r"\d\.\d x \d\.\d", study.report) or not study.lesions


def test_normal_studies_have_normal_reports(studies: list) -> None:
    normal = [study for study in studies if not study.lesions]
    assert normal and len(normal) < len(studies)
    for study in normal:
        assert positive_findings(study.findings) == frozenset()
        assert not study.mask.any()
        assert "enhancement" in study.report and not _lesion_sentences(study.report)
        assert not any(words in study.report.lower() for words in LOCATION_WORDS.values())


def test_patients_have_several_studies_and_hospital_like_ids(dataset: Path) -> None:
    rows = _read_csv(dataset / "manifest.csv")
    per_patient = Counter(row["patient_id"] for row in rows)
    assert len(per_patient) == CONFIG.num_patients and max(per_patient.values()) >= 2
    assert all(re.fullmatch(r"MRN\d{7}", row["patient_id"]) for row in rows)
    assert all(re.fullmatch(r"ACC\d{6}", row["study_id"]) for row in rows)


def test_contrasts_differ_and_no_two_studies_are_identical(studies: list) -> None:
    template = load_template(CONFIG.shape, CONFIG.resolved_voxel_size)
    for study in studies:
        t1c, flair = (study.images[seq].astype(float) for seq in ("t1c", "flair"))
        assert np.corrcoef(t1c.ravel(), flair.ravel())[0, 1] < 0.99
        if (study.mask > 0).sum() >= 5:  # lesions and oedema are bright on FLAIR
            assert flair[study.mask > 0].mean() > flair[template.brain & (study.mask == 0)].mean()
    digests = {study.images[seq].tobytes() for study in studies for seq in ("t1c", "flair")}
    assert len(digests) == 2 * len(studies)


def _lesion(location: str, size: float = 1.0, oedema: bool = False) -> Lesion:
    return Lesion(location, (size, size, size), enhancing=False, oedema=oedema)


def test_masks_carry_brats_labels_that_agree_with_the_images_and_findings(studies: list) -> None:
    """Enhancing tumour (3) exactly when a lesion enhances, bright on T1c; necrotic / non-enhancing core (1)
    dark on T1c; oedema (2) bright on FLAIR: each BraTS region is there to be learnt."""
    enhancing_seen = core_seen = 0
    enhancing = [study for study in studies if study.findings["enhancing_lesion"]]
    for study in studies:
        labels = set(np.unique(study.mask).tolist())
        assert labels <= {0, 1, 2, 3}
        assert 3 not in labels or study.findings["enhancing_lesion"]
        t1c = study.images["t1c"].astype(float)
        if (study.mask == 3).sum() >= 5 and (study.mask == 1).sum() >= 5:
            assert t1c[study.mask == 3].mean() > t1c[study.mask == 1].mean()
            enhancing_seen += 1
        core_seen += 1 in labels
    assert enhancing_seen >= 1 and core_seen >= 1
    # A sub-voxel enhancing focus may vanish when the mask is warped (nearest neighbour) to the subject.
    assert sum((study.mask == 3).any() for study in enhancing) >= 0.8 * len(enhancing) > 0


def test_findings_rules() -> None:
    tie = study_findings([_lesion("left_frontal_lobe"), _lesion("right_temporal_lobe")], False, False)
    assert tie["side"] == "bilateral" and tie["lesion_count_bucket"] == "2-6"
    midline = study_findings([_lesion("cerebellum"), _lesion("brainstem", 0.8)], False, False)
    assert midline["side"] == "NA" and midline["tumor_location"] == "infratentorial"
    assert midline["largest_mass_bucket"] == "1-2cm" and midline["locations"] == ["brainstem", "cerebellum"]
    shifted = study_findings(
        [_lesion("left_parietal_lobe", 2.5, oedema=True), _lesion("cerebellum")], True, False
    )
    assert shifted["midline_shift"] and shifted["tumor_location"] == "transtentorial"
    assert shifted["side"] == "left" and shifted["largest_mass_bucket"] == ">2cm"
    assert not study_findings([_lesion("cerebellum", 3.0, oedema=True)], False, False)["midline_shift"]


def _clause_location(clause: dict[str, str]) -> str:
    """A clause's side and site back in report words, e.g. "left frontal lobe" or "cerebellum"."""
    return clause["site"] if clause["side"] == "none" else f"{clause['side']} {clause['site']}"


def test_every_phantom_study_has_clauses_that_match_its_lesions(studies: list) -> None:
    for study in studies:
        findings, lesions = study.findings, study.lesions
        clauses = study_clauses(findings)
        extra = int(findings["white_matter_disease"]) + int(findings["prior_surgery"])
        if not lesions and not extra:
            assert clauses == [NORMAL_CLAUSE]
            continue
        assert NORMAL_CLAUSE not in clauses and len(clauses) == len(lesions) + extra
        lesion_clauses = clauses[: len(lesions)]
        for lesion, clause in zip(lesions, lesion_clauses, strict=True):
            assert _clause_location(clause) == LOCATION_WORDS[lesion.location]
            assert clause["side"] in ("left", "right", "none") and "left" not in clause["site"]
            assert clause["modality"] == ("T1 post-contrast" if lesion.enhancing else "FLAIR")
            assert clause["appearance"].endswith("oedema") == lesion.oedema
        assert {_clause_location(c) for c in lesion_clauses} == {
            LOCATION_WORDS[loc] for loc in findings["locations"]
        }
        for clause in clauses[len(lesions) :]:  # the cavity clause names where the report puts it
            assert clause["appearance"] != "resection cavity" or _clause_location(clause) in study.report
    assert any(not study.lesions for study in studies) and any(study.lesions for study in studies)


def test_phantom_clause_rules() -> None:
    necrotic = Lesion("left_frontal_lobe", (2.4, 2.0, 2.0), enhancing=True, oedema=True)
    small = Lesion("right_basal_ganglia_thalamus", (0.6, 0.5, 0.5), enhancing=True, oedema=False)
    findings = study_findings(
        [necrotic, _lesion("cerebellum"), small], True, True, cavity=("right_parietal_lobe", 1.2)
    )
    assert findings["clauses"] == [
        {
            "modality": "T1 post-contrast",
            "side": "left",
            "site": "frontal lobe",
            "appearance": "rim-enhancing necrotic mass with surrounding oedema",
        },
        {"modality": "FLAIR", "side": "none", "site": "cerebellum", "appearance": "non-enhancing lesion"},
        {
            "modality": "T1 post-contrast",
            "side": "right",
            "site": "thalamus/basal ganglia",
            "appearance": "enhancing mass",
        },
        {"modality": "FLAIR", "side": "right", "site": "parietal lobe", "appearance": "resection cavity"},
        {
            "modality": "FLAIR",
            "side": "bilateral",
            "site": "periventricular white matter",
            "appearance": "hyperintensities",
        },
    ]
    assert study_findings([], False, False)["clauses"] == [NORMAL_CLAUSE]
    assert study_findings([], True, False)["clauses"][0]["appearance"] == "hyperintensities"
    with pytest.raises(ValueError, match="cavity"):
        study_findings([necrotic], False, True)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        PhantomConfig(num_studies=5, num_patients=6)
    with pytest.raises(ValueError):
        PhantomConfig(sequences=("t2",))
