"""train/optim.py: LoRA+ parameter groups (LLaMA-Factory's rule), decay names, PPO's optimizer."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from tuneforge.config.args import FinetuningArguments
from tuneforge.errors import ConfigError
from tuneforge.train.optim import create_optimizer, decay_parameter_names, loraplus_param_groups


class _Named(nn.Module):
    """Parameters named like a LoRA model's (peft names), a norm, a bias and a value head."""

    def __init__(self):
        super().__init__()
        self.q = nn.Module()
        self.q.lora_A = nn.Linear(4, 2, bias=False)
        self.q.lora_B = nn.Linear(2, 4)  # weight + bias
        self.embed = nn.Module()
        self.embed.lora_embedding_A = nn.Parameter(torch.zeros(2, 8))
        self.embed.lora_embedding_B = nn.Parameter(torch.zeros(8, 2))
        self.layernorm = nn.LayerNorm(4)
        self.magnitude = nn.Parameter(torch.ones(4))  # a 1-D parameter that is not a bias or a norm (DoRA)
        self.v_head = nn.Linear(4, 1)
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_loraplus_groups_follow_llamafactory():
    model = _Named()
    decay = decay_parameter_names(model)
    groups = loraplus_param_groups(model, decay_names=decay, lr=1e-4, weight_decay=0.1, ratio=16.0, embedding_lr=1e-6)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {(g["lr"], g["weight_decay"]): sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert got == {
        (1e-4, 0.1): ["embed.lora_embedding_A", "q.lora_A.weight", "v_head.weight"],
        (1e-4 * 16, 0.1): ["magnitude", "q.lora_B.weight"],
        (1e-4 * 16, 0.0): ["layernorm.bias", "layernorm.weight", "q.lora_B.bias", "v_head.bias"],
        (1e-6, 0.1): ["embed.lora_embedding_B"],
    }
    with pytest.raises(ConfigError, match="loraplus_lr_ratio: expected a positive number, got 0"):
        loraplus_param_groups(model, decay_names=decay, lr=1e-4, weight_decay=0.0, ratio=0, embedding_lr=1e-6)


def test_decay_names_are_the_hf_trainers(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True))
    assert decay_parameter_names(model) == set(trainer.get_decay_parameter_names(model))


def test_create_optimizer_without_loraplus_decays_all_but_biases_and_norms():
    from transformers import TrainingArguments

    model = _Named()
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True, learning_rate=1e-3, weight_decay=0.1)
    optimizer = create_optimizer(model, args, FinetuningArguments())
    names = {id(p): n for n, p in model.named_parameters()}
    by_wd = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert by_wd[0.0] == ["layernorm.bias", "layernorm.weight", "q.lora_B.bias", "v_head.bias"]
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 10  # every trainable parameter once
