"""Report sections: shared vocabulary of the data layer (which splits reports into them) and the models
(which encode sections separately), so neither depends on the other for it."""

from __future__ import annotations

# Canonical section -> the headers that name it in reports (lower case, any whitespace between words).
SECTION_ALIASES = {
    "findings": ("findings", "finding"),
    "impression": ("impression", "impressions", "conclusion", "conclusions"),
    "history": (
        "history",
        "clinical history",
        "clinical information",
        "clinical details",
        "indication",
        "indications",
        "clinical indication",
        "reason for exam",
        "reason for examination",
    ),
    "technique": ("technique", "protocol", "procedure"),
    "comparison": ("comparison", "comparisons", "prior studies"),
    "exam": ("exam", "examination"),
    "recommendation": ("recommendation", "recommendations"),
    "addendum": ("addendum",),
}
# Every section a sentence can come from, in a fixed order: shards store a sentence's section by name and
# batches carry its index here. "preamble" is text before the first header, "report" a headerless report.
SECTION_KEYS = (*SECTION_ALIASES, "preamble", "report")
