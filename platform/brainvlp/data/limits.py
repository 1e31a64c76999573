"""Per-study budgets of an ingest: one bad study costs bounded time and memory, then becomes a reject.

At 80,000 studies every kind of broken export turns up: a 258 KB ``.nii.gz`` whose header claims 10000^3
voxels, a 1 MB "report", a findings object nested 100,000 levels deep. Each budget below is decided from
what can be seen before the expensive work (the file's size, the header's voxel count, the text's length),
so a study is refused before it allocates, and a wall-clock budget catches whatever slips through.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from brainvlp.data.errors import RejectError
from brainvlp.spec import PositiveFloat, PositiveInt

MIB = 1 << 20


@dataclass
class IngestLimits:
    """Budgets for one study; a study over any of them is rejected with the budget it broke."""

    # Bytes read from storage for one image file (compressed, as stored).
    max_file_mb: PositiveFloat = 1024.0
    # One decoded volume as float32 (voxel count from the header x 4 bytes): 1024 MiB is 268 M voxels,
    # e.g. 640^3, ten times a 0.5 mm whole-head scan; checked before any voxel is read.
    max_image_mb: PositiveFloat = 1024.0
    # A report's characters: a radiology report runs to a few thousand; a megabyte is an export error.
    max_report_chars: PositiveInt = 100_000
    # The findings JSON's characters (the schema's fields fit in well under a kilobyte).
    max_findings_chars: PositiveInt = 65_536
    # Patient and study ids' characters.
    max_id_chars: PositiveInt = 256
    # Wall-clock seconds for one study (loading, resampling, report processing); 0.5 mm scans take ~10 s.
    study_seconds: PositiveFloat = 300.0


class StudyTimeout(BaseException):
    """Raised inside a study's processing when its wall-clock budget runs out. A BaseException, like
    KeyboardInterrupt, so that no library's ``except Exception`` turns it into another error."""


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise RejectError("study_timeout") if the block runs longer than ``seconds``.

    A SIGALRM timer interrupts pure-Python work (the text pipeline) at once and a long numpy or scipy
    call when it returns. Ray runs a task on its worker's main thread, where signals are delivered; on any
    other thread (a threaded test runner) the block runs without a timer rather than failing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise StudyTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except StudyTimeout:
        raise RejectError("study_timeout", f"processing took longer than {seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
