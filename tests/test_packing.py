"""sft `packing: true` / `neat_packing: true`: LLaMA-Factory's bin-packing, row for row, and its attention rules.

The oracle below is LF's code (src/llamafactory/data/processor/processor_utils.py `greedy_knapsack`,
processor/supervised.py `PackedSupervisedDatasetProcessor.preprocess_dataset` for token ids, collator.py
`prepare_4d_attention_mask`), copied with the multimodal parts left out.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections import Counter, defaultdict

import pytest

from tuneforge.config.args import DataArguments
import torch

from conftest import IDENTITY_ROWS, write_workspace, data_run_config
from tuneforge.data import packing
from tuneforge.data.collate import PackedCollator
from tuneforge.data.collate_bins import BinCollator, sft_collator
from tuneforge.data.packing import batch_ranges, greedy_knapsack, pack_batch, packing_mode

X = -100


# ---- LF's code, the oracle ----------------------------------------------------------------------------
def lf_search_for_fit(numbers, capacity):
    index = bisect.bisect(numbers, capacity)
    return -1 if index == 0 else (index - 1)


def lf_greedy_knapsack(numbers, capacity):
    numbers.sort()
    knapsacks = []
    while numbers:
        current_knapsack = []
        remaining_capacity = capacity
        while True:
            index = lf_search_for_fit(numbers, remaining_capacity)
            if index == -1:
                break
            remaining_capacity -= numbers[index]
            current_knapsack.append(numbers.pop(index))
        knapsacks.append(current_knapsack)
    return knapsacks


def lf_packed_batch(batch_input_ids, batch_labels, cutoff_len, pad_token_id, neat_packing):
    """LF's preprocess_dataset for one batch; `cutoff_len` is LF's already lowered value (YAML - 1)."""
    lengths, length2indexes, kept_ids, kept_labels, valid_num = [], defaultdict(list), [], [], 0
    for input_ids, labels in zip(batch_input_ids, batch_labels):
        if len(input_ids) > cutoff_len:
            continue
        lengths.append(len(input_ids))
        length2indexes[len(input_ids)].append(valid_num)
        kept_ids.append(input_ids)
        kept_labels.append(labels)
        valid_num += 1
    rows = []
    for knapsack in lf_greedy_knapsack(lengths, cutoff_len):
        packed_input_ids, packed_attention_masks, packed_position_ids, packed_labels = [], [], [], []
        for i, length in enumerate(knapsack):
            index = length2indexes[length].pop()
            packed_input_ids += kept_ids[index]
            packed_position_ids += list(range(len(kept_ids[index])))
            packed_labels += kept_labels[index]
            packed_attention_masks += [i + 1 if neat_packing else 1] * len(kept_ids[index])
        if len(packed_input_ids) < cutoff_len + 1:
            pad_length = cutoff_len - len(packed_input_ids) + 1
            packed_input_ids += [pad_token_id] * pad_length
            packed_position_ids += [0] * pad_length
            packed_labels += [X] * pad_length
            packed_attention_masks += [0 if neat_packing else 1] * pad_length
        rows.append({"input_ids": packed_input_ids, "attention_mask": packed_attention_masks,
                     "position_ids": packed_position_ids, "labels": packed_labels})
    return rows


def lf_prepare_4d_attention_mask(attention_mask_with_indices, dtype):
    _, seq_len = attention_mask_with_indices.size()
    min_dtype = torch.finfo(dtype).min
    zero_tensor = torch.tensor(0, dtype=dtype)
    non_padding_mask = (attention_mask_with_indices != 0).unsqueeze(1).unsqueeze(2)
    indices = attention_mask_with_indices.unsqueeze(1).unsqueeze(2)
    indices_t = attention_mask_with_indices.unsqueeze(1).unsqueeze(3)
    tril_mask = torch.tril(torch.ones((seq_len, seq_len), dtype=torch.bool))
    attention_mask_4d = (indices == indices_t) & non_padding_mask & tril_mask
    return torch.where(attention_mask_4d, zero_tensor, min_dtype)


def random_samples(n, max_len, vocab=300, seed=0, prompt_first=True):
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        length = rng.randint(1, max_len)
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        prompt = rng.randint(1 if prompt_first else 0, length)
        samples.append((ids, [X] * prompt + ids[prompt:]))
    return samples


# ---- the packing itself -------------------------------------------------------------------------------
def test_greedy_knapsack_worked_example_and_lf_equality():
    # capacity 10 (cutoff_len 11): 6+4 | 5+4+1 | 3+2 -> 3 rows for 7 samples
    assert greedy_knapsack([6, 5, 4, 4, 3, 2, 1], 10) == [[6, 4], [5, 4, 1], [3, 2]]
    rng = random.Random(3)
    for _ in range(50):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 300))]
        assert greedy_knapsack(lengths, 64) == lf_greedy_knapsack(list(lengths), 64)


@pytest.mark.parametrize("neat", [False, True])
def test_pack_batch_is_lf_row_for_row(neat):
    samples = random_samples(400, 40, seed=1) + [([7] * 5, [X] * 5)] * 30  # many equal lengths: LF's pop order
    ids, labels = [s[0] for s in samples], [s[1] for s in samples]
    ours = pack_batch(ids, labels, 63)
    lf = lf_packed_batch(ids, labels, 63, pad_token_id=0, neat_packing=neat)
    assert len(ours) == len(lf)
    for (row_ids, row_labels, positions), lf_row in zip(ours, lf):
        n = len(row_ids)
        assert n <= 63 and len(lf_row["input_ids"]) == 64  # LF pads every row to cutoff_len; we do not
        assert (row_ids, row_labels, positions) == (lf_row["input_ids"][:n], lf_row["labels"][:n], lf_row["position_ids"][:n])
        assert set(lf_row["labels"][n:]) == {X}


def test_batch_ranges_follow_datasets_map():
    assert batch_ranges(2500, 1000, None) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert batch_ranges(2500, 1000, 1) == [(0, 1000), (1000, 2000), (2000, 2500)]
    # num_proc=2: two contiguous shards of 1250, each cut into batches of 1000
    assert batch_ranges(2500, 1000, 2) == [(0, 1000), (1000, 1250), (1250, 2250), (2250, 2500)]
    assert batch_ranges(3, 1000, 8) == [(0, 1), (1, 2), (2, 3)]  # datasets: num_proc <= rows
    assert batch_ranges(0, 1000, None) == []


def test_modes_and_collators():
    ns = lambda **kw: DataArguments(**kw)  # noqa: E731
    assert packing_mode(ns()) == "per_batch" and isinstance(sft_collator(ns(), 0), PackedCollator)
    assert packing_mode(ns(packing=False)) == "padded"
    assert packing_mode(ns(packing=True)) == "bins" and not sft_collator(ns(packing=True), 0).neat
    assert packing_mode(ns(neat_packing=True)) == "bins" and sft_collator(ns(neat_packing=True), 0).neat
    assert packing.encoding_args(ns(packing=True, cutoff_len=512)).cutoff_len == 511
    assert packing.encoding_args(ns(cutoff_len=512)).cutoff_len == 512


ROW_A = {"input_ids": [11, 12, 13, 21, 22], "labels": [X, 12, 13, 21, 22], "position_ids": [0, 1, 2, 0, 1]}
ROW_B = {"input_ids": [31, 32, 33], "labels": [X, X, 33], "position_ids": [0, 1, 2]}


def test_bin_collator_layouts():
    neat = BinCollator(0, neat=True)([ROW_A, ROW_B])
    assert set(neat) == {"input_ids", "labels", "position_ids"}  # one padding-free row, no attention_mask
    assert neat["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31, 32, 33]]
    assert neat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert neat["labels"].tolist() == [[X, 12, 13, X, 22, X, X, 33]]  # a sample's first token is no target

    plain = BinCollator(0, neat=False)([ROW_A, ROW_B])
    assert plain["input_ids"].tolist() == [[11, 12, 13, 21, 22], [31, 32, 33, 0, 0]]
    assert plain["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert plain["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 0]]
    assert plain["labels"].tolist() == [[X, 12, 13, 21, 22], [X, X, 33, X, X]]  # LF's labels, unchanged


# ---- attention: neat = samples alone, plain = one causal sequence (both = LF's rows) --------------------
def _model(model_dir, attn):
    from transformers import AutoModelForCausalLM

    from tuneforge.model.attention import register_packed_sdpa

    attn = register_packed_sdpa() if attn == "packed" else attn
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=torch.float32).eval()


def _summed_loss(model, batch):
    from tuneforge.model.lm_parts import resolve_lm_parts
    from tuneforge.train.loss import chunked_causal_lm_loss

    parts, reason = resolve_lm_parts(model, batch)
    assert parts is not None, reason
    with torch.no_grad():
        return chunked_causal_lm_loss(parts, batch, chunk_size=16, num_items_in_batch=1)


def _lf_loss(model, lf_rows, four_d: bool):
    with torch.no_grad():
        total = 0.0
        for row in lf_rows:
            tensors = {k: torch.tensor([v]) for k, v in row.items()}
            mask = lf_prepare_4d_attention_mask(tensors["attention_mask"], torch.float32) if four_d else tensors["attention_mask"]
            logits = model(input_ids=tensors["input_ids"], attention_mask=mask, position_ids=tensors["position_ids"],
                           use_cache=False).logits[0]
            total = total + torch.nn.functional.cross_entropy(logits[:-1], tensors["labels"][0, 1:], ignore_index=X,
                                                              reduction="sum")
        return total


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_neat_rows_train_like_samples_alone_and_like_lf(request, model_fixture):
    model_dir = request.getfixturevalue(model_fixture)
    model = _model(model_dir, "packed")  # tuneforge's default attention
    samples = random_samples(12, 14, vocab=model.config.vocab_size, seed=5)
    rows = [dict(zip(("input_ids", "labels", "position_ids"), r)) for r in pack_batch(*zip(*samples), 31)]
    assert 1 < len(rows) < len(samples)
    packed = _summed_loss(model, BinCollator(0, neat=True)(rows))
    with torch.no_grad():
        alone = sum(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), num_items_in_batch=1).loss
                    for ids, labels in samples)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
    lf_rows = lf_packed_batch(*zip(*samples), 31, pad_token_id=0, neat_packing=True)
    torch.testing.assert_close(packed, _lf_loss(_model(model_dir, "eager"), lf_rows, four_d=True), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("attn", ["packed", "sdpa", "eager"])
def test_plain_packing_attends_across_samples_like_lf(tiny_llama_dir, attn):
    model = _model(tiny_llama_dir, attn)
    samples = random_samples(12, 14, vocab=model.config.vocab_size, seed=5)
    rows = [dict(zip(("input_ids", "labels", "position_ids"), r)) for r in pack_batch(*zip(*samples), 31)]
    collator = BinCollator(0, neat=False)
    plain = sum(_summed_loss(model, collator([row])) for row in rows)  # batch size 1: one unpadded row
    batched = _summed_loss(model, collator(rows))  # right-padded rows
    lf = _lf_loss(_model(tiny_llama_dir, "eager"), lf_packed_batch(*zip(*samples), 31, 0, False), four_d=False)
    torch.testing.assert_close(plain, lf, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(batched, lf, atol=1e-4, rtol=1e-5)
    neat = _summed_loss(model, BinCollator(0, neat=True)(rows))
    assert abs(float(plain) - float(neat)) > 1e-3  # later samples see earlier ones: another loss


# ---- through the pipeline and a training run -----------------------------------------------------------
NUMS = [{"instruction": f"item {i} " + "more words here " * (i % 6), "output": "answer " * (1 + i % 9)}
        for i in range(45)]


@pytest.fixture
def nums_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "nums.json").write_text(json.dumps(NUMS))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"nums": {"file_name": "nums.json"}}))
    return tmp_path


def _cfg(dataset="nums", **data):
    return data_run_config(dataset, **{"cutoff_len": 64, **data})


def _lf_row_count(samples, capacity, ranges):
    return sum(len(lf_packed_batch([s[0] for s in samples[a:b]], [s[1] for s in samples[a:b]], capacity, 0, False))
               for a, b in ranges)


@pytest.mark.parametrize("extra", [{}, {"preprocessing_batch_size": 10}, {"preprocessing_batch_size": 10,
                                                                          "preprocessing_num_workers": 2},
                                   {"neat_packing": True, "packing": None}])
def test_pipeline_packs_every_sample_once_into_lf_rows(nums_dir, tiny_tokenizer, extra):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.templates import get_template

    template = get_template("chatml", tiny_tokenizer)
    # LF encodes with cutoff_len - 1 when packing: the same samples as an unpacked run at 63
    unpacked = build_datasets(_cfg(cutoff_len=63), tiny_tokenizer, template).train
    samples = list(zip(unpacked["input_ids"], unpacked["labels"]))
    assert any(len(ids) == 63 for ids, _ in samples)  # some samples were cut to the lowered cutoff
    config = {"packing": True, **extra}
    bundle = build_datasets(_cfg(**config), tiny_tokenizer, template)
    train = bundle.train
    data = _cfg(**config).data
    expected = _lf_row_count(samples, 63, batch_ranges(len(samples), data.preprocessing_batch_size,
                                                       data.preprocessing_num_workers))
    assert len(train) == bundle.report.train_samples == expected < len(samples)
    # every sample exactly once, labels intact: cut the rows back at the position restarts
    pieces = []
    for ids, labels, positions in zip(train["input_ids"], train["labels"], train["position_ids"]):
        assert len(ids) <= 63 and positions[0] == 0
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        pieces += [(tuple(ids[a:b]), tuple(labels[a:b])) for a, b in zip(starts, starts[1:])]
    assert Counter(pieces) == Counter((tuple(i), tuple(l)) for i, l in samples)
    note = [n for n in bundle.report.notes if "packing:" in n][0]
    assert f"{len(samples)} sample(s) packed into {expected} row(s) of at most 63 tokens" in note


def test_val_split_happens_before_packing(nums_dir, tiny_tokenizer):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.templates import get_template

    template = get_template("chatml", tiny_tokenizer)
    bundle = build_datasets(_cfg(packing=True, val_size=10), tiny_tokenizer, template)
    samples = lambda ds: sum(list(p).count(0) for p in ds["position_ids"])  # noqa: E731
    assert samples(bundle.train) == len(NUMS) - 10 and samples(bundle.eval) == 10
    assert any(n.startswith("eval: packing:") for n in bundle.report.notes)


@pytest.mark.parametrize("neat", [False, True])
def test_training_run_takes_lf_step_count(tmp_path, tiny_llama_dir, tiny_tokenizer, monkeypatch, neat):
    from tuneforge.cli.main import main
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.templates import get_template

    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 128, "output_dir": "out",
              "per_device_train_batch_size": 2, "num_train_epochs": 2, "learning_rate": 1e-3, "report_to": "none",
              "save_strategy": "no", "logging_steps": 1, "packing": True, "neat_packing": neat}
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")
    assert main(["train", "train.yaml"]) == 0
    unpacked = build_datasets(_cfg(dataset="tiny", cutoff_len=127), tiny_tokenizer, get_template("chatml", tiny_tokenizer))
    samples = list(zip(unpacked.train["input_ids"], unpacked.train["labels"]))
    rows = _lf_row_count(samples, 127, [(0, len(samples))])
    assert rows < len(samples) == len(IDENTITY_ROWS)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 * math.ceil(rows / 2)  # LF: ceil(rows / batch) steps per epoch
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["train_samples"] == rows


@pytest.mark.parametrize("overrides, message", [
    (["stage=dpo", "neat_packing=true"], "`neat_packing` packs sft samples; stage is `dpo`"),  # LF refuses it too
    (["preprocessing_num_workers=-1"], "`preprocessing_num_workers` must be >= 0"),
    (["preprocessing_batch_size=0"], "`preprocessing_batch_size` must be at least 1"),
])
def test_config_refuses_what_cannot_be_honoured(tmp_path, overrides, message):
    from tuneforge.config.parser import load_config
    from tuneforge.errors import ConfigError

    path = tmp_path / "cfg.yaml"
    path.write_text("model_name_or_path: m\nstage: sft\ndataset: d\noutput_dir: out\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(path), overrides)
    assert load_config(str(path), ["neat_packing=true", "preprocessing_num_workers=2"]).data.neat_packing is True


def test_packing_true_lowers_cutoff_len_by_one_for_every_stage_like_lf(nums_dir, tiny_tokenizer):
    """(sft: see test_pipeline_packs_every_sample_once_into_lf_rows) pt blocks too, as LF's DataArguments."""
    from tuneforge.data.pipeline import build_datasets

    blocks = lambda **kw: {len(b) for b in build_datasets(_cfg(cutoff_len=16, **kw), tiny_tokenizer, None, "pt").train["input_ids"]}  # noqa: E731
    assert max(blocks()) == 16 and max(blocks(packing=True)) == 15  # LF: DataArguments.cutoff_len -= 1
