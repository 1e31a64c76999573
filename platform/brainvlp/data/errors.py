"""Errors that send a study to the rejects table instead of the shards."""

from __future__ import annotations

# Reason codes a reject may carry; the rejects table and the index count by these.
REJECT_REASONS = (
    "unreadable_file",
    "not_3d",
    "nonfinite_voxels",
    "degenerate_voxel_size",
    "singular_affine",
    "empty_volume",
    "missing_sequence",
    "missing_report",
    "empty_report",
    "duplicate_study_id",
    "missing_patient_id",
    "missing_study_id",
    "bad_findings",
    # Budgets (data/limits.py): decided before the expensive work where the input shows its size.
    "file_too_large",
    "image_too_large",
    "report_too_long",
    "study_timeout",
    # Content that reads but cannot be what the spec asks for.
    "unsupported_datatype",
    "not_magnitude_image",
    "conflicting_geometry",
    "bad_mask",
    "mask_mismatch",
    # DICOM studies (data/dicom.py): no usable series, or a series whose slices do not make one volume.
    "dicom_no_series",
    "dicom_localizer",
    "dicom_single_slice",
    "dicom_multi_volume",
    "dicom_mixed_geometry",
    "dicom_gap",
    "dicom_unreadable",
    "dicom_too_many_files",
    # Manifest rows.
    "malformed_row",
    "conflicting_columns",
    "bad_id",
    # A study whose processing failed in a way no rule above foresaw (a library bug, a worker that died
    # on it every time): the job goes on, and the detail names the exception type and where it arose.
    "internal_error",
    "worker_died",
)


class RejectError(Exception):
    """A study that cannot be ingested. ``detail`` names the file or field; never report text or raw ids."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {', '.join(REJECT_REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
