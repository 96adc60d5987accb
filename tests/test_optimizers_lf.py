"""LLaMA-Factory's own optimizers (train/optimizers.py): `use_galore`, `use_apollo`, `use_badam`, `use_adam_mini`,
`use_muon`. Each trains a tiny model for 3 full-finetuning steps (finite loss, weights change) with the optimizer
LF builds, and the way it updates shows: GaLore/APOLLO moments live in the rank-r projection of the targeted
linear weights only, BAdam updates the active decoder layer only (or a share of each weight's entries), Adam-mini
keeps one second moment per attention head, Muon takes the hidden-layer matrices and AdamW the rest. Then the
configurations LF refuses, and the missing-package message."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.config import validate
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError, NotSupportedError

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _needs(module: str) -> None:
    """Skip without the package; galore_torch / apollo_torch import only with bitsandbytes, which tuneforge does
    without (train/optimizers.py), so they are looked up, not imported."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _train(tmp_path, monkeypatch, model_dir, **keys):
    """3 full-finetuning sft steps with `keys`; (trainer, initial weights, final weights, train losses)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.train import workflow
    from tuneforge.train.sft import run_sft

    config = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "full",
              "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 64,
              "output_dir": "out", "per_device_train_batch_size": 4, "learning_rate": 1.0e-2, "max_steps": 3,
              "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_gradient_checkpointing": True,
              **keys}
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")
    built = {}
    original = workflow.build_trainer

    def keep(*args, **kwargs):
        built["trainer"], log_callback = original(*args, **kwargs)
        return built["trainer"], log_callback

    monkeypatch.setattr(workflow, "build_trainer", keep)
    before = {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()}
    run_sft(load_config_dict(config, source="train.yaml"))
    trainer = built["trainer"]
    after = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses), losses
    return trainer, before, after


def _changed(before, after, name) -> bool:
    return not torch.equal(before[name].float(), after[name])


def _optimizer(trainer):
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it


def _names(trainer, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in trainer.model.named_parameters() if id(p) in ids}


def _linear_weights(trainer) -> set[str]:
    return {n for n, _ in trainer.model.named_parameters() if n.endswith(".weight") and n.split(".")[-2] in LINEAR}


# --------------------------------------------------------------------------- GaLore / APOLLO


def test_galore_projects_the_targeted_linear_weights(tmp_path, monkeypatch, tiny_llama_dir):
    _needs("galore_torch")
    trainer, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_galore=True, galore_rank=4,
                                    galore_update_interval=2)
    optimizer = _optimizer(trainer)
    assert type(optimizer).__module__ == "galore_torch.adamw" and type(optimizer).__name__ == "AdamW"
    projected = [group for group in optimizer.param_groups if "rank" in group]
    assert len(projected) == 1
    group = projected[0]
    assert (group["rank"], group["update_proj_gap"], group["scale"], group["proj_type"]) == (4, 2, 2.0, "std")
    assert _names(trainer, group["params"]) == _linear_weights(trainer)  # `all`: every linear layer but lm_head
    for param in group["params"]:
        state = optimizer.state[param]
        assert "projector" in state and min(state["exp_avg"].shape) == 4  # Adam's moments in the rank-4 space
    head = dict(trainer.model.named_parameters())["lm_head.weight"]
    assert optimizer.state[head]["exp_avg"].shape == head.shape  # not targeted: plain AdamW
    assert all(_changed(before, after, name) for name in before)


def test_galore_target_names_modules(tmp_path, monkeypatch, tiny_llama_dir):
    _needs("galore_torch")
    trainer, _, _ = _train(tmp_path, monkeypatch, tiny_llama_dir, use_galore=True, galore_rank=4,
                           galore_target="q_proj,v_proj")
    group = next(g for g in _optimizer(trainer).param_groups if "rank" in g)
    assert _names(trainer, group["params"]) == {f"model.layers.{i}.self_attn.{m}.weight"
                                                for i in (0, 1) for m in ("q_proj", "v_proj")}


def test_galore_layerwise_steps_every_weight_from_its_gradient_hook(tmp_path, monkeypatch, tiny_llama_dir):
    _needs("galore_torch")
    from tuneforge.train.optimizers import LayerwiseOptimizer

    trainer, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_galore=True, galore_rank=4,
                                    galore_layerwise=True, lr_scheduler_type="linear")
    optimizer = _optimizer(trainer)
    assert isinstance(optimizer, LayerwiseOptimizer)
    params = dict(trainer.model.named_parameters())
    assert set(optimizer.optimizers) == set(params.values())  # one optimizer per trainable parameter
    q_proj = optimizer.optimizers[params["model.layers.0.self_attn.q_proj.weight"]]
    assert type(q_proj).__module__ == "galore_torch.adamw" and q_proj.param_groups[0]["rank"] == 4
    assert "rank" not in optimizer.optimizers[params["lm_head.weight"]].param_groups[0]
    # each parameter's lr schedule stepped with the run: linear decay to 0 after 3 of 3 steps, as the Trainer's
    assert q_proj.param_groups[0]["lr"] == pytest.approx(trainer.lr_scheduler.get_last_lr()[0]) == 0.0
    assert all(_changed(before, after, name) for name in before)


def test_apollo_scales_the_targeted_linear_weights(tmp_path, monkeypatch, tiny_llama_dir):
    _needs("apollo_torch")
    trainer, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_apollo=True, apollo_rank=4,
                                    apollo_scale=1.0, apollo_scale_type="tensor")
    optimizer = _optimizer(trainer)
    assert type(optimizer).__module__ == "apollo_torch.apollo" and type(optimizer).__name__ == "AdamW"
    group = next(g for g in optimizer.param_groups if "rank" in g)
    assert (group["rank"], group["proj"], group["scale"], group["scale_type"]) == (4, "random", 1.0, "tensor")
    assert _names(trainer, group["params"]) == _linear_weights(trainer)
    for param in group["params"]:
        assert min(optimizer.state[param]["exp_avg"].shape) == 4
    assert all(_changed(before, after, name) for name in before)


# --------------------------------------------------------------------------- BAdam


def test_badam_layer_mode_updates_only_the_active_block(tmp_path, monkeypatch, tiny_llama_dir):
    badam = pytest.importorskip("badam")
    trainer, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_badam=True, badam_mode="layer",
                                    badam_switch_mode="ascending", badam_switch_interval=50)
    assert isinstance(_optimizer(trainer), badam.BlockOptimizer)
    changed = {name for name in before if _changed(before, after, name)}
    assert changed == {name for name in before if name.startswith("model.layers.0.")}


def test_badam_switches_blocks(tmp_path, monkeypatch, tiny_llama_dir):
    pytest.importorskip("badam")
    _, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_badam=True, badam_switch_mode="descending",
                              badam_switch_interval=2)
    changed = {name for name in before if _changed(before, after, name)}
    # steps 1-2 train the last layer, step 3 the one before it; embeddings, final norm and LM head never
    assert changed == {name for name in before if name.startswith(("model.layers.0.", "model.layers.1."))}


def test_badam_ratio_mode_updates_a_share_of_each_weight(tmp_path, monkeypatch, tiny_llama_dir):
    badam = pytest.importorskip("badam")
    trainer, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_badam=True, badam_mode="ratio",
                                    badam_update_ratio=0.25)
    assert isinstance(_optimizer(trainer), badam.BlockOptimizerRatio)
    assert not _changed(before, after, "model.embed_tokens.weight") and not _changed(before, after, "lm_head.weight")
    for name in _linear_weights(trainer):
        share = (before[name].float() != after[name]).float().mean().item()
        assert 0 < share <= 0.25, (name, share)


# --------------------------------------------------------------------------- Adam-mini, Muon


def test_adam_mini_keeps_one_second_moment_per_head(tmp_path, monkeypatch, tiny_llama_dir):
    adam_mini = pytest.importorskip("adam_mini")
    trainer, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_adam_mini=True)
    optimizer = _optimizer(trainer)
    assert isinstance(optimizer, adam_mini.Adam_mini)
    assert (optimizer.dim, optimizer.n_heads, optimizer.n_kv_heads) == (32, 4, 2)
    params = dict(trainer.model.named_parameters())
    assert optimizer.state[params["model.layers.0.self_attn.q_proj.weight"]]["vmean"].shape == (4, 1)  # 4 heads
    assert optimizer.state[params["model.layers.0.self_attn.k_proj.weight"]]["vmean"].shape == (2, 1)  # 2 kv heads
    assert optimizer.state[params["model.layers.0.mlp.up_proj.weight"]]["vmean"].shape == (64, 1)  # per neuron
    assert all(_changed(before, after, name) for name in before)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tmp_path, monkeypatch, tiny_llama_dir):
    from tuneforge.train.optimizers import MuonWithAdamW

    trainer, before, after = _train(tmp_path, monkeypatch, tiny_llama_dir, use_muon=True, weight_decay=0.1)
    optimizer = _optimizer(trainer)
    assert isinstance(optimizer, MuonWithAdamW)
    muon = [p for g in optimizer.param_groups if g["use_muon"] for p in g["params"]]
    adamw = [p for g in optimizer.param_groups if not g["use_muon"] for p in g["params"]]
    assert _names(trainer, muon) == _linear_weights(trainer)
    assert _names(trainer, adamw) == {n for n, _ in trainer.model.named_parameters()} - _linear_weights(trainer)
    muon_group = next(g for g in optimizer.param_groups if g["use_muon"])
    assert (muon_group["adjust_lr_fn"], muon_group["momentum"], muon_group["nesterov"], muon_group["ns_steps"],
            muon_group["weight_decay"]) == ("match_rms_adamw", 0.95, True, 5, 0.1)
    assert set(optimizer.state[muon[0]]) == {"momentum_buffer"}
    assert {"exp_avg", "exp_avg_sq"} <= set(optimizer.state[adamw[0]])
    assert all(_changed(before, after, name) for name in before)


def test_muon_state_round_trips_through_a_checkpoint():
    """A resumed run's optimizer state reaches both inner optimizers."""
    from tuneforge.train.optimizers import MuonWithAdamW

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))

    def make():
        muon = [p for p in model.parameters() if p.ndim == 2]
        return MuonWithAdamW(muon, [p for p in model.parameters() if p.ndim != 2], lr=0.01, weight_decay=0.0,
                             betas=(0.9, 0.999), eps=1e-8)

    first = make()
    model(torch.randn(4, 8)).sum().backward()
    first.step()
    second = make()
    second.load_state_dict(first.state_dict())
    weight, bias = model[0].weight, model[0].bias
    assert torch.equal(second._muon.state[weight]["momentum_buffer"], first.state[weight]["momentum_buffer"])
    assert torch.equal(second._adamw.state[bias]["exp_avg"], first.state[bias]["exp_avg"])
    second.param_groups[0]["lr"] = 0.5  # what a scheduler does
    assert second._muon.param_groups[0]["lr"] == 0.5


# --------------------------------------------------------------------------- refusals

BASE = {"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "finetuning_type": "full"}


@pytest.mark.parametrize("keys, error, text", [
    ({"use_galore": True, "finetuning_type": "lora"}, ConfigError, "Cannot use LoRA with GaLore, APOLLO or BAdam"),
    ({"use_badam": True, "finetuning_type": "lora"}, ConfigError, "use `finetuning_type: full`"),
    ({"use_galore": True, "use_apollo": True}, ConfigError, "`use_galore` and `use_apollo` each choose the optimizer"),
    ({"use_adam_mini": True, "use_muon": True}, ConfigError, "set only one"),
    ({"use_muon": True, "finetuning_type": "lora", "loraplus_lr_ratio": 16.0}, ConfigError,
     "`use_muon` and `loraplus_lr_ratio` each choose the optimizer"),
    ({"use_galore": True, "galore_layerwise": True, "gradient_accumulation_steps": 4}, ConfigError,
     "set `gradient_accumulation_steps: 1`"),
    ({"use_apollo": True, "optim": "adafactor"}, ConfigError, "`use_apollo` works with `optim` adamw_torch"),
    ({"use_galore": True, "optim": "sgd"}, ConfigError, "got `optim: sgd`"),
    ({"use_galore": True, "galore_rank": 0}, ConfigError, "`galore_rank` must be at least 1"),
    ({"use_badam": True, "badam_mode": "ratio", "badam_update_ratio": 0.0}, ConfigError,
     "`badam_update_ratio` must be positive"),
    ({"use_badam": True, "badam_switch_interval": 0}, ConfigError, "`badam_switch_interval` is a number of steps"),
    ({"use_muon": True, "stage": "ppo", "reward_model": "r"}, NotSupportedError, "with stage ppo"),
])
def test_refused_combinations(keys, error, text, monkeypatch):
    monkeypatch.setattr(validate, "optimizer_package_available", lambda module: True)
    with pytest.raises(error) as caught:
        load_config_dict({**BASE, **keys})
    assert text in str(caught.value)


def test_galore_with_deepspeed_is_refused_as_in_lf(tmp_path, monkeypatch):
    monkeypatch.setattr(validate, "optimizer_package_available", lambda module: True)
    monkeypatch.setattr(validate, "deepspeed_available", lambda: True, raising=False)
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    with pytest.raises(ConfigError, match="GaLore and APOLLO are incompatible with DeepSpeed"):
        load_config_dict({**BASE, "use_galore": True, "deepspeed": str(ds)})


@pytest.mark.parametrize("key, extra, package", [
    ("use_galore", "galore", "galore-torch"), ("use_apollo", "apollo", "apollo-torch"), ("use_badam", "badam", "badam"),
    ("use_adam_mini", "adam-mini", "adam-mini"),
])
def test_a_missing_package_names_the_extra(key, extra, package, monkeypatch):
    monkeypatch.setattr(validate, "optimizer_package_available", lambda module: False)
    with pytest.raises(NotSupportedError) as caught:
        load_config_dict({**BASE, key: True})
    assert f"needs the {package} package, which is not installed: pip install 'tuneforge[{extra}]'" in str(caught.value)
