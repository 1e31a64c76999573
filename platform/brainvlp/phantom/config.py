"""The ``kind: phantom`` spec: how many studies of which shape the phantom generator writes.

Torch- and SciPy-free like every spec module; the generator itself is ``brainvlp.phantom.generate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from brainvlp.spec import FractionFloat, JobSpec, NonNegativeInt, PositiveFloat, Range

SUPPORTED_SEQUENCES = ("t1c", "flair")

ShapeInt = Annotated[int, Range(ge=8)]


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. ``voxel_size`` None derives the smallest isotropic size at which the whole brain
    fits ``shape`` (3.1 mm at 64^3, 6.15 mm at 32^3); ``corrupt_studies`` makes the first N studies'
    t1c file (or first sequence without t1c) unreadable: garbage bytes at even positions, a truncated
    gzip at odd ones. ``export: dicom`` writes each study as a PACS export instead (``dicom_export``: a
    folder of DICOM series per study, a localiser among them; a corrupt study's t1c series has a gap) and
    the manifest's ``dicom`` column names the folder; masks stay NIfTI."""

    num_studies: Annotated[int, Range(ge=1, le=1_000_000)] = 240
    num_patients: Annotated[int, Range(ge=1, le=1_000_000)] = 200
    shape: tuple[ShapeInt, ShapeInt, ShapeInt] = (64, 64, 64)
    voxel_size: PositiveFloat | None = None
    max_lesions: NonNegativeInt = 3
    lesion_probability: FractionFloat = 0.8
    sequences: tuple[str, ...] = SUPPORTED_SEQUENCES
    seed: NonNegativeInt = 0
    corrupt_studies: NonNegativeInt = 0
    export: Literal["nifti", "dicom"] = "nifti"

    def __post_init__(self) -> None:
        if not 1 <= self.num_patients <= self.num_studies <= 1_000_000:
            raise ValueError("need 1 <= num_patients <= num_studies <= 1,000,000")
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise ValueError(f"shape must be three sizes >= 8, got {self.shape}")
        if not self.sequences or set(self.sequences) - set(SUPPORTED_SEQUENCES):
            raise ValueError(f"sequences must be a non-empty subset of {SUPPORTED_SEQUENCES}")
        if self.max_lesions < 0 or not 0.0 <= self.lesion_probability <= 1.0 or self.seed < 0:
            raise ValueError("need max_lesions >= 0, 0 <= lesion_probability <= 1 and seed >= 0")
        if not 0 <= self.corrupt_studies <= self.num_studies:
            raise ValueError("corrupt_studies must lie in [0, num_studies]")

    @property
    def resolved_voxel_size(self) -> float:
        from brainvlp.phantom.anatomy import derive_voxel_size  # imports SciPy: only the generator needs it

        return self.voxel_size if self.voxel_size is not None else derive_voxel_size(self.shape)


@dataclass
class PhantomSpec(JobSpec):
    kind: Literal["phantom"] = "phantom"
    dataset: PhantomConfig = field(default_factory=PhantomConfig)
