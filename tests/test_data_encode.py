"""infer_seqlen, SFT label masks and truncation, pretraining blocks."""

from __future__ import annotations

import importlib


import pytest

from tuneforge.config.args import DataArguments

from tuneforge.data.encode import (
    IGNORE_INDEX,
    assemble_sft,
    encode_pt,
    encode_sft,
    encode_sft_with_info,
    infer_seqlen,
    pack_blocks,
)
from tuneforge.data.formats import Conversation, Message

X = IGNORE_INDEX
EOS = 3


class CharTokenizer:
    """One token per character (its code point); eos id 3."""

    eos_token_id = EOS
    bos_token_id = 4

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class FakeTemplate:
    """prompt = [1] + user + [2], response = assistant + [eos]; system ids [5] + text before turn 1.

    With efficient_eos the response has no eos; every prompt after the first starts with eos instead.
    """

    name = "fake"

    def __init__(self, efficient_eos=False):
        self.efficient_eos = efficient_eos

    def encode_multiturn(self, tokenizer, messages, system=None, tools=None):
        pairs = []
        for i in range(0, len(messages), 2):
            prompt = [1] + [ord(c) for c in messages[i].content] + [2]
            if i == 0 and system:
                prompt = [5] + [ord(c) for c in system] + prompt
            if self.efficient_eos and i > 0:
                prompt = [EOS] + prompt
            response = [ord(c) for c in messages[i + 1].content] + ([] if self.efficient_eos else [EOS])
            pairs.append((prompt, response))
        return pairs


def conv(*texts, system=""):
    roles = ["user", "assistant"] * len(texts)
    return Conversation(tuple(Message(r, t) for r, t in zip(roles, texts)), system=system, source="t row 1")


def args(**kw):
    return DataArguments(**{"cutoff_len": 1024, **kw})


a, b, c, d, e, f = (ord(ch) for ch in "abcdef")


# ------------------------------------------------------------------------------------ infer_seqlen
@pytest.mark.parametrize("lengths, expected", [
    ((3000, 2000, 1000), (600, 400)),
    ((1000, 100, 1000), (900, 100)),
    ((100, 1000, 1000), (100, 900)),
    ((10, 20, 1000), (10, 20)),
    ((600, 600, 1000), (500, 500)),
    ((10, 1, 2), (2, 0)),
])
def test_infer_seqlen(lengths, expected):
    assert infer_seqlen(*lengths) == expected


# ------------------------------------------------------------------------------------ sft labels
def test_single_turn_masks_prompt():
    out = encode_sft(conv("ab", "cd"), FakeTemplate(), CharTokenizer(), args())
    assert out == {"input_ids": [1, a, b, 2, c, d, EOS], "labels": [X, X, X, X, c, d, EOS]}


def test_system_goes_into_first_prompt_and_default_system():
    out = encode_sft(conv("a", "b", system="e"), FakeTemplate(), CharTokenizer(), args())
    assert out["input_ids"][:3] == [5, e, 1] and out["labels"][:5] == [X] * 5
    out = encode_sft(conv("a", "b"), FakeTemplate(), CharTokenizer(), args(default_system="f"))
    assert out["input_ids"][:2] == [5, f]


def test_multi_turn_trains_every_response():
    out = encode_sft(conv("a", "b", "c", "d"), FakeTemplate(), CharTokenizer(), args())
    assert out["input_ids"] == [1, a, 2, b, EOS, 1, c, 2, d, EOS]
    assert out["labels"] == [X, X, X, b, EOS, X, X, X, d, EOS]


def test_train_on_prompt_trains_everything():
    out = encode_sft(conv("a", "b", "c", "d"), FakeTemplate(), CharTokenizer(), args(train_on_prompt=True))
    assert out["labels"] == out["input_ids"]


def test_mask_history_trains_last_turn_only():
    out = encode_sft(conv("a", "b", "c", "d"), FakeTemplate(), CharTokenizer(), args(mask_history=True))
    assert out["input_ids"] == [1, a, 2, b, EOS, 1, c, 2, d, EOS]
    assert out["labels"] == [X, X, X, X, X, X, X, X, d, EOS]


def test_truncation_keep_prompt_budgets_turns_in_order():
    # turn 1 (4 + 2 tokens) fits in 9; turn 2 (4 + 2) gets the remaining 3: infer_seqlen(4, 2, 3) = (2, 1)
    result = encode_sft_with_info(conv("ab", "c", "de", "f"), FakeTemplate(), CharTokenizer(), args(cutoff_len=9))
    assert result.input_ids == [1, a, b, 2, c, EOS, 1, d, f]
    assert result.labels == [X, X, X, X, c, EOS, X, X, f]
    assert (result.truncated, result.full_length, result.dropped) == (True, 12, None)


def test_truncation_with_mask_history_keeps_the_last_turn():
    # reversed: the last turn gets the budget first, the first turn keeps only 2 prompt tokens
    result = encode_sft_with_info(conv("ab", "c", "de", "f"), FakeTemplate(), CharTokenizer(),
                                  args(cutoff_len=8, mask_history=True))
    assert result.input_ids == [1, a, 1, d, e, 2, f, EOS]
    assert result.labels == [X, X, X, X, X, X, f, EOS]
    assert result.truncated


def test_truncation_drop_drops_long_samples_only():
    long = encode_sft_with_info(conv("ab", "c", "de", "f"), FakeTemplate(), CharTokenizer(),
                                args(cutoff_len=9, truncation="drop"))
    assert long.dropped == "longer than cutoff_len (9)" and long.full_length == 12
    assert encode_sft(conv("ab", "c", "de", "f"), FakeTemplate(), CharTokenizer(),
                      args(cutoff_len=9, truncation="drop")) is None
    fits = encode_sft_with_info(conv("ab", "c"), FakeTemplate(), CharTokenizer(), args(cutoff_len=6, truncation="drop"))
    assert (fits.dropped, fits.truncated, len(fits.input_ids)) == (None, False, 6)


def test_no_trained_tokens_left_is_dropped():
    result = encode_sft_with_info(conv("abcdefghij", "k"), FakeTemplate(), CharTokenizer(), args(cutoff_len=2))
    assert result.labels == [X, X]
    assert result.dropped == "no trained tokens left after truncation to cutoff_len"


@pytest.mark.parametrize("cutoff_len", [3, 7, 1024])
@pytest.mark.parametrize("settings", [{}, {"train_on_prompt": True}, {"mask_history": True}, {"efficient_eos": True},
                                      {"mask_history": True, "efficient_eos": True}], ids=str)
def test_the_counted_trained_tokens_are_the_labels_not_masked(settings, cutoff_len):
    """The encoder counts its masked labels as it writes them (no scan of the labels afterwards); the count must be the
    scan's, also after truncation and for every masking rule. The token table's lists are never changed."""
    template = FakeTemplate(efficient_eos=settings.get("efficient_eos", False))
    data = args(cutoff_len=cutoff_len, **{k: v for k, v in settings.items() if k != "efficient_eos"})
    sample = conv("abc", "de", "f", "abcd", system="s")
    result = encode_sft_with_info(sample, template, CharTokenizer(), data)
    assert result.trained_tokens == len(result.labels) - result.labels.count(X)
    assert (result.dropped is not None) == (result.trained_tokens == 0)
    shared = [[1, 2], [3]]  # the same lists a batch's token table hands to every row with these texts
    assert assemble_sft([(shared[0], shared[1]), (shared[0], shared[1])], template, CharTokenizer(), data).labels
    assert shared == [[1, 2], [3]]


def test_missing_response_is_dropped():
    one = Conversation((Message("user", "q"),))
    assert encode_sft_with_info(one, FakeTemplate(), CharTokenizer(), args()).dropped == "no assistant response to train on"


def test_efficient_eos_labels():
    out = encode_sft(conv("a", "b", "c", "d"), FakeTemplate(efficient_eos=True), CharTokenizer(), args())
    assert out["input_ids"] == [1, a, 2, b, EOS, 1, c, 2, d, EOS]
    # the eos that opens turn 2's prompt is learned there; a final eos is appended and learned
    assert out["labels"] == [X, X, X, b, EOS, X, X, X, d, EOS]


def test_real_chatml_template(tiny_tokenizer):
    templates = importlib.import_module("tuneforge.data.templates")
    template = templates.get_template("chatml", tiny_tokenizer)
    out = encode_sft(conv("Hello", "I am an AI assistant."), template, tiny_tokenizer, args())
    text = tiny_tokenizer.decode(out["input_ids"])
    assert text == ("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nI am an AI assistant.<|im_end|>\n")
    trained = tiny_tokenizer.decode([t for t, l in zip(out["input_ids"], out["labels"]) if l != X])
    assert trained.startswith("I am an AI assistant.<|im_end|>")
    first = out["labels"].index(next(l for l in out["labels"] if l != X))
    assert tiny_tokenizer.decode(out["input_ids"][:first]) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------------------------ pt
def test_pt_concatenates_with_eos_and_keeps_tail(tiny_tokenizer):
    texts = ["Hello, who are you?", "The quick brown fox jumps over the lazy dog."]
    out = encode_pt(texts, tiny_tokenizer, DataArguments(cutoff_len=8))
    stream = []
    for text in texts:
        stream += tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert sum(out["input_ids"], []) == stream
    assert all(len(block) == 8 for block in out["input_ids"][:-1])
    assert 0 < len(out["input_ids"][-1]) <= 8 and len(stream) % 8 == len(out["input_ids"][-1]) % 8
    assert out["labels"] == out["input_ids"]


def test_pack_blocks_tail_and_no_packing():
    assert pack_blocks([[1, 2, 3], [4, 5]], 2) == [[1, 2], [3, 4], [5]]
    assert pack_blocks([[1, 2, 3], [4, 5]], 2, packing=False) == [[1, 2], [4, 5]]


def test_pt_blocks_a_batch_at_a_time_are_the_blocks_of_all_documents():
    """Stage pt in bounded memory: documents fed in batches give exactly `pt_blocks` of them all."""
    import random

    from tuneforge.config.args import DataArguments
    from tuneforge.data.stage_encode import pt_block_chunks, pt_blocks

    rng = random.Random(0)
    documents = [[rng.randrange(100) for _ in range(rng.randrange(1, 30))] for _ in range(50)]
    for packing in (True, False):
        data = DataArguments(cutoff_len=16, packing=packing)
        whole = pt_blocks(documents, data)
        for batch in (1, 3, 7, 50):
            chunks = list(pt_block_chunks((documents[i:i + batch] for i in range(0, 50, batch)), data))
            assert {key: [b for chunk in chunks for b in chunk[key]] for key in whole} == whole


THOUGHTS = ("Q1", "<think>\nfirst thought\n</think>\n\nA1", "Q2", "<think>\nsecond thought\n</think>\n\nA2", "Q3", "A3")


@pytest.mark.parametrize("preserve_thinking, kept", [(None, []), (False, []), (True, ["first", "second"])])
def test_mask_history_drops_history_thoughts_unless_preserve_thinking(tiny_tokenizer, preserve_thinking, kept):
    """LF: with a reasoning template and `mask_history`, the history turns lose their thoughts and only the trained
    last turn gets its (empty) one, unless `preserve_thinking` (ids checked against LF 0.9.5's encode_multiturn)."""
    from tuneforge.data.templates import template_for

    data = args(template="qwen3", mask_history=True, preserve_thinking=preserve_thinking)
    result = encode_sft_with_info(conv(*THOUGHTS), template_for(data, tiny_tokenizer), tiny_tokenizer, data)
    text = tiny_tokenizer.decode(result.input_ids)
    assert [word for word in ("first", "second") if f"{word} thought" in text] == kept
    assert text.endswith("<|im_start|>user\nQ3<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA3<|im_end|>\n")
    trained = tiny_tokenizer.decode([t for t, label in zip(result.input_ids, result.labels) if label != X])
    assert trained == "<think>\n\n</think>\n\nA3<|im_end|>\n"  # the last turn only (mask_history)


def test_without_mask_history_every_thought_stays(tiny_tokenizer):
    from tuneforge.data.templates import template_for

    data = args(template="qwen3")
    result = encode_sft_with_info(conv(*THOUGHTS), template_for(data, tiny_tokenizer), tiny_tokenizer, data)
    assert "first thought" in tiny_tokenizer.decode(result.input_ids)


def test_preserve_thinking_with_the_models_own_template_is_refused(tiny_tokenizer):
    from tuneforge.data.templates import template_for
    from tuneforge.errors import NotSupportedError

    with pytest.raises(NotSupportedError, match="with `template: auto` the model's own chat template decides"):
        template_for(args(template="auto", preserve_thinking=True), tiny_tokenizer)
    with pytest.raises(NotSupportedError, match="template 'chatml' is not one, so the key would do nothing"):
        template_for(args(template="chatml", preserve_thinking=True), tiny_tokenizer)
