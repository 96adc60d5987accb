"""Stage kto: feedback encoding with the mismatched KL answers, the objective, and a short run."""

from __future__ import annotations

import pytest
import torch
from pref_helpers import kto_rows, log_records, make_cfg, separate_logps, workdir  # noqa: F401 (workdir is a fixture)

from tuneforge.errors import DataError
from tuneforge.train import pref_losses
from tuneforge.train.kto import KTOObjective
from tuneforge.train.preference import FeedbackPackedCollator


def test_feedback_samples_pair_each_prompt_with_the_previous_answer(workdir, tiny_llama_dir, tiny_tokenizer):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.templates import get_template

    cfg = make_cfg(tiny_llama_dir, "kto", "feedback", workdir / "o")
    template = get_template("chatml", tiny_tokenizer)
    bundle = build_datasets(cfg, tiny_tokenizer, template, stage="kto")
    rows = kto_rows()
    assert len(bundle.train) == len(rows) and bundle.train["kto_tag"] == [r["label"] for r in rows]
    for i in (0, 1, 5):
        sample = bundle.train[i]
        prompt = template.encode_prompt(tiny_tokenizer, [rows[i]["messages"][0]])
        answer = tiny_tokenizer(rows[i]["messages"][1]["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        kl = tiny_tokenizer(rows[i - 1]["messages"][1]["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert sample["input_ids"] == prompt + answer  # row 0's KL answer is the last row's
        assert sample["labels"] == [-100] * len(prompt) + answer
        assert sample["kl_input_ids"] == prompt + kl and sample["kl_labels"] == [-100] * len(prompt) + kl
    assert "kto samples: 6 desirable, 6 undesirable" in " ".join(bundle.report.notes)


def test_kto_objective_matches_the_loss_on_separate_forwards(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    features = [
        {"input_ids": [5, 9, 30, 31], "labels": [-100, -100, 30, 31], "kl_input_ids": [5, 9, 40],
         "kl_labels": [-100, -100, 40], "kto_tag": True},
        {"input_ids": [7, 40], "labels": [-100, 40], "kl_input_ids": [7, 30, 31], "kl_labels": [-100, 30, 31],
         "kto_tag": False},
        {"input_ids": [6, 8, 50], "labels": [-100, -100, 50], "kl_input_ids": [6, 8, 60, 61],
         "kl_labels": [-100, -100, 60, 61], "kto_tag": True},
    ]
    batch = FeedbackPackedCollator()(features)
    assert batch["kto_tags"].tolist() == [True, False, True]
    loss, metrics = KTOObjective(beta=0.2, desirable_weight=1.5, undesirable_weight=0.7, ref_model=reference).compute(policy, batch)

    def logps(model, key=""):
        return separate_logps(model, [(f[f"{key}input_ids"], f[f"{key}labels"]) for f in features])

    tags = torch.tensor([True, False, True])
    pol, ref = logps(policy), logps(reference)
    expected, _, _, kl = pref_losses.kto_loss(pol[tags], pol[~tags], logps(policy, "kl_"), ref[tags], ref[~tags],
                                              logps(reference, "kl_"), beta=0.2, desirable_weight=1.5,
                                              undesirable_weight=0.7)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert metrics["kl"] == pytest.approx(kl.item(), rel=1e-5, abs=1e-7)
    assert (metrics["count/chosen"], metrics["count/rejected"]) == (2, 1)


def test_kto_lora_run_lowers_loss_and_saves_adapter(workdir, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.train.tuner import run_train

    out = workdir / "kto"
    run_train(make_cfg(tiny_llama_dir, "kto", "feedback", out, max_steps=8, kto_chosen_weight=1.0,
                       kto_rejected_weight=1.0))
    records = log_records(out)
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # policy == reference: 1 - sigmoid(0)
    assert sum(r["loss"] for r in records[-3:]) / 3 < records[0]["loss"] - 0.005
    assert {"kl", "rewards/chosen", "rewards/rejected", "count/chosen"} <= set(records[0])
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(out))


def test_kto_needs_a_kto_tag_column(workdir, tiny_llama_dir):
    from tuneforge.train.tuner import run_train

    with pytest.raises(DataError, match=r"dataset 'plain' in .* has no `kto_tag` column, which stage 'kto' needs"):
        run_train(make_cfg(tiny_llama_dir, "kto", "plain", workdir / "o"))


def test_stage_metrics_weigh_each_sample_and_derive_the_margin():
    """kto's rewards are means over a varying number of chosen / rejected samples per micro-batch: the logged mean
    weighs each sample alike (TRL's sum / count), and the margin is chosen - rejected of those means."""
    from tuneforge.train.stage_metrics import StageMetrics

    metrics = StageMetrics()
    metrics.add("train", {"rewards/chosen": (1.0, 1), "rewards/rejected": (0.5, 3), "kl": 0.2})
    metrics.add("train", {"rewards/chosen": (4.0, 3), "kl": 0.4})  # no rejected sample in this micro-batch
    means = metrics.pop_means("train")
    assert means == pytest.approx({"rewards/chosen": 13 / 4, "rewards/rejected": 0.5, "kl": 0.3,
                                   "rewards/margins": 13 / 4 - 0.5})
    assert metrics.pop_means("train") == {} and metrics.pop_means("eval") == {}
