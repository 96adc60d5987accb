"""SFT rows tokenized in batches (data/stage_encode.py, issue 17) give byte for byte the encodings of one row at a
time (`encode_sft_with_info`), on the shipped data and with every built-in template and the model's own (auto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config.args import DataArguments
from tuneforge.data import formats, loaders, registry
from tuneforge.data.encode import encode_sft_with_info
from tuneforge.data.report import DataReport
from tuneforge.data.stage_encode import batch_tokenize, encode_sft_rows
from tuneforge.data.templates import available_templates, get_template
from tuneforge.errors import DataError, ModelError, TuneforgeError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DATASETS = ("demo_bilingual_alpaca", "demo_bilingual_sharegpt", "demo_openai", "identity")


@pytest.fixture(scope="module")
def items():
    specs = registry.load_dataset_specs(list(DATASETS), str(DATA_DIR), None)
    return [(spec.name, formats.convert_row(row.values, spec, row.source)) for spec in specs
            for row in loaders.load_rows(spec)]


def one_at_a_time(items, template, tokenizer, data):
    out = {"input_ids": [], "labels": []}
    for _, conv in items:
        try:
            result = encode_sft_with_info(conv, template, tokenizer, data)
        except DataError:  # a row the template cannot encode: both report it as dropped
            continue
        if not result.dropped:
            out["input_ids"].append(result.input_ids)
            out["labels"].append(result.labels)
    return out


@pytest.mark.parametrize("name", ["auto", *available_templates()])
def test_batched_encoding_equals_one_row_at_a_time(name, items, tiny_tokenizer):
    try:
        template = get_template(name, tiny_tokenizer)
    except TuneforgeError:  # a template the tiny tokenizer cannot serve (a special token it lacks)
        pytest.skip(f"{name}: not usable with the tiny tokenizer")
    data = DataArguments(cutoff_len=128)  # some rows are cut: the truncation path is compared too
    try:
        batched = encode_sft_rows(items, template, tiny_tokenizer, data, DataReport(), "train")
    except ModelError:  # a special token the tiny tokenizer lacks: the run stops with this message either way
        pytest.skip(f"{name}: needs tokens the tiny tokenizer lacks")
    assert batched == one_at_a_time(items, template, tiny_tokenizer, data)
    assert len(batched["input_ids"]) > len(items) // 2


def test_batch_tokenize_is_encode(tiny_tokenizer):
    texts = ["Hello world", "", "你好，世界", "Hello world", " leading space", "<|im_end|> special"]
    table = batch_tokenize(tiny_tokenizer, texts)
    assert list(table) == ["Hello world", "", "你好，世界", " leading space", "<|im_end|> special"]  # each once
    for text in texts:
        assert table[text] == tiny_tokenizer.encode(text, add_special_tokens=False)
