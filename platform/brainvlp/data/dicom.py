"""Reading a DICOM study (a PACS export: one visit, many series) into series, and one series into a volume.

Method. :func:`read_study` reads every file's header only (``stop_before_pixels``), groups the images by
SeriesInstanceUID (a SOP instance exported twice counts once) and describes each series by values that
identify no one (:class:`SeriesInfo`). Files that are not DICOM (.DS_Store, a PDF, a viewer's files) are
counted and passed over, as are DICOM files without an image (a DICOMDIR, a structured report). Choosing
each sequence's series is ``series_select.py``; :func:`load_series` then reads the chosen series' pixels
and stacks them into a float32 RAS+ ``nibabel.Nifti1Image`` (geometry and its rejects: ``dicom_volume``).

A study is a local folder, a .zip or a .tar (optionally gzip, bzip2 or xz) of one, or one file (an enhanced
multi-frame image), each on local disk or under a pyarrow.fs URI (s3://, gs://, file://). Archives are
recognised by their first bytes, not their names. A tar is streamed, never held whole; a zip is read member
by member through a random-access file, so object storage serves range requests.

Why pydicom, not dcm2niix or SimpleITK: pydicom and its decoders are pure-Python wheels, with no binary to
put on every worker's PATH and no process per study; it reads any byte stream, so an export on object
storage needs no local copy; and every way a series can fail becomes a RejectError whose reason the rejects
table counts, rather than a warning in a converter's log.

Privacy. SeriesInfo holds no name, date, id, accession number or institution: a series is known by a hash
of its UID (UIDs often embed dates and site roots), its SeriesNumber and its description. Its file names and
the study path, which exports often name after the patient, are kept for loading but left out of repr and
comparison; reject details name files by their position, never by name.

Limits. Budgets come from IngestLimits: ``max_file_mb`` per file or archive member, checked from the
listing before the file is read (one file over it rejects the study: no brain MR file is that large), and
``max_image_mb`` for the decoded series, checked before any pixel is read; a study holds at most
``dicom_source.MAX_STUDY_FILES`` files. Loading a series from an archive reads the archive again (a tar up
to the series' last member). Files without the 128-byte preamble and "DICM" marker (some pre-2000
exports) count as non-DICOM. Siemens mosaics and series holding several volumes (echoes, b-values, time
points) are not unpacked but rejected. Compressed pixels decode with what is installed: RLE and deflate
always, JPEG baseline and JPEG 2000 through Pillow, JPEG-LS and HTJ2K only with pylibjpeg, pyjpegls or
gdcm; otherwise ``dicom_unreadable`` names the transfer syntax.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import nibabel as nib
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from brainvlp.data import dicom_source
from brainvlp.data.dicom_source import study_files
from brainvlp.data.dicom_volume import DECODE_ERRORS, functional_value, stack_series
from brainvlp.data.errors import RejectError
from brainvlp.data.limits import MIB, IngestLimits

__all__ = [
    "DICOM_REJECT_REASONS",
    "SeriesInfo",
    "StudyScan",
    "load_series",
    "match_text",
    "read_study",
    "scan_study",
]

# Reject reasons this module and dicom_volume add to data/errors.py's REJECT_REASONS.
DICOM_REJECT_REASONS = (
    "dicom_no_series",  # no image series in the study at all
    "dicom_localizer",  # the series chosen is a localiser / scout
    "dicom_single_slice",  # one slice, not a volume
    "dicom_multi_volume",  # several frames at one position: echoes, b-values, time points
    "dicom_mixed_geometry",  # orientations, pixel spacings, matrices or slice line differ in one series
    "dicom_gap",  # a slice step far from the median: missing slices
    "dicom_unreadable",  # pixel data that cannot be decoded here, a truncated file, a broken archive
    "dicom_too_many_files",  # over dicom_source.MAX_STUDY_FILES
)
# Series descriptions are LO (64 characters); anything longer is cut in reasons and details.
MAX_TEXT = 64
UID_HASH_CHARS = 16
# Localisers by name where ImageType does not say LOCALIZER (GE "3-plane loc", Siemens "AAHead_Scout",
# Philips "Survey"), matched against match_text().
LOCALIZER_NAMES = re.compile(r"\b(localizer|localiser|loc|scout|survey|3 ?-?pl(ane)?|tri ?-?pilot|aahead)\b")
# What pydicom raises on a file that has the DICOM marker but a header it cannot parse.
HEADER_ERRORS = (*DECODE_ERRORS, InvalidDicomError)


@dataclass(frozen=True)
class SeriesInfo:
    """One image series of a study, described without any identifying value (see the module docstring)."""

    uid: str  # first 16 hex digits of SHA-256(SeriesInstanceUID), not the UID itself
    index: int  # position in the study, ordered by SeriesNumber then uid
    number: int | None  # SeriesNumber
    description: str  # SeriesDescription, or ProtocolName where that is empty
    protocol: str  # ProtocolName
    modality: str
    num_slices: int  # frames in all: files for classic images, NumberOfFrames for multi-frame ones
    num_files: int
    rows: int
    columns: int
    slice_thickness: float | None  # mm
    contrast: bool  # a contrast agent is recorded (ContrastBolusAgent or its enhanced sequence)
    acquisition: str | None  # MRAcquisitionType, "2D" or "3D"
    image_type: tuple[str, ...]
    localizer: bool  # ImageType LOCALIZER, or a localiser's name
    multiframe: bool
    transfer_syntax: str  # its name, e.g. "Explicit VR Little Endian"
    # Where the files are: exports name folders and files after patients, so none of this is shown.
    source: str = field(default="", repr=False, compare=False)
    container: str = field(default="folder", repr=False, compare=False)
    files: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def label(self) -> str:
        """How details and reasons name the series: number, description and uid hash, nothing else."""
        return (
            f"series {self.number if self.number is not None else '?'} '{self.description}' [{self.uid[:8]}]"
        )


@dataclass(frozen=True)
class StudyScan:
    """A study's image series and what else its files held (counts only)."""

    series: list[SeriesInfo]
    num_files: int
    num_not_dicom: int  # no DICOM marker, or a header that cannot be parsed
    num_without_image: int  # DICOM without an image: DICOMDIR, structured reports, presentation states
    num_duplicates: int  # a SOP instance seen before


def match_text(text: str) -> str:
    """Lowercase, underscores as spaces: "t1_mprage_tra_POST" reads as the words "t1 mprage tra post"."""
    return text.lower().replace("_", " ")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    text = "" if value is None else str(value)
    return " ".join("".join(c for c in text if c.isprintable()).split())[:MAX_TEXT]


def _number(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class _FileHeader:
    """What read_study keeps of one file's header: small, so that 20,000 files cost little memory."""

    name: str
    series_uid: str
    sop_uid: str
    number: int | None
    description: str
    protocol: str
    modality: str
    frames: int
    rows: int
    columns: int
    thickness: float | None
    contrast: bool
    acquisition: str | None
    image_type: tuple[str, ...]
    multiframe: bool
    transfer_syntax: str


def _file_header(name: str, ds: Dataset) -> _FileHeader | None:
    """The file's summary, or None when it holds no image."""
    rows, columns = _number(ds.get("Rows")), _number(ds.get("Columns"))
    if not rows or not columns or "SeriesInstanceUID" not in ds:
        return None
    groups = [ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")]
    groups = [g[0] if g else None for g in groups]
    thickness = ds.get("SliceThickness") or functional_value(
        groups, "PixelMeasuresSequence", "SliceThickness"
    )
    image_type = ds.get("ImageType") or ()
    image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
    acquisition = _text(ds, "MRAcquisitionType").upper()
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return _FileHeader(
        name=name,
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        number=_number(ds.get("SeriesNumber")),
        description=_text(ds, "SeriesDescription") or _text(ds, "ProtocolName"),
        protocol=_text(ds, "ProtocolName"),
        modality=_text(ds, "Modality").upper(),
        frames=_number(ds.get("NumberOfFrames")) or 1,
        rows=rows,
        columns=columns,
        thickness=_float(thickness),
        contrast=bool(_text(ds, "ContrastBolusAgent") or ds.get("ContrastBolusAgentSequence")),
        acquisition=acquisition if acquisition in ("2D", "3D") else None,
        image_type=tuple(str(v).strip().upper() for v in image_type),
        multiframe=bool(ds.get("PerFrameFunctionalGroupsSequence"))
        or (_number(ds.get("NumberOfFrames")) or 1) > 1,
        transfer_syntax=syntax.name if syntax is not None else "unknown",
    )


def _series_info(index: int, files: list[_FileHeader], source: str, container: str) -> SeriesInfo:
    first = files[0]
    texts = (match_text(first.description), match_text(first.protocol))
    return SeriesInfo(
        uid=hashlib.sha256(first.series_uid.encode()).hexdigest()[:UID_HASH_CHARS],
        index=index,
        number=first.number,
        description=first.description,
        protocol=first.protocol,
        modality=first.modality,
        num_slices=sum(f.frames for f in files),
        num_files=len(files),
        rows=first.rows,
        columns=first.columns,
        slice_thickness=first.thickness,
        contrast=any(f.contrast for f in files),
        acquisition=first.acquisition,
        image_type=first.image_type,
        localizer=any("LOCALIZER" in f.image_type for f in files) or any(map(LOCALIZER_NAMES.search, texts)),
        multiframe=any(f.multiframe for f in files),
        transfer_syntax=first.transfer_syntax,
        source=source,
        container=container,
        files=tuple(f.name for f in files),
    )


def _group(headers: Iterable[_FileHeader], source: str, container: str) -> tuple[list[SeriesInfo], int]:
    """Series in SeriesNumber order, and the number of repeated SOP instances left out."""
    by_series: dict[str, list[_FileHeader]] = {}
    seen: set[str] = set()
    duplicates = 0
    for header in headers:
        if header.sop_uid and header.sop_uid in seen:
            duplicates += 1
            continue
        seen.add(header.sop_uid)
        by_series.setdefault(header.series_uid, []).append(header)
    groups = sorted(
        by_series.values(),
        key=lambda files: (
            files[0].number is None,
            files[0].number or 0,
            hashlib.sha256(files[0].series_uid.encode()).digest(),
        ),
    )
    return [_series_info(i, files, source, container) for i, files in enumerate(groups)], duplicates


def scan_study(path: str, limits: IngestLimits | None = None) -> StudyScan:
    """The study's image series with counts of the other files; see :func:`read_study`."""
    limits = limits or IngestLimits()
    container, source = dicom_source.container(path)
    headers: list[_FileHeader] = []
    counts = {"files": 0, "not_dicom": 0, "no_image": 0}
    for name, stream in study_files(container, source, limits):
        counts["files"] += 1
        try:
            # pydicom converts values when they are first read, so a malformed value fails in _file_header.
            header = _file_header(name, pydicom.dcmread(stream, stop_before_pixels=True))
        except HEADER_ERRORS:
            counts["not_dicom"] += 1
            continue
        if header is None:
            counts["no_image"] += 1
        else:
            headers.append(header)
    # Name order, whatever order an archive lists its members in: a folder and its tar give the same.
    headers.sort(key=lambda h: h.name)
    series, duplicates = _group(headers, source, container)
    if not series:
        raise RejectError(
            "dicom_no_series",
            f"no image series among {counts['files']} files ({counts['not_dicom']} not DICOM, "
            f"{counts['no_image']} DICOM without an image)",
        )
    return StudyScan(series, counts["files"], counts["not_dicom"], counts["no_image"], duplicates)


def read_study(path: str, limits: IngestLimits | None = None) -> list[SeriesInfo]:
    """The image series of a DICOM study: a folder, a zip or tar of one, or one file, local or a URI.

    Reads headers only. Raises RejectError: ``dicom_no_series`` when no file holds an image,
    ``dicom_too_many_files`` / ``file_too_large`` over the budgets, ``dicom_unreadable`` for a broken
    archive, ``unreadable_file`` when the path does not exist.
    """
    return scan_study(path, limits).series


def load_series(series: SeriesInfo, *, limits: IngestLimits | None = None) -> nib.Nifti1Image:
    """The series as one float32 RAS+ image with RescaleSlope / RescaleIntercept applied.

    Raises RejectError for a localiser, a single slice, a budget, and everything ``dicom_volume`` rejects.
    """
    limits = limits or IngestLimits()
    label = series.label
    if series.localizer:
        raise RejectError("dicom_localizer", f"{label}: a localiser / scout, not a diagnostic volume")
    if series.num_slices < 2:
        raise RejectError("dicom_single_slice", f"{label}: one slice, not a volume")
    megabytes = series.rows * series.columns * series.num_slices * 4 / MIB
    if megabytes > limits.max_image_mb:
        raise RejectError(
            "image_too_large",
            f"{label}: {series.num_slices} slices of {series.rows} x {series.columns} need "
            f"{megabytes:.0f} MiB as float32, over the {limits.max_image_mb:g} MiB budget",
        )
    wanted = {name: position for position, name in enumerate(series.files)}
    datasets: list[Dataset | None] = [None] * len(wanted)
    for name, stream in study_files(series.container, series.source, limits, wanted=set(wanted)):
        try:
            datasets[wanted[name]] = pydicom.dcmread(stream)
        except HEADER_ERRORS as exc:
            raise RejectError(
                "dicom_unreadable",
                f"{label}: file {wanted[name] + 1} of {len(wanted)} cannot be read ({type(exc).__name__})",
            ) from None
    missing = sum(ds is None for ds in datasets)
    if missing:
        raise RejectError("dicom_unreadable", f"{label}: {missing} of {len(datasets)} files have gone")
    return stack_series(datasets, label)
