"""`use_asft_loss` (LLaMA-Factory's ASFT, train/asft.py): DFT + asft_alpha x KL(reference || policy) per label token."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from test_dft_loss import _batch  # the same two packed samples

from tuneforge.train.asft import ASFTObjective, asft_sums


def _lf_asft_reference(logits, ref_logits, labels, alpha):
    """LF 0.9.5's `asft_loss_func`, written out: mean DFT + alpha * mean KL over the shifted label tokens."""
    logits, ref_logits = logits[0, :-1].float(), ref_logits[0, :-1].float()
    labels = labels[0, 1:]
    keep = labels != -100
    losses = nn.functional.cross_entropy(logits[keep], labels[keep], reduction="none")
    dft = (losses * torch.exp(-losses).detach()).mean()
    kl = nn.functional.kl_div(torch.log_softmax(logits[keep], -1), torch.softmax(ref_logits[keep], -1),
                              reduction="none").sum(-1).mean()
    return dft + alpha * kl


def test_sums_by_hand():
    logits, ref = torch.zeros(1, 2), torch.tensor([[0.0, torch.log(torch.tensor(3.0))]])  # p = (1/2, 1/2), q = (1/4, 3/4)
    dft, kl = asft_sums(logits, ref, torch.tensor([1])).tolist()
    assert dft == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    assert kl == pytest.approx(0.25 * torch.log(torch.tensor(0.5)).item() + 0.75 * torch.log(torch.tensor(1.5)).item(),
                               rel=1e-5)
    assert asft_sums(ref, ref, torch.tensor([1]))[1].item() == pytest.approx(0.0, abs=1e-7)  # policy == reference


def test_full_finetuning_objective_equals_llamafactorys(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    with torch.no_grad():  # the policy has moved away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch(policy.config.vocab_size)
    objective = ASFTObjective(0.3, reference, chunk_size=4)
    loss, metrics = objective.compute(policy, batch)  # chunked path, checkpointed chunks
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # use_cache=False: packed rows are detected
    want = _lf_asft_reference(policy(**inputs, use_cache=False).logits, reference(**inputs, use_cache=False).logits,
                              batch["labels"], 0.3)
    torch.testing.assert_close(loss, want)
    assert metrics["kl"] > 0
    loss.backward()
    chunked_grad = policy.model.embed_tokens.weight.grad.clone()
    policy.zero_grad()
    want.backward()
    torch.testing.assert_close(chunked_grad, policy.model.embed_tokens.weight.grad, rtol=1e-4, atol=1e-6)
    assert not any(p.grad is not None for p in reference.parameters())


def test_lora_policy_is_its_own_reference_with_the_adapter_disabled(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = _batch(policy.config.vocab_size)
    loss, metrics = ASFTObjective(0.1).compute(policy, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with policy.disable_adapter():
        base_logits = policy(**inputs, use_cache=False).logits.detach()
    logits = policy(**inputs, use_cache=False).logits
    torch.testing.assert_close(loss, _lf_asft_reference(logits, base_logits, batch["labels"], 0.1))
    assert metrics["kl"] > 0  # the random LoRA weights moved the policy


@pytest.mark.parametrize("reference_kind", ["frozen copy", "lora adapter disabled"])
def test_asft_through_a_ddp_wrapper_stays_label_only(tiny_llama_dir, one_process_ddp, reference_kind):
    """Under DDP (one gloo process) policy and reference run as the wrapper's forward, logits at label rows only
    (the model's own forward is never called): the same loss and gradients as the bare model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    if reference_kind == "frozen copy":
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
    else:
        reference = None
        policy = get_peft_model(policy, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = _batch(policy.config.vocab_size)
    objective = ASFTObjective(0.3, reference, chunk_size=4)

    def loss_and_grads(call):
        policy.zero_grad()
        loss, metrics = objective.compute(call, batch)
        loss.backward()
        return loss.detach(), metrics, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    want, want_metrics, want_grads = loss_and_grads(policy)
    full_logits_model = policy.get_base_model() if reference is None else policy  # peft's forward calls it
    got, got_metrics, got_grads = loss_and_grads(one_process_ddp(policy, full_logits_model))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_metrics == pytest.approx(want_metrics, rel=1e-5) and want_metrics["kl"] > 0
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-6)


def test_use_asft_loss_config(monkeypatch):
    from tuneforge.config import load_config_dict, validate
    from tuneforge.errors import ConfigError

    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    base = {"model_name_or_path": "some/model", "output_dir": "out", "dataset": "d"}
    cfg = load_config_dict({**base, "use_asft_loss": True, "asft_alpha": 0.2, "finetuning_type": "full"})
    assert (cfg.finetuning.use_asft_loss, cfg.finetuning.asft_alpha) == (True, 0.2)
    with pytest.raises(ConfigError, match="`use_asft_loss` is a loss of `stage: sft`"):
        load_config_dict({**base, "stage": "pt", "use_asft_loss": True})
    with pytest.raises(ConfigError, match="`use_eaft_loss` and `use_asft_loss` are different losses"):
        load_config_dict({**base, "use_eaft_loss": True, "use_asft_loss": True})


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_asft_run_trains_and_logs_its_terms(tmp_path, monkeypatch, tiny_llama_dir, finetuning_type):
    import json

    from conftest import write_workspace

    from tuneforge.cli.main import main

    rows = [{"instruction": f"Say {w}.", "output": f"{w} {w}!"} for w in ("hi", "yes", "no", "ok")]
    config = {"model_name_or_path": str(tiny_llama_dir), "template": "chatml", "stage": "sft", "do_train": True,
              "finetuning_type": finetuning_type, "use_asft_loss": True, "asft_alpha": 0.1, "dataset": "words",
              "output_dir": "out", "max_steps": 3, "logging_steps": 1, "per_device_train_batch_size": 2,
              "learning_rate": 1e-2, "report_to": "none"}
    write_workspace(tmp_path, monkeypatch, rows, "words", config, "asft.yaml")
    assert main(["train", "asft.yaml"]) == 0
    log = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 3 and all("dft" in r and "kl" in r for r in steps)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step: policy == reference
    assert steps[-1]["kl"] > 0  # then the policy moves away from it
