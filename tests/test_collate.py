"""Collators: exact batch layout, and the proof that packing does not let samples see each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuneforge.data.collate import PackedCollator, PaddedCollator
from tuneforge.errors import DataError

SAMPLES = [
    {"input_ids": [11, 12, 13, 14, 15], "labels": [-100, -100, 13, 14, 15]},
    {"input_ids": [21, 22, 23], "labels": [21, 22, 23]},
    {"input_ids": [31, 32, 33, 34], "labels": [-100, 32, 33, 34]},
]


def test_packed_collator_layout():
    batch = PackedCollator()(SAMPLES)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34]]
    # first label of each sample is -100: nothing is predicted across a boundary
    assert batch["labels"].tolist() == [[-100, -100, 13, 14, 15, -100, 22, 23, -100, 32, 33, 34]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_packed_collator_flash_kwargs_and_tensor_inputs():
    features = [{k: torch.tensor(v) for k, v in s.items()} for s in SAMPLES]
    batch = PackedCollator(return_flash_attn_kwargs=True)(features)
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 8, 12]
    assert batch["cu_seq_lens_k"].tolist() == [0, 5, 8, 12]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 5


def test_packed_collator_without_labels_trains_every_token():
    batch = PackedCollator()([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5]]


def test_padded_collator_layout():
    batch = PaddedCollator(pad_token_id=0)(SAMPLES)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 14, 15], [21, 22, 23, 0, 0], [31, 32, 33, 34, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [
        [-100, -100, 13, 14, 15],
        [21, 22, 23, -100, -100],
        [-100, 32, 33, 34, -100],
    ]
    batch8 = PaddedCollator(pad_token_id=7, pad_to_multiple_of=8)(SAMPLES)
    assert batch8["input_ids"].shape == (3, 8)
    assert batch8["input_ids"][1].tolist() == [21, 22, 23, 7, 7, 7, 7, 7]


@pytest.mark.parametrize(
    "features, message",
    [
        ([], "empty batch"),
        ([{"labels": [1]}], "Batch sample 0 has no 'input_ids'"),
        ([{"input_ids": [1, 2], "labels": [1]}], "Batch sample 0: 'labels' has 1 entries but 'input_ids' has 2"),
        ([{"input_ids": [1]}, {"input_ids": []}], "Batch sample 1 has empty 'input_ids'"),
    ],
)
def test_collators_reject_bad_samples(features, message):
    for collator in (PackedCollator(), PaddedCollator(pad_token_id=0)):
        with pytest.raises(DataError, match=message):
            collator(features)


def test_padded_collator_needs_pad_token():
    with pytest.raises(DataError, match="pad token"):
        PaddedCollator(pad_token_id=None)


# ---- packing equivalence ------------------------------------------------------------------------
def _random_samples(vocab_size: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    samples = []
    for length, prompt in ((9, 4), (5, 0), (1, 0), (12, 6)):
        ids = torch.randint(10, vocab_size, (length,), generator=gen).tolist()
        samples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return samples


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager", "packed_sdpa"])
@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_packed_forward_equals_samples_alone(request, model_fixture, attn):
    from transformers import AutoModelForCausalLM

    from tuneforge.model.attention import register_packed_sdpa

    if attn == "packed_sdpa":
        attn = register_packed_sdpa()
    model_dir = request.getfixturevalue(model_fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    assert model.config.use_cache  # the default; the packed forward must still not leak
    samples = _random_samples(model.config.vocab_size)
    batch = PackedCollator()(samples)
    with torch.no_grad():
        packed_logits = model(**batch, use_cache=False).logits[0]
        start = 0
        for sample in samples:
            n = len(sample["input_ids"])
            alone = model(input_ids=torch.tensor([sample["input_ids"]])).logits[0]
            torch.testing.assert_close(packed_logits[start : start + n], alone, atol=1e-5, rtol=1e-5)
            packed_loss = _summed_loss(packed_logits[start : start + n], batch["labels"][0, start : start + n])
            alone_loss = _summed_loss(alone, torch.tensor(sample["labels"]))
            torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-6)
            start += n


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_packed_chunked_loss_equals_samples_alone(request, model_fixture):
    """The training path (chunked loss on a packed batch) == loss of each sample run alone."""
    from transformers import AutoModelForCausalLM

    from tuneforge.model.lm_parts import resolve_lm_parts

    from tuneforge.train.loss import chunked_causal_lm_loss

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(model_fixture), dtype=torch.float32)
    samples = _random_samples(model.config.vocab_size)
    batch = PackedCollator(return_flash_attn_kwargs=True)(samples)  # extra keys are ignored by SDPA
    parts, reason = resolve_lm_parts(model, batch)
    assert parts is not None, reason
    n_label = int((batch["labels"][0, 1:] != -100).sum())
    packed_sum = chunked_causal_lm_loss(parts, batch, chunk_size=4, num_items_in_batch=1)
    with torch.no_grad():
        alone_sum = sum(
            model(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]]), num_items_in_batch=1).loss
            for s in samples
        )
    torch.testing.assert_close(packed_sum.detach(), alone_sum, atol=1e-5, rtol=1e-6)
    assert n_label == sum(sum(1 for x in s["labels"][1:] if x != -100) for s in samples)
