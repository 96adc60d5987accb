"""SFT rows tokenized in batches (data/stage_encode.py, issue 17) give byte for byte the encodings of one row at a
time (`encode_sft_with_info`), on the shipped data and with every built-in template and the model's own (auto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config.args import DataArguments
from tuneforge.data import formats, loaders, registry
from tuneforge.data.encode import encode_sft_with_info
from tuneforge.data.report import DataReport
from tuneforge.data.stage_encode import encode_sft_rows, texts_tokenizer
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


def test_texts_tokenizer_is_encode(tiny_tokenizer):
    texts = ["Hello world", "", "你好，世界", "Hello world", " leading space", "<|im_end|> special"]
    table = texts_tokenizer(tiny_tokenizer)(texts)
    assert list(table) == ["Hello world", "", "你好，世界", " leading space", "<|im_end|> special"]  # each once
    for text in texts:
        assert table[text] == tiny_tokenizer.encode(text, add_special_tokens=False)


def test_texts_tokenizer_without_the_backend_shortcut(tiny_tokenizer, monkeypatch):
    """The shortcut straight to the Rust tokenizer and the tokenizer's own batch call give the same ids."""
    from tuneforge.data import stage_encode

    texts = ["Hello world", "你好，世界", " leading space", "<|im_end|> special", "a\n\nb"]
    assert stage_encode._plain_backend(tiny_tokenizer) is not None
    shortcut = texts_tokenizer(tiny_tokenizer)(texts)
    monkeypatch.setattr(stage_encode, "_plain_backend", lambda tokenizer: None)
    assert texts_tokenizer(tiny_tokenizer)(texts) == shortcut


def test_auto_direct_render_is_the_library_render(items, tiny_tokenizer):
    """`template: auto` calls the compiled chat template itself; every prefix of every shipped conversation (with
    and without the generation prompt) renders as `apply_chat_template` renders it."""
    from tuneforge.data.templates.model import normalize_messages

    template = get_template("auto", tiny_tokenizer)
    assert template._direct_renderer(tiny_tokenizer) is not None
    compared = 0
    for _, conv in items:
        hf = template._hf_messages(normalize_messages(conv.messages), conv.system)
        for end in range(1, len(hf) + 1):
            for generation_prompt in (False, True):
                library = tiny_tokenizer.apply_chat_template(hf[:end], tokenize=False,
                                                             add_generation_prompt=generation_prompt)
                assert template._render(tiny_tokenizer, hf[:end], None, generation_prompt) == library
                compared += 1
    assert compared > 100


def test_auto_direct_render_off_when_it_differs(tiny_tokenizer, monkeypatch):
    """A library whose rendering the direct call does not reproduce (probes differ): the library renders every row."""
    monkeypatch.setattr(type(tiny_tokenizer), "apply_chat_template",
                        lambda self, messages, **kwargs: "library:" + str(len(messages)))
    template = get_template("auto", tiny_tokenizer)
    assert template._direct_renderer(tiny_tokenizer) is None
    assert template._render(tiny_tokenizer, [{"role": "user", "content": "hi"}], None, True) == "library:1"


def test_auto_template_pickles_for_spawned_workers(tiny_tokenizer):
    """Spawned worker processes get the template pickled: without its direct renderer, which they rebuild."""
    import pickle

    template = get_template("auto", tiny_tokenizer)
    assert template._direct_renderer(tiny_tokenizer) is not None
    copy = pickle.loads(pickle.dumps(template))
    messages = [{"role": "user", "content": "hi"}]
    assert copy._direct is None
    assert copy._render(tiny_tokenizer, messages, None, True) == template._render(tiny_tokenizer, messages, None, True)
