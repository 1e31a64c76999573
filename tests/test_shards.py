"""Shard schema round trip, index errors, patient-wise splits and folds, pseudonyms, shard planning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from brainvlp.data.plan import MIB, plan_shards, shard_capacity
from brainvlp.data.shards import (
    SCHEMA,
    decode_volumes,
    pad_token_ids,
    read_index,
    split_files,
    volume_views,
    write_index,
    write_table_atomic,
)
from brainvlp.data.splits import SplitConfig, assign_splits, check_no_leakage, pseudonymise


def shard_row(study: str, volume: np.ndarray) -> dict:
    return {
        "study_id": study, "patient_pid": "p" + study, "split": "train", "fold": 0,
        "volume": volume.tobytes(), "volume_shape": list(volume.shape), "spacing": [1.0, 1.0, 1.0],
        "present": [True, False], "mask": None, "input_ids": [2, 7, 9, 3],
        "sentence_spans": [[1, 3]], "sentence_sections": ["findings"], "truncated": False, "findings": "{}",
    }  # fmt: skip


def test_round_trip_keeps_volumes_int16_and_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volumes = [rng.integers(0, 800, size=(2, 3, 4, 5), dtype=np.int16) for _ in range(3)]
    write_table_atomic(
        [shard_row(f"s{i}", v) for i, v in enumerate(volumes)], SCHEMA, tmp_path / "train-00000.parquet"
    )
    table = pq.read_table(tmp_path / "train-00000.parquet")
    assert table.schema.equals(SCHEMA)
    decoded = decode_volumes(table.column("volume").to_pylist(), table.column("volume_shape").to_pylist())
    assert decoded.dtype == np.int16 and decoded.shape == (3, 2, 3, 4, 5)
    np.testing.assert_array_equal(decoded, np.stack(volumes))
    assert table.column("sentence_spans").to_pylist()[0] == [[1, 3]]
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary file was renamed away


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_volume_views_are_the_rows_bytes_without_copies(kind: pa.DataType) -> None:
    """Views over sliced, multi-chunk columns (as Ray hands over batches) decode as the bytes would."""
    rng = np.random.default_rng(1)
    volumes = [rng.integers(-900, 900, size=(1, 2, 3, 4), dtype=np.int16) for _ in range(7)]
    raw = [v.tobytes() for v in volumes]
    column = pa.chunked_array([pa.array(raw[:4], kind), pa.array(raw[4:], kind)]).slice(1, 5)
    views = volume_views(column)
    assert [bytes(view) for view in views] == raw[1:6]
    buffers = [chunk.buffers()[2] for chunk in column.chunks]
    for view in views:  # each view points into one of Arrow's data buffers: nothing was copied
        assert any(b.address <= view.ctypes.data < b.address + b.size for b in buffers)
    decoded = decode_volumes(views, [[1, 2, 3, 4]] * 5)
    np.testing.assert_array_equal(decoded, np.stack(volumes[1:6]))


def test_arrow_collate_matches_the_numpy_collate(tmp_path: Path) -> None:
    """The training loop's Arrow collate gives the same tensors as ``collate`` on Ray's numpy batch."""
    import torch

    from brainvlp.data.batches import BATCH_COLUMNS, ArrowCollate, collate

    rng = np.random.default_rng(2)
    rows = [shard_row(f"s{i}", rng.integers(0, 800, size=(1, 2, 3, 4), dtype=np.int16)) for i in range(4)]
    rows[1].update(input_ids=[2, 7, 3], sentence_spans=[[1, 2], [2, 2]])
    write_table_atomic(rows, SCHEMA, tmp_path / "train-00000.parquet")
    table = pq.read_table(tmp_path / "train-00000.parquet", columns=BATCH_COLUMNS)
    batch = pa.concat_tables([table.slice(0, 1), table.slice(1)])  # two chunks, as Ray's batches can be
    as_numpy = {name: batch[name].to_numpy() for name in BATCH_COLUMNS}  # object arrays, volumes as bytes
    assert isinstance(as_numpy["volume"][0], bytes)
    expected, found = collate(as_numpy, pad_id=5), ArrowCollate(pad_id=5)(batch)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert found[key].dtype == value.dtype and torch.equal(found[key], value), key
        else:
            assert found[key] == value, key


def test_mixed_volume_shapes_in_one_batch_are_an_error() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        decode_volumes([b"\0" * 8, b"\0" * 16], [[1, 2, 2, 1], [1, 2, 2, 2]])


def test_pad_token_ids() -> None:
    ids, mask = pad_token_ids([[2, 5, 3], [2, 3]], pad_id=0)
    np.testing.assert_array_equal(ids, [[2, 5, 3], [2, 3, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0]])


def test_index_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="output directory of an ingest job"):
        read_index(tmp_path)
    write_index(tmp_path, {"shards": [{"file": "train-00000.parquet", "split": "train", "rows": 3}]})
    assert split_files(tmp_path, "train") == [str(tmp_path / "train-00000.parquet")]
    with pytest.raises(ValueError, match=r"no shards for split 'test'; splits with data: \['train'\]"):
        split_files(tmp_path, "test")


def test_splits_are_by_patient_seeded_and_complete() -> None:
    studies = [{"patient_id": f"p{i % 37}"} for i in range(100)]
    assign_splits(studies, SplitConfig(dev=0.1, test=0.2, num_folds=4, seed=3))
    split_of: dict[str, set[str]] = {}
    for study in studies:
        split_of.setdefault(study["patient_id"], set()).add(study["split"])
        assert (study["fold"] >= 0) == (study["split"] == "train")
    assert all(len(splits) == 1 for splits in split_of.values())  # a patient never spans two splits
    counts = {s: sum(1 for v in split_of.values() if s in v) for s in ("train", "dev", "test")}
    assert counts == {"train": 26, "dev": 4, "test": 7}
    again = [{"patient_id": f"p{i % 37}"} for i in range(100)]
    assign_splits(again, SplitConfig(dev=0.1, test=0.2, num_folds=4, seed=3))
    assert [s["split"] for s in again] == [s["split"] for s in studies]


def test_pseudonyms_are_keyed_and_stable() -> None:
    assert pseudonymise("MRN001", b"k1") == pseudonymise("MRN001", b"k1")
    assert pseudonymise("MRN001", b"k1") != pseudonymise("MRN001", b"k2")
    assert "MRN001" not in pseudonymise("MRN001", b"k1")


def test_folds_are_stratified_on_a_finding_by_patient() -> None:
    # 60 patients, 2 studies each; a third of them enhance. Folds must keep that rate in every fold.
    studies = [
        {"patient_id": f"p{i}", "findings": json.dumps({"enhancing_lesion": i % 3 == 0})}
        for i in range(60)
        for _ in range(2)
    ]
    assign_splits(studies, SplitConfig(dev=0.0, test=0.0, num_folds=5, stratify="enhancing_lesion", seed=1))
    fold_of = {s["patient_id"]: s["fold"] for s in studies}
    assert all(s["fold"] == fold_of[s["patient_id"]] for s in studies)  # a patient stays in one fold
    for fold in range(5):
        members = [p for p, f in fold_of.items() if f == fold]
        assert len(members) == 12 and sum(int(p[1:]) % 3 == 0 for p in members) == 4


def test_leakage_check_names_pseudonyms_only() -> None:
    check_no_leakage([("a", "train"), ("a", "train"), ("b", "test")])
    with pytest.raises(RuntimeError, match=r"1 patient\(s\) span two splits, e.g. pseudonyms \['a'\]"):
        check_no_leakage([("a", "train"), ("b", "test"), ("a", "dev")])


def _planned(num_patients: int, studies_each: int) -> list[dict]:
    return [
        {"study_id": f"s{p}-{k}", "patient_pid": f"pid{p:03d}", "split": "train" if p % 4 else "test",
         "manifest_row": p * studies_each + k}
        for p in range(num_patients)
        for k in range(studies_each)
    ]  # fmt: skip


def test_plan_bounds_shard_size_and_keeps_patients_together() -> None:
    studies = _planned(num_patients=40, studies_each=3)  # 90 train, 30 test
    assert shard_capacity(bytes_per_study=10 * MIB, shard_mb=256) == 25
    plans = plan_shards(studies, capacity=25, min_shards=1, seed=0)
    sizes = {p["file"]: len(p["studies"]) for p in plans}
    assert list(sizes) == [f"test-0000{i}.parquet" for i in range(2)] + [
        f"train-0000{i}.parquet" for i in range(4)
    ]
    assert [sizes[f"test-0000{i}.parquet"] for i in range(2)] == [15, 15]
    assert sorted(sizes[f"train-0000{i}.parquet"] for i in range(4)) == [22, 22, 23, 23]
    assert all({s["split"] for s in p["studies"]} == {p["split"]} for p in plans)
    order = [s["patient_pid"] for p in plans if p["split"] == "train" for s in p["studies"]]
    runs = [pid for i, pid in enumerate(order) if i == 0 or order[i - 1] != pid]
    assert len(runs) == len(set(runs)) == 30  # each patient's studies are adjacent...
    assert runs != sorted(runs)  # ...and patients are shuffled
    assert plan_shards(studies, capacity=25, min_shards=1, seed=0) == plans


def test_plan_spreads_a_small_ingest_over_min_shards() -> None:
    plans = plan_shards(_planned(num_patients=8, studies_each=1), capacity=1000, min_shards=8, seed=0)
    assert [len(p["studies"]) for p in plans] == [1] * 8
