"""`preprocessing_num_workers`: rows are encoded in worker processes, with exactly the result of one process."""

from __future__ import annotations

import json
import os

import pytest

from conftest import data_run_config

from tuneforge.data import workers
from tuneforge.data.pipeline import build_datasets
from tuneforge.data.report import MAX_REFS, DataReport
from tuneforge.config.stages import stage_record
from tuneforge.data.stage_encode import KIND_COLUMNS


def _pid_encoder(items, scale, report, split):
    """A row encoder that says which process ran it (module level: workers may need to import it)."""
    if scale < 0 and items[-1] == 49:
        raise ValueError("row 49 is bad")
    for item in items:
        report.stats("d", split).kept += 1
        if item % 7 == 0:
            report.dropped("d", "multiple of 7", f"row {item}", split)
    return {"value": [item * scale for item in items], "pid": [os.getpid()] * len(items)}


@pytest.fixture
def two_cores(monkeypatch):
    """Worker processes even on a 1-core machine and for small test splits."""
    monkeypatch.setattr(workers, "MIN_ROWS_PER_WORKER", 1)
    monkeypatch.setattr(workers, "available_cores", lambda: 2)


@pytest.mark.parametrize("count, shards", [(10, 2), (11, 3), (5, 4), (1000, 7)])
def test_shards_are_cut_like_datasets_map(count, shards):
    from datasets import Dataset

    dataset = Dataset.from_dict({"i": list(range(count))})
    expected = [(s["i"][0], s["i"][-1] + 1) for s in (dataset.shard(shards, k, contiguous=True) for k in range(shards))]
    assert workers.shard_bounds(count, shards) == expected


PID_SCHEMA_COLUMNS = ("value", "pid")


def _encode(items, scale, report, folder, requested, name="run"):
    """`workers.encode_rows` with `_pid_encoder` into `folder/name`, read back: the columns as lists, the files."""
    from datasets import Features, Value

    from tuneforge.data.arrow_files import read_dataset

    schema = Features({column: Value("int64") for column in PID_SCHEMA_COLUMNS})
    paths = workers.encode_rows(_pid_encoder, items, (scale,), report, "train", folder / name, schema, requested)
    dataset = read_dataset(paths)
    return {column: dataset[column] for column in PID_SCHEMA_COLUMNS}, paths


def test_rows_are_encoded_in_worker_processes_and_merged_in_order(two_cores, tmp_path):
    items = list(range(50))
    one, two = DataReport(), DataReport()
    alone, alone_files = _encode(items, 3, one, tmp_path, None, "one")
    split, split_files = _encode(items, 3, two, tmp_path, 2, "two")
    assert set(alone["pid"]) == {os.getpid()} and len(alone_files) == 1
    # this process encoded the first shard, a worker process the second, each into its own file
    assert split["pid"][:25] == [os.getpid()] * 25 and len(set(split["pid"][25:])) == 1
    assert split["pid"][-1] != os.getpid() and [p.name for p in split_files] == ["shard-00000.arrow", "shard-00001.arrow"]
    assert split["value"] == alone["value"] == [3 * i for i in items]
    assert two.to_json() == one.to_json()
    assert one.stats("d").refs["multiple of 7"] == [f"row {i}" for i in (0, 7, 14, 21, 28)][:MAX_REFS]


def test_a_shard_is_encoded_and_written_a_chunk_at_a_time(tmp_path, monkeypatch):
    """Bounded memory: the encoder sees at most WRITE_CHUNK rows at once and each chunk is one record batch."""
    import pyarrow as pa

    seen = []

    def encoder(items, scale, report, split):
        seen.append(len(items))
        return _pid_encoder(items, scale, report, split)

    monkeypatch.setattr(workers, "WRITE_CHUNK", 8)
    from datasets import Features, Value

    schema = Features({column: Value("int64") for column in PID_SCHEMA_COLUMNS})
    report = DataReport()
    (path,) = workers.encode_rows(encoder, list(range(30)), (2,), report, "train", tmp_path, schema)
    assert seen == [8, 8, 8, 6]
    with pa.OSFile(str(path), "rb") as source:
        batches = list(pa.ipc.open_stream(source))
    assert [batch.num_rows for batch in batches] == [8, 8, 8, 6]
    assert pa.Table.from_batches(batches).column("value").to_pylist() == [2 * i for i in range(30)]
    assert report.stats("d").kept == 30


def test_an_error_in_a_worker_is_raised_here(two_cores, tmp_path):
    with pytest.raises(ValueError, match="row 49 is bad"):
        _encode(list(range(50)), -1, DataReport(), tmp_path, 2)


def test_worker_count_rules(monkeypatch):
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    assert workers.worker_count(None, 10_000) == 1
    assert workers.worker_count(1, 10_000) == 1
    assert workers.worker_count(16, 10_000) == 2  # no more processes than cores
    assert workers.worker_count(2, workers.MIN_ROWS_PER_WORKER) == 1  # a small split stays in this process


# ---- every stage through build_datasets: 1 worker == 2 workers, byte for byte --------------------------
ROWS = []
for i in range(60):
    answer = ("The quick brown fox jumps over the lazy dog. " * (i % 5)) + f"answer {i}"
    if i % 11 == 3:
        answer = ""  # sft: no trained tokens -> dropped; pt: kept
    ROWS.append({"instruction": f"question {i}: " + "who are you? " * (i % 4), "input": "", "output": answer,
                 "chosen": answer or "yes", "rejected": f"no {i}", "label": i % 3 != 0, "text": answer})
INFO = {
    "plain": {"file_name": "rows.json"},
    "pairs": {"file_name": "rows.json", "ranking": True,
              "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
    "feedback": {"file_name": "rows.json", "columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}},
    "docs": {"file_name": "rows.json", "columns": {"prompt": "text"}},
}
DATASET = {"sft": "plain", "ppo": "plain", "rm": "pairs", "dpo": "pairs", "kto": "feedback", "pt": "docs"}


@pytest.fixture
def rows_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.json").write_text(json.dumps(ROWS))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(INFO))
    return tmp_path


def _cfg(dataset, **data):
    return data_run_config(dataset, seed=42, **{"cutoff_len": 40, "preprocessing_batch_size": 16, **data})


@pytest.mark.parametrize("stage", ["sft", "rm", "kto", "ppo", "pt"])
def test_two_workers_give_the_same_samples_and_report(stage, rows_dir, two_cores, tiny_tokenizer, monkeypatch):
    from tuneforge.data.templates import get_template

    template = None if stage == "pt" else get_template("chatml", tiny_tokenizer)
    bundles = []
    for n in (None, 2):
        monkeypatch.setenv("TUNEFORGE_CACHE", str(rows_dir / f"cache-{n}"))  # no cache hit between the two
        bundles.append(build_datasets(_cfg(DATASET[stage], preprocessing_num_workers=n), tiny_tokenizer, template, stage))
    one, two = bundles
    assert len(one.train) > 20
    for column in KIND_COLUMNS[stage_record(stage).data]:
        assert two.train[column] == one.train[column], column
    assert two.train.data.table.equals(one.train.data.table)
    assert two.report.to_json() == one.report.to_json()
    stats = one.report.stats(DATASET[stage])
    if stage in ("sft", "kto"):
        assert stats.truncated > MAX_REFS or stats.dropped  # the merge had references to cut at MAX_REFS


def test_worker_count_is_not_part_of_the_cache_key(rows_dir, two_cores, tiny_tokenizer, monkeypatch):
    from tuneforge.data.templates import get_template

    monkeypatch.setenv("TUNEFORGE_CACHE", str(rows_dir / "cache"))
    template = get_template("chatml", tiny_tokenizer)
    build_datasets(_cfg("plain", preprocessing_num_workers=2), tiny_tokenizer, template)
    again = build_datasets(_cfg("plain"), tiny_tokenizer, template)
    assert any("loaded from cache" in note for note in again.report.notes)


# ---- one process: the rows are read as they are encoded (rows.stream_conversations) -------------------------
@pytest.mark.parametrize("stage", ["sft", "rm", "ppo", "pt"])
def test_streamed_rows_give_the_samples_and_report_of_the_listed_rows(stage, rows_dir, tiny_tokenizer, monkeypatch):
    from tuneforge.data import pipeline, rows
    from tuneforge.data.templates import get_template

    rows_file = rows_dir / "data" / "rows.json"
    rows_file.write_text(json.dumps([*ROWS[:30], "not a row", {"instruction": 5, "output": "x"}, *ROWS[30:]]))
    template = None if stage == "pt" else get_template("chatml", tiny_tokenizer)
    bundles = []
    for streamed in (True, False):
        monkeypatch.setenv("TUNEFORGE_CACHE", str(rows_dir / f"cache-{streamed}"))
        with monkeypatch.context() as patch:
            if streamed:
                patch.setattr(rows, "load_rows", lambda spec: pytest.fail("the streamed build read the file whole"))
            else:
                patch.setattr(pipeline, "can_stream", lambda specs, data: False)
            bundles.append(build_datasets(_cfg(DATASET[stage]), tiny_tokenizer, template, stage))
    streamed, listed = bundles
    assert streamed.train.data.table.equals(listed.train.data.table)
    assert streamed.report.to_json() == listed.report.to_json()
    stats = streamed.report.stats(DATASET[stage])
    assert (stats.rows_read, stats.rows_used) == (62, 62) and sum(stats.dropped.values()) >= 2


def test_a_streamed_column_mapping_no_row_has_is_refused(rows_dir, tiny_tokenizer, monkeypatch):
    from tuneforge.data.templates import get_template
    from tuneforge.errors import DataError

    info = {"plain": {"file_name": "rows.json", "columns": {"prompt": "question", "response": "output"}}}
    (rows_dir / "data" / "dataset_info.json").write_text(json.dumps(info))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(rows_dir / "cache"))
    with pytest.raises(DataError, match=r"`columns` maps prompt -> 'question', but no row of .*rows.json has"):
        build_datasets(_cfg("plain"), tiny_tokenizer, get_template("chatml", tiny_tokenizer))
    assert not any((rows_dir / "cache").rglob("*.arrow"))  # nothing half-built left in the cache
