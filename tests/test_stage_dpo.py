"""Stage dpo: packed pairwise log-probs, the LoRA reference, every pref_loss, and short training runs."""

from __future__ import annotations

import importlib.util

import json
import math

import pytest
import torch
from pref_helpers import log_records, make_cfg, separate_logps, workdir  # noqa: F401 (workdir is a fixture)

from tuneforge.errors import ConfigError, DataError
from tuneforge.train import pref_losses
from tuneforge.train.dpo import DPOObjective
from tuneforge.train.preference import PairwisePackedCollator, sequence_logps

PAIRS = [  # (chosen ids, chosen labels, rejected ids, rejected labels): prompt tokens masked
    {"input_ids": [5, 9, 11, 30, 31, 2], "labels": [-100, -100, -100, 30, 31, 2],
     "rejected_input_ids": [5, 9, 11, 40, 2], "rejected_labels": [-100, -100, -100, 40, 2]},
    {"input_ids": [7, 8, 50, 51, 52, 53, 2], "labels": [-100, -100, 50, 51, 52, 53, 2],
     "rejected_input_ids": [7, 8, 60, 2], "rejected_labels": [-100, -100, 60, 2]},
]


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def _sequences(pairs):
    return ([(p["input_ids"], p["labels"]) for p in pairs] +
            [(p["rejected_input_ids"], p["rejected_labels"]) for p in pairs])


def test_packed_pairwise_forward_equals_separate_forwards(tiny_model):
    batch = PairwisePackedCollator()(PAIRS)
    assert batch["input_ids"].shape == (1, 6 + 7 + 5 + 4) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 0, 1, 2, 3]
    with torch.no_grad():
        sums, counts = sequence_logps(tiny_model, batch, chunk_size=3)  # several chunks
    assert counts.tolist() == [3, 5, 2, 2]
    torch.testing.assert_close(sums, separate_logps(tiny_model, _sequences(PAIRS)), rtol=1e-5, atol=1e-5)


def test_lora_disabled_reference_equals_base_model(tiny_llama_dir, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter (B starts at zero)
                param.normal_(0, 0.5)
    batch = PairwisePackedCollator()(PAIRS)
    objective = DPOObjective(beta=0.1)
    from tuneforge.train.preference import reference_logps

    ref_sums, _ = reference_logps(policy, None, batch)
    base_sums = separate_logps(tiny_model, _sequences(PAIRS))
    torch.testing.assert_close(ref_sums, base_sums, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        policy_sums, _ = sequence_logps(policy, batch)
    assert (policy_sums - base_sums).abs().max() > 1e-3  # the adapter is on outside the context
    loss, metrics = objective.compute(policy, batch)
    expected, _, _ = pref_losses.dpo_loss(policy_sums[:2], policy_sums[2:], base_sums[:2], base_sums[2:], beta=0.1)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                            "logps/chosen", "logps/rejected"}


@pytest.mark.parametrize("loss_type", ["ipo", "orpo", "simpo"])
def test_length_normalised_losses_use_average_logps(tiny_model, loss_type):
    batch = PairwisePackedCollator()(PAIRS)
    objective = DPOObjective(loss_type=loss_type, beta=0.5, simpo_gamma=0.3, ref_model=tiny_model, ftx=0.0)
    loss, metrics = objective.compute(tiny_model, batch)
    sums = separate_logps(tiny_model, _sequences(PAIRS))
    avg = sums / torch.tensor([3, 5, 2, 2])
    if loss_type == "ipo":  # policy == reference here: h = 0, loss = (1 / (2 beta))^2
        expected = torch.tensor(1.0)
    elif loss_type == "orpo":
        expected = pref_losses.orpo_loss(avg[:2], avg[2:], beta=0.5)[0].mean()
        assert {"sft_loss", "odds_ratio_loss"} <= set(metrics)
    else:
        expected = pref_losses.simpo_loss(avg[:2], avg[2:], beta=0.5, gamma=0.3).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not DPOObjective(loss_type=loss_type).uses_reference or loss_type == "ipo"


def test_pref_ftx_adds_sft_loss_of_chosen(tiny_model):
    batch = PairwisePackedCollator()(PAIRS)
    plain, _ = DPOObjective(ref_model=tiny_model).compute(tiny_model, batch)
    with_ftx, metrics = DPOObjective(ref_model=tiny_model, ftx=0.5).compute(tiny_model, batch)
    sums = separate_logps(tiny_model, _sequences(PAIRS))
    sft = -(sums[:2] / torch.tensor([3, 5])).mean()
    assert with_ftx.item() == pytest.approx(plain.item() + 0.5 * sft.item(), rel=1e-5)
    assert metrics["sft_loss"] == pytest.approx(sft.item(), rel=1e-5)


def test_dpo_lora_run_raises_margin_and_saves_adapter(workdir, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.train.tuner import run_train

    out = workdir / "out"
    metrics = run_train(make_cfg(tiny_llama_dir, "dpo", "pairs", out, max_steps=8))
    records = log_records(out)
    assert len(records) == 8
    assert records[0]["loss"] == pytest.approx(0.6931, abs=2e-3)  # LoRA B = 0: policy == reference
    assert records[-1]["rewards/margins"] > records[0]["rewards/margins"] + 0.05
    assert records[-1]["loss"] < records[0]["loss"] - 0.02
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "throughput"} <= set(records[0])
    assert metrics["train_loss"] < 0.6931
    # the same stage metrics reach trainer_log.jsonl (what the web UI and users read)
    jsonl = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    logged = [r for r in jsonl if "loss" in r]
    assert [r["rewards/margins"] for r in logged] == pytest.approx([r["rewards/margins"] for r in records])
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(out))  # loadable


def test_dpo_full_run_with_frozen_reference_copy(workdir, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.train.tuner import run_train

    out = workdir / "full"
    run_train(make_cfg(tiny_llama_dir, "dpo", "pairs", out, finetuning_type="full", learning_rate=1e-3, max_steps=4,
                       pref_loss="hinge"))
    records = log_records(out)
    assert records[0]["loss"] == pytest.approx(1.0, abs=1e-4)  # policy == frozen copy: relu(1 - 0)
    assert records[-1]["rewards/margins"] > records[0]["rewards/margins"]
    AutoModelForCausalLM.from_pretrained(out)


def test_stage_data_and_setting_errors(workdir, tiny_llama_dir):
    from tuneforge.train.tuner import run_train

    with pytest.raises(DataError, match=r"dataset 'plain' in .* is not a ranking dataset, but stage 'dpo' needs"):
        run_train(make_cfg(tiny_llama_dir, "dpo", "plain", workdir / "o1"))
    with pytest.raises(DataError, match=r"dataset 'pairs' in .* is a ranking dataset .* but stage 'sft' needs"):
        run_train(make_cfg(tiny_llama_dir, "sft", "pairs", workdir / "o2"))
    # refused by config validation, before anything loads (CLI, web UI and data check alike)
    with pytest.raises(ConfigError, match=r"`dpo_label_smoothing` only applies to `pref_loss: sigmoid`"):
        make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o3", pref_loss="ipo", dpo_label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"`pref_loss: simpo` has none, so it would do nothing"):
        make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o3", pref_loss="simpo", pref_bco_weight=0.5)
    with pytest.raises(ConfigError, match=r"`pref_bco_weight` must be >= 0"):
        make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o3", pref_bco_weight=-1.0)
    cfg = make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o3", pref_loss="kto_pair", pref_bco_weight=0.5,
                   ld_alpha=0.5)  # implemented: accepted
    assert (cfg.finetuning.pref_loss, cfg.finetuning.pref_bco_weight, cfg.finetuning.ld_alpha) == ("kto_pair", 0.5, 0.5)


def test_reference_model_choice(workdir, tiny_llama_dir):
    from tuneforge.train.preference import load_reference_model

    lora = make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o")
    assert load_reference_model(lora, lora_policy=True) is None  # the policy with its adapter disabled
    explicit = make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o", ref_model=str(tiny_llama_dir))
    ref = load_reference_model(explicit, lora_policy=True)
    assert ref is not None and not any(p.requires_grad for p in ref.parameters()) and not ref.training
    full = make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o", finetuning_type="full")
    assert type(load_reference_model(full, lora_policy=False)).__name__ == "LlamaForCausalLM"
    if importlib.util.find_spec("bitsandbytes"):  # LF's ref_model_quantization_bit: that model alone quantized
        quantized = make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "o", ref_model=str(tiny_llama_dir),
                             ref_model_quantization_bit=4)
        ref = load_reference_model(quantized, lora_policy=True)
        assert type(ref.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
        assert quantized.model.quantization_bit is None  # the policy is not


def test_ld_alpha_weights_tokens_beyond_the_shared_length_by_hand():
    from tuneforge.train.preference import length_desensitized_sums

    # pair 0: chosen 3 answer tokens at offsets 3, 4, 5 (log-probs -1, -2, -3), rejected 2 at 3, 4 -> shared
    # length 2: chosen = -1 - 2 + 0.5 * -3 = -4.5, rejected = -0.5 - 0.5 = -1 (all shared)
    # pair 1: chosen 1 token at 2 (-2), rejected 3 at 2, 3, 4 (-1 each) -> shared 1: -2 and -1 + 0.5 * -2 = -2
    token_logps = torch.tensor([-1.0, -2.0, -3.0, -2.0, -0.5, -0.5, -1.0, -1.0, -1.0])
    owner = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3])
    positions = torch.tensor([3, 4, 5, 2, 3, 4, 2, 3, 4])
    counts = torch.tensor([3, 1, 2, 3])
    sums = length_desensitized_sums(token_logps, owner, positions, counts, 0.5)
    assert sums.tolist() == pytest.approx([-4.5, -2.0, -1.0, -2.0])
    assert length_desensitized_sums(token_logps, owner, positions, counts, 1.0).tolist() == pytest.approx(
        [-6.0, -2.0, -1.0, -3.0])  # alpha 1: the plain sums


def test_ld_alpha_packed_logps_equal_lf_padded_computation(tiny_model):
    """LF's get_batch_logps(ld_alpha) on a right-padded batch of the same pairs, written out here."""
    alpha = 0.3
    batch = PairwisePackedCollator()(PAIRS)
    with torch.no_grad():
        sums, counts = sequence_logps(tiny_model, batch, ld_alpha=alpha)
    sequences = _sequences(PAIRS)
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.tensor([s + [0] * (width - len(s)) for s, _ in sequences])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in sequences])
    with torch.no_grad():
        logits = tiny_model(input_ids=ids, attention_mask=mask).logits.float()
    shifted, logits = labels[:, 1:].clone(), logits[:, :-1]
    loss_mask = shifted != -100
    shifted[~loss_mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, shifted.unsqueeze(2)).squeeze(2)
    valid = loss_mask.sum(-1)
    shared = torch.minimum(valid[:2], valid[2:]).repeat(2)
    public = torch.argmax(loss_mask.int(), dim=1) + shared
    front = torch.arange(width - 1).expand_as(per_token) < public.unsqueeze(1)
    expected = (per_token * (front & loss_mask)).sum(-1) + alpha * (per_token * (~front & loss_mask)).sum(-1)
    assert counts.tolist() == valid.tolist() == [3, 5, 2, 2]
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-5)
    # the chosen answers are the longer ones (3 vs 2, 5 vs 2 tokens): their tails are down-weighted; the
    # rejected answers lie within the shared length and keep their plain sums
    plain = separate_logps(tiny_model, sequences)
    torch.testing.assert_close(sums[2:], plain[2:], rtol=1e-5, atol=1e-5)
    assert ((sums[:2] - plain[:2]).abs() > 1e-3).all()


def test_ld_alpha_applies_to_the_policy_only(tiny_model):
    batch = PairwisePackedCollator()(PAIRS)
    loss, metrics = DPOObjective(beta=0.1, ld_alpha=0.3, ref_model=tiny_model).compute(tiny_model, batch)
    with torch.no_grad():
        ld, _ = sequence_logps(tiny_model, batch, ld_alpha=0.3)
    plain = separate_logps(tiny_model, _sequences(PAIRS))
    expected, _, _ = pref_losses.dpo_loss(ld[:2], ld[2:], plain[:2], plain[2:], beta=0.1)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert metrics["logps/chosen"] == pytest.approx(ld[:2].mean().item(), rel=1e-5)


def test_kto_pair_and_bco_objective_values(tiny_model):
    batch = PairwisePackedCollator()(PAIRS)
    # policy == reference: every log-ratio 0, KL 0 -> each of the 2 B kto_pair losses is 1 - s(0) = 0.5
    loss, _ = DPOObjective(loss_type="kto_pair", beta=0.1, ref_model=tiny_model).compute(tiny_model, batch)
    assert loss.item() == pytest.approx(0.5)
    # sigmoid + BCO (weight 2): rewards 0, baseline 0 -> (log 2 + 2 * 2 log 2) / 3; + ftx's SFT term
    objective = DPOObjective(beta=0.1, bco_weight=2.0, ftx=0.5, ref_model=tiny_model)
    loss, metrics = objective.compute(tiny_model, batch)
    sums = separate_logps(tiny_model, _sequences(PAIRS))
    sft = -(sums[:2] / torch.tensor([3, 5])).mean().item()
    assert loss.item() == pytest.approx((math.log(2) + 2 * 2 * math.log(2)) / 3 + 0.5 * sft, rel=1e-5)
    assert metrics["bco_loss"] == pytest.approx(2 * math.log(2), rel=1e-5)
    assert objective.reward_baseline.count == 1
    assert not DPOObjective(loss_type="simpo", bco_weight=1.0).uses_bco  # LF: reference losses only


@pytest.mark.parametrize("overrides,first_loss", [
    ({"pref_loss": "kto_pair"}, 0.5),  # LoRA B = 0: policy == reference
    ({"pref_bco_weight": 1.0}, (math.log(2) + 2 * math.log(2)) / 2),
    ({"ld_alpha": 0.2}, None),  # the down-weighted policy log-probs differ from the reference's at once
])
def test_new_dpo_settings_train(workdir, tiny_llama_dir, overrides, first_loss):
    from tuneforge.train.tuner import run_train

    out = workdir / "out"
    run_train(make_cfg(tiny_llama_dir, "dpo", "pairs", out, max_steps=4, **overrides))
    records = log_records(out)
    losses = [r["loss"] for r in records]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    if first_loss is not None:
        assert losses[0] == pytest.approx(first_loss, abs=2e-3)
    assert losses[-1] < losses[0] - 1e-3
    assert records[-1]["rewards/margins"] > records[0]["rewards/margins"]


def test_a_shared_system_prompt_runs_once_with_the_same_logps_and_rewards(tiny_llama_dir):
    """rm / dpo / kto batches on tuneforge's packed SDPA: the prompt prefix all sequences share is computed once;
    per-sequence log-probs (plain and LD-DPO) and reward-model values are those of the unshared row."""
    from transformers import AutoModelForCausalLM

    from tuneforge.model.attention import register_packed_sdpa
    from tuneforge.model.value_head import ValueHeadModel

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=register_packed_sdpa(),
                                                 dtype=torch.float32).eval()
    system = list(range(100, 112))  # 12 prompt tokens every sequence starts with
    pairs = [{key: (system if key.endswith("input_ids") else [-100] * 12) + value for key, value in pair.items()}
             for pair in PAIRS]
    shared, plain = PairwisePackedCollator(share_prefix=True)(pairs), PairwisePackedCollator()(pairs)
    assert shared["input_ids"].shape[1] == plain["input_ids"].shape[1] - 3 * 12
    with torch.no_grad():
        for ld_alpha in (None, 0.3):
            (got, got_counts), (want, want_counts) = (sequence_logps(model, batch, ld_alpha=ld_alpha)
                                                      for batch in (shared, plain))
            assert got_counts.tolist() == want_counts.tolist() == [3, 5, 2, 2]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        scorer = ValueHeadModel(model)
        values = [scorer.sequence_values(batch["input_ids"], position_ids=batch["position_ids"])
                  for batch in (shared, plain)]
    assert values[0].shape == (4,)
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-5)


def test_objective_stages_run_under_the_mixed_precision_autocast(workdir, tiny_llama_dir, monkeypatch):
    """`bf16: true` keeps trainable weights in float32 (full fine-tuning: all of them) and relies on accelerate's
    autocast, which accelerate puts around `model.forward()` only; the objective stages (rm, dpo, kto, asft) call the
    decoder themselves, so the trainer runs them under the accelerator's autocast (before: float32 throughout)."""
    from tuneforge.train.tuner import run_train

    seen = []
    original = DPOObjective.compute

    def compute(self, model, inputs, num_items_in_batch=None):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(DPOObjective, "compute", compute)
    run_train(make_cfg(tiny_llama_dir, "dpo", "pairs", workdir / "bf16", finetuning_type="full", max_steps=1,
                       bf16=True, use_cpu=True))
    assert seen and all(seen), seen


def test_log_probs_through_a_ddp_wrapper_stay_label_only(tiny_llama_dir, one_process_ddp):
    """Under DDP (here one gloo process) the decoder runs as the wrapper's forward -- its gradient bookkeeping
    happens -- with log-probs at the label positions only: the model's own full-logits forward is never called.
    Same log-probs and gradients as the bare model."""
    from transformers import AutoModelForCausalLM

    batch = PairwisePackedCollator()(PAIRS)

    def logps_and_grads(model, call):
        model.zero_grad()
        sums, _ = sequence_logps(call, batch, chunk_size=3)
        sums.sum().backward()
        return sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    bare = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    want, want_grads = logps_and_grads(bare, bare)
    got, got_grads = logps_and_grads(bare, one_process_ddp(bare))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-6)
