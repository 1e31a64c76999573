"""Manifest files (CSV, TSV, JSONL, Parquet) -> records, one bad record at a time.

A record that cannot be read (a CSV row with an extra or a missing field, an unbalanced quote, a JSONL line
that is not a JSON object) becomes a row reject naming its line, never the whole manifest's failure. The
number of records is also counted from the format's own structure, apart from the parser that can be
fooled: lines of a JSONL file, the row count in a Parquet file's footer, and for CSV the lines that read as
a complete row on their own (each must start a record). The caller checks that the counts agree, so that
no study goes missing without a record.

CSV needs care because reports hold line breaks inside quoted cells, so a line break does not end a row:
an unbalanced quote makes a permissive parser swallow every following row into one report cell (pyarrow
read "1 row" from a manifest of 3). Here a record may span lines only while a quoted cell is open *and*
no line inside it reads as a complete manifest row (the header's field count, non-empty ids); such a line
ends the broken record, which becomes a ``malformed_row`` reject, and starts the next one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from brainvlp.data.errors import RejectError
from brainvlp.errors import UserError


@dataclass
class Records:
    """What a manifest holds: readable rows and unreadable records, each with its 1-based line (in Parquet,
    its 1-based row), and ``count``, the number of records by the format's own structure."""

    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    bad: list[tuple[int, RejectError]] = field(default_factory=list)
    count: int = 0
    columns: list[str] = field(default_factory=list)  # the header, or every key some JSONL row has


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def row_from_pairs(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A row from (column, value) pairs; a column named twice must hold one value (else a reject naming
    the column: which of two ids or paths is meant cannot be guessed)."""
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row and row[key] != value:
            raise RejectError("conflicting_columns", f"column {key!r} appears twice with different values")
        row[key] = value
    return row


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys with different values (raising ``_DuplicateKey``) and the
    non-standard NaN / Infinity, which Python's parser accepts and no other tool does."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen and seen[key] != value:
                raise _DuplicateKey(key)
            seen[key] = value
        return seen

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, object_pairs_hook=pairs_hook, parse_constant=no_constant)


def json_object(text: str, where: str, reason: str, duplicate_reason: str | None = None) -> dict[str, Any]:
    """One JSON object, or a RejectError with ``reason`` (``duplicate_reason`` for a key given twice with
    different values) naming ``where`` and the rule, never the text."""
    try:
        value = strict_json(text)
    except _DuplicateKey as dup:
        detail = f"{where}: key {dup.key!r} appears twice with different values"
        raise RejectError(duplicate_reason or reason, detail) from None
    except RecursionError:
        raise RejectError(reason, f"{where}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError's msg holds a position, not content
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise RejectError(reason, f"{where}: invalid JSON ({message})") from None
    if not isinstance(value, dict):
        raise RejectError(reason, f"{where}: expected a JSON object, found {type(value).__name__}")
    return value


def decode(path: str, data: bytes, encoding: str) -> str:
    """The manifest's text; ``encoding: auto`` detects it (charset-normalizer). An undecodable file is one
    error naming the place and the option, since every row after a bad byte would be suspect."""
    if encoding == "auto":
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is None:
            raise UserError(f"manifest {path}: cannot detect its text encoding; set ingest.manifest_encoding")
        encoding = best.encoding
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"manifest {path}: not valid {encoding} at line {line} (byte {exc.start}); set "
            "ingest.manifest_encoding to its encoding (e.g. latin-1, cp1252) or to auto to detect it"
        ) from None
    except LookupError:
        raise UserError(f"ingest.manifest_encoding: unknown encoding {encoding!r}") from None
    return text.removeprefix("\ufeff")


def read_jsonl(text: str) -> Records:
    records = Records()
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        records.count += 1
        try:
            row = json_object(line, f"line {line_number}", "malformed_row", "conflicting_columns")
        except RejectError as err:
            records.bad.append((line_number, err))
            continue
        records.rows.append((line_number, {key: _cell(value) for key, value in row.items()}))
    records.columns = list(dict.fromkeys(key for _, row in records.rows for key in row))
    return records


def read_parquet(data: bytes) -> Records:
    parquet = pq.ParquetFile(io.BytesIO(data))
    table = parquet.read()
    names = table.column_names
    records = Records(count=parquet.metadata.num_rows, columns=names)
    columns = (column.to_pylist() for column in table.columns)
    for number, values in enumerate(zip(*columns, strict=True), start=1):
        try:
            pairs = [(k, _cell(v)) for k, v in zip(names, values, strict=True)]
            records.rows.append((number, row_from_pairs(pairs)))
        except RejectError as err:
            records.bad.append((number, err))
    return records


def _cell(value: Any) -> Any:
    """A cell as text: Parquet and JSONL may type ids as numbers and findings as objects."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def read_csv(text: str, delimiter: str, id_columns: Sequence[str]) -> Records:
    """Records of a CSV/TSV text (see the module docstring); empty cells read as missing (None)."""
    # The csv module refuses cells over 128 KiB; the report budget (ingest limits) is the size rule here.
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_CELL))
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    if start is None:
        return Records()
    header = next(csv.reader([lines[start]], delimiter=delimiter))
    looks_like_row = _row_test(header, delimiter, id_columns)
    records, starts = Records(columns=header), set()
    for line_number, cells, error in _csv_records(lines, start + 1, delimiter, looks_like_row):
        starts.add(line_number)
        if error is None and len(cells) != len(header):
            error = f"{len(cells)} fields where the header has {len(header)}"
        if error is not None:
            records.bad.append((line_number, RejectError("malformed_row", f"line {line_number}: {error}")))
            continue
        try:
            row = row_from_pairs([(k, v if v != "" else None) for k, v in zip(header, cells, strict=True)])
        except RejectError as err:
            records.bad.append((line_number, err))
            continue
        records.rows.append((line_number, row))
    # The structural count: every line that reads as a complete row on its own must start a record; one
    # swallowed into another record's cell raises the count above the records, which the caller refuses.
    row_like = {n for n, line in enumerate(lines[start + 1 :], start=start + 2) if looks_like_row(line)}
    records.count = len(starts | row_like)
    return records


def _row_test(header: list[str], delimiter: str, id_columns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate: does a line, on its own, read as the start of a row? Either a complete row (the
    header's field count), or the cells before a quoted cell that stays open (a multi-line report), at
    least up to the id columns. Either way its id cells must be non-empty and free of whitespace: ids have
    none, while prose on a report's continuation line, split at its commas, has spaces in nearly every
    piece. (Ids with spaces lose this protection, not their rows.)"""
    positions = [header.index(c) for c in id_columns if c in header]
    needed = max(positions, default=0) + 1

    def looks_like_row(line: str) -> bool:
        if not line.strip():
            return False
        opened = _open_quote(line, delimiter, False)
        try:
            cells = next(csv.reader([line if opened is None else line[:opened]], delimiter=delimiter), [])
        except csv.Error:
            return False
        if opened is None and len(cells) != len(header):
            return False
        # A prefix "a,b," reads as ["a", "b", ""]: the last, empty cell is the one the quote opens.
        if opened is not None and not needed <= len(cells) - 1 < len(header):
            return False
        return all(cells[p] and not any(ch.isspace() for ch in cells[p]) for p in positions)

    return looks_like_row


def _csv_records(
    lines: list[str], first: int, delimiter: str, looks_like_row: Callable[[str], bool]
) -> Iterator[tuple[int, list[str], str | None]]:
    """(first line number, cells, error) of each record from ``lines[first:]``."""
    index = first
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        begin, end = index, index + 1
        open_quote = _open_quote(lines[index], delimiter, False) is not None
        while open_quote and end < len(lines) and not looks_like_row(lines[end]):
            open_quote = _open_quote(lines[end], delimiter, True) is not None
            end += 1
        index = end
        if open_quote:
            yield begin + 1, [], "a quoted cell is never closed (an unbalanced quote)"
            continue
        try:
            cells = next(csv.reader(["\n".join(lines[begin:end])], delimiter=delimiter, strict=True))
        except csv.Error as exc:
            yield begin + 1, [], f"not a valid CSV row ({exc})"
            continue
        yield begin + 1, cells, None


_MAX_CELL = 2**31 - 1
_FIELD_QUOTE: dict[str, re.Pattern[str]] = {}


def _open_quote(line: str, delimiter: str, in_quotes: bool) -> int | None:
    """Where the quoted cell still open at the end of ``line`` began (-1: on an earlier line, when starting
    ``in_quotes``), or None when no cell is open. As in Python's csv module, a quote opens a cell only at
    the cell's start, and ``""`` inside a quoted cell is a quote."""
    opener = _FIELD_QUOTE.get(delimiter)
    if opener is None:
        opener = _FIELD_QUOTE[delimiter] = re.compile(f'(?:^|{re.escape(delimiter)})"')
    position, began = 0, -1
    while True:
        if in_quotes:
            closing = line.find('"', position)
            if closing < 0:
                return began
            if line.startswith('"', closing + 1):
                position = closing + 2
                continue
            in_quotes, position = False, closing + 1
        else:
            found = opener.search(line, position)
            if found is None:
                return None
            in_quotes, position, began = True, found.end(), found.end() - 1
