"""Stage rm: the value-head model (packed scoring, save/load), training on a separable toy set, scoring."""

from __future__ import annotations

import json

import pytest
import torch
from pref_helpers import BAD, GOOD, log_records, make_cfg, workdir  # noqa: F401 (workdir is a fixture)

from tuneforge.errors import DataError, ModelError
from tuneforge.model.value_head import VALUE_HEAD_FILE, ValueHeadModel, last_token_indices


def test_last_token_indices():
    ids = torch.zeros(1, 7, dtype=torch.long)
    rows, cols = last_token_indices(ids, position_ids=torch.tensor([[0, 1, 2, 0, 1, 0, 1]]))
    assert rows.tolist() == [0, 0, 0] and cols.tolist() == [2, 4, 6]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    rows, cols = last_token_indices(torch.zeros(2, 4, dtype=torch.long), attention_mask=mask)
    assert rows.tolist() == [0, 1] and cols.tolist() == [2, 3]


def test_packed_values_equal_padded_values_and_head_round_trip(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = ValueHeadModel(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)).eval()
    seqs = [[5, 9, 11, 30, 31], [7, 8, 50]]
    packed = torch.tensor([seqs[0] + seqs[1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    padded = torch.tensor([seqs[0], seqs[1] + [0, 0]])
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    with torch.no_grad():
        packed_scores = model.sequence_values(packed, position_ids=positions)
        padded_scores = model.sequence_values(padded, attention_mask=mask)
        alone = torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])
    torch.testing.assert_close(packed_scores, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded_scores, alone, rtol=1e-5, atol=1e-5)

    model.save_pretrained(str(tmp_path / "rm"))
    assert (tmp_path / "rm" / VALUE_HEAD_FILE).is_file() and (tmp_path / "rm" / "config.json").is_file()
    other = ValueHeadModel(AutoModelForCausalLM.from_pretrained(tmp_path / "rm", dtype=torch.float32)).eval()
    other.load_head(tmp_path / "rm")
    with torch.no_grad():
        torch.testing.assert_close(other.sequence_values(packed, position_ids=positions), packed_scores)
    with pytest.raises(ModelError, match=f"has no {VALUE_HEAD_FILE}: it is not a reward model"):
        other.load_head(tiny_llama_dir)


def test_rm_lora_run_learns_separable_pairs_and_scores(workdir, tiny_llama_dir, capsys):
    from tuneforge.infer.reward import RewardScorer, is_reward_model
    from tuneforge.train.tuner import run_train

    out = workdir / "rm"
    cfg = make_cfg(tiny_llama_dir, "rm", "pairs", out, max_steps=12, learning_rate=2e-2, val_size=4,
                   eval_strategy="steps", eval_steps=12, per_device_eval_batch_size=4, do_eval=True)
    metrics = run_train(cfg)
    records = log_records(out)
    first = records[0]
    assert {"accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(first)
    assert sum(r["loss"] for r in records[-3:]) / 3 < first["loss"] - 0.1
    assert metrics["eval_accuracy"] == 1.0  # held-out pairs: chosen scored above rejected (chance: 0.5)
    assert (out / VALUE_HEAD_FILE).is_file() and (out / "adapter_model.safetensors").is_file()

    # load it back for scoring (the path `tuneforge chat` uses for a reward model)
    chat_cfg = make_cfg(tiny_llama_dir, "rm", "pairs", out, adapter_name_or_path=str(out), do_train=False)
    assert is_reward_model(chat_cfg)
    scorer = RewardScorer.from_config(chat_cfg)
    good = scorer.score([{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": GOOD[0]}])
    bad = scorer.score([{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": BAD[0]}])
    assert good > bad

    # and through the command line: `tuneforge chat` on a reward model prints the score
    from tuneforge.cli.main import main

    base = [f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={out}", "template=chatml"]
    printed = []
    capsys.readouterr()  # drop what the training run printed
    for answer in (GOOD[0], BAD[0]):
        assert main(["chat", *base, "--prompt", "Who are you?", "--answer", answer]) == 0
        printed.append(float(capsys.readouterr().out.strip()))
    assert printed == pytest.approx([good, bad], abs=1e-4)
    batch = scorer.score_batch([[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": a}]
                                for a in (GOOD[0], BAD[0], GOOD[1])], batch_size=2)
    assert batch[:2] == pytest.approx([good, bad], abs=1e-4)
    with pytest.raises(DataError, match="ends with an assistant answer"):
        scorer.score([{"role": "user", "content": "Hi"}])


def test_rm_full_run_saves_weights_and_head(workdir, tiny_llama_dir):
    from tuneforge.model.value_head import load_value_head_model
    from tuneforge.train.tuner import run_train

    out = workdir / "full"
    run_train(make_cfg(tiny_llama_dir, "rm", "pairs", out, finetuning_type="full", learning_rate=1e-3, max_steps=3))
    assert (out / VALUE_HEAD_FILE).is_file() and (out / "model.safetensors").is_file()
    cfg = make_cfg(out, "rm", "pairs", workdir / "unused", finetuning_type="full", do_train=False)
    model = load_value_head_model(cfg.model, cfg.finetuning, is_trainable=False)
    from safetensors.torch import load_file

    saved = load_file(str(out / VALUE_HEAD_FILE))
    assert torch.equal(model.v_head.weight, saved["v_head.summary.weight"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


def test_rm_needs_ranking_data(workdir, tiny_llama_dir):
    from tuneforge.train.tuner import run_train

    with pytest.raises(DataError, match=r"dataset 'feedback' in .* is not a ranking dataset, but stage 'rm' needs"):
        run_train(make_cfg(tiny_llama_dir, "rm", "feedback", workdir / "o"))


def test_rm_do_predict_scores_pairs_after_training_and_alone(workdir, tiny_llama_dir):
    """LF's loss-only prediction (rm workflow): predict_loss / predict_accuracy + one {chosen, rejected} row per pair."""
    import math

    from tuneforge.train.tuner import run_train

    out = workdir / "rm"
    metrics = run_train(make_cfg(tiny_llama_dir, "rm", "pairs", out, max_steps=6, learning_rate=2e-2,
                                 eval_dataset="pairs", do_predict=True, per_device_eval_batch_size=5))
    assert (out / "adapter_model.safetensors").is_file() and (out / "train_results.json").is_file()
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(set(row) == {"chosen", "rejected"} for row in rows)
    results = json.loads((out / "predict_results.json").read_text())
    assert {"predict_loss", "predict_accuracy", "predict_runtime", "predict_samples_per_second"} <= set(results)
    # the loss is the mean ranking loss over the pairs (the rows are rounded to 2 decimals)
    by_rows = sum(-math.log(1 / (1 + math.exp(-(r["chosen"] - r["rejected"])))) for r in rows) / len(rows)
    assert results["predict_loss"] == pytest.approx(by_rows, abs=0.01)
    assert results["predict_accuracy"] == pytest.approx(sum(r["chosen"] > r["rejected"] for r in rows) / 12, abs=1 / 12)
    assert results["predict_accuracy"] > 0.5 and metrics["predict_loss"] == results["predict_loss"]
    all_results = json.loads((out / "all_results.json").read_text())
    assert "train_loss" in all_results and all_results["predict_loss"] == results["predict_loss"]

    # alone, with the trained reward model as adapter: the same scores
    alone = workdir / "predict"
    run_train(make_cfg(tiny_llama_dir, "rm", "pairs", alone, do_train=False, do_predict=True, eval_dataset="pairs",
                       adapter_name_or_path=str(out), per_device_eval_batch_size=3))
    again = json.loads((alone / "predict_results.json").read_text())
    assert again["predict_loss"] == pytest.approx(results["predict_loss"], abs=1e-4)
    assert [json.loads(line) for line in (alone / "generated_predictions.jsonl").read_text().splitlines()] == rows
