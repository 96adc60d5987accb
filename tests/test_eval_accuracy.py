"""`compute_accuracy`: eval_accuracy = LLaMA-Factory's ComputeAccuracy (per sample, the share of label tokens
the argmax of the logits predicts; mean over samples), from the chunked evaluation pass."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.data.collate import PackedCollator, PaddedCollator
from tuneforge.train.trainer import TuneforgeTrainer

from test_trainer import TEXTS  # the same short texts


@pytest.fixture(scope="module")
def model_and_rows(tiny_llama_dir, tiny_tokenizer):
    """Rows whose labels the tiny model gets right at exactly `i` positions of sample i (the model's own argmax
    for those, a wrong token for the others), so the expected accuracy is known by construction."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    rows, expected = [], []
    for i, text in enumerate(TEXTS):
        ids = tiny_tokenizer(text)["input_ids"]
        with torch.no_grad():
            pred = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()  # pred[t] predicts ids[t + 1]
        prompt = 1 + i % 3
        labels = [-100] * prompt + [pred[t - 1] if t - prompt < i else (pred[t - 1] + 1) % vocab
                                    for t in range(prompt, len(ids))]
        rows.append({"input_ids": ids, "labels": labels})
        expected.append(i / (len(ids) - prompt))
    return model, Dataset.from_list(rows), sum(expected) / len(expected)


def hand_accuracy(model, rows) -> float:
    """LLaMA-Factory's ComputeAccuracy with the plain forward, one sample at a time."""
    scores = []
    for row in rows:
        with torch.no_grad():
            pred = model(torch.tensor([row["input_ids"]])).logits[0].argmax(-1)[:-1]
        label = torch.tensor(row["labels"])[1:]
        mask = label != -100
        scores.append((pred[mask] == label[mask]).float().mean().item())
    return sum(scores) / len(scores)


def _trainer(model, tmp_path, collator, **kwargs):
    from transformers import Seq2SeqTrainingArguments

    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                    per_device_eval_batch_size=2, disable_tqdm=True)
    return TuneforgeTrainer(model=model, args=args, data_collator=collator, **kwargs)


@pytest.mark.parametrize("collator", [PackedCollator(), PaddedCollator(pad_token_id=0)], ids=["packed", "padded"])
def test_eval_accuracy_equals_hand_computation(model_and_rows, tmp_path, collator):
    model, rows, expected = model_and_rows
    assert hand_accuracy(model, rows) == pytest.approx(expected, abs=1e-6) and expected > 0.05
    trainer = _trainer(model, tmp_path, collator, compute_accuracy=True, loss_chunk_size=5)  # several chunks
    metrics = trainer.evaluate(rows)
    assert metrics["eval_accuracy"] == pytest.approx(expected, abs=1e-6)
    plain = _trainer(model, tmp_path, collator).evaluate(rows)
    assert "eval_accuracy" not in plain
    assert metrics["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)  # same loss as without accuracy


def test_eval_accuracy_on_the_full_logits_path(model_and_rows, tmp_path, monkeypatch):
    from tuneforge.train import trainer as trainer_module

    model, rows, expected = model_and_rows
    monkeypatch.setattr(trainer_module, "resolve_lm_parts", lambda model, inputs=None: (None, "test: no chunked path"))
    metrics = _trainer(model, tmp_path, PackedCollator(), compute_accuracy=True).evaluate(rows)
    assert metrics["eval_accuracy"] == pytest.approx(expected, abs=1e-6)


def test_sft_recipe_reports_eval_accuracy(tiny_llama_dir, tmp_path, monkeypatch):
    from tuneforge.config.parser import load_config_dict
    from tuneforge.train.sft import run_sft

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.json").write_text(json.dumps([{"instruction": t[:12], "output": t[12:]} for t in TEXTS]))
    (data / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    out = tmp_path / "out"
    cfg = load_config_dict({
        "model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "do_eval": True,
        "finetuning_type": "lora", "dataset": "rows", "eval_dataset": "rows", "dataset_dir": str(data),
        "output_dir": str(out), "report_to": "none", "max_steps": 1, "per_device_train_batch_size": 2,
        "compute_accuracy": True, "save_strategy": "no", "cutoff_len": 64,
    })
    metrics = run_sft(cfg)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in r for r in records)


def test_eval_through_a_ddp_wrapper_stays_label_only(model_and_rows, tmp_path, one_process_ddp):
    """A wrapped model (DDP here; DeepSpeed and FSDP in evaluation) is evaluated with the chunked label-only pass run
    as the wrapper's forward: the same loss and accuracy, the model's own full-logits forward never called."""
    model, rows, expected = model_and_rows
    trainer = _trainer(model, tmp_path, PackedCollator(), compute_accuracy=True, loss_chunk_size=5)
    inputs = PackedCollator()([rows[i] for i in range(len(rows))])
    results = []
    for call in (model, one_process_ddp(model)):
        trainer._accuracy_sum = [0.0, 0]
        with torch.no_grad():
            loss = trainer._loss_and_accuracy(call, inputs, None)
        results.append((float(loss), trainer._accuracy_sum[0] / trainer._accuracy_sum[1]))
    assert results[1] == pytest.approx(results[0], rel=1e-6)
    assert results[0][1] == pytest.approx(expected, abs=1e-6)
