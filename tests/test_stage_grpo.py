"""Stage grpo: its keys, the packed completion log-probs, the step sampler, rollouts reused over num_iterations,
the objective (KL zero at the start, dapo normalised over the step), and the recipe end to end on a tiny model
where a constructed reward makes one token more likely (a user's reward function loaded by path)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError, NotSupportedError
from tuneforge.train.grpo import GRPOObjective, completion_logps, pack_completions
from tuneforge.train.grpo_core import LossSettings
from tuneforge.train.grpo_rollouts import GRPOCollator, RepeatedStepSampler, RolloutMaker

BASE = {"model_name_or_path": "some/model", "dataset": "d", "output_dir": "o", "do_train": True}


def test_grpo_keys_and_their_errors():
    cfg = load_config_dict({**BASE, "stage": "grpo", "num_generations": 4, "reward_funcs": ["accuracy", "format"],
                            "reward_weights": "1, 0.5", "beta": 0.04, "epsilon_high": 0.28, "loss_type": "dr_grpo"})
    assert (cfg.grpo.num_generations, cfg.grpo.beta, cfg.grpo.epsilon_high, cfg.grpo.loss_type) == (4, 0.04, 0.28, "dr_grpo")
    errors = [
        ({"num_generations": 4}, ConfigError, r"only `stage: grpo` reads `num_generations` \(this config has stage `sft`\)"),
        ({"stage": "grpo", "num_generations": 1}, ConfigError, "`num_generations` must be at least 2"),
        ({"stage": "grpo", "reward_weights": "1,2"}, ConfigError, r"2 `reward_weights` for 1 `reward_funcs` \(accuracy\)"),
        ({"stage": "grpo", "reward_funcs": ""}, ConfigError, "`reward_funcs` is empty"),
        ({"stage": "grpo", "do_sample": False}, ConfigError, "GRPO samples its completions"),
        ({"stage": "grpo", "beta": -1}, ConfigError, "`beta` must be >= 0"),
        ({"stage": "grpo", "max_new_tokens": 0}, ConfigError, "`max_new_tokens` must be positive"),
        ({"stage": "grpo", "val_size": 0.1}, NotSupportedError, "evaluation during GRPO is not supported yet"),
        ({"stage": "grpo", "loss_type": "ppo"}, ConfigError, "loss_type"),
    ]
    for extra, error, message in errors:
        with pytest.raises(error, match=message):
            load_config_dict({**BASE, **extra})


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


PROMPTS = [[5, 9, 11], [7, 8], [5, 9, 11]]
COMPLETIONS = [[30, 31, 2], [50, 51, 52, 53, 2], [40]]


def test_packed_completion_logps_equal_separate_forwards(tiny_model):
    row = pack_completions(PROMPTS, COMPLETIONS, "cpu")
    assert row["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3]
    assert row["labels"][0].tolist()[:6] == [-100, -100, -100, 30, 31, 2]
    with torch.no_grad():
        logps, mask = completion_logps(tiny_model, PROMPTS, COMPLETIONS, chunk_size=4)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    for i, (prompt, completion) in enumerate(zip(PROMPTS, COMPLETIONS)):
        with torch.no_grad():
            logits = tiny_model(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
        expected = [logits[len(prompt) - 1 + j, t] for j, t in enumerate(completion)]
        torch.testing.assert_close(logps[i, :len(completion)], torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_sampler_repeats_each_step_and_keeps_whole_steps():
    sampler = RepeatedStepSampler(size=8, step_size=4, repeats=2, seed=0, shuffle=False)
    assert list(sampler) == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7] and len(sampler) == 16
    shuffled = RepeatedStepSampler(size=8, step_size=4, repeats=1, seed=0)
    first = list(shuffled)
    shuffled.set_epoch(1)
    assert sorted(first) == list(range(8)) and list(shuffled) != first


class _ScriptedModel(torch.nn.Module):
    """`generate` returns scripted tokens after the prompt (left-padded), so rollouts are known in advance."""

    def __init__(self, tails):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tails, self.calls = tails, 0

    def generate(self, input_ids, **kwargs):
        self.calls += 1
        tails = torch.tensor(self.tails[: input_ids.shape[0]])
        return torch.cat([input_ids, tails], dim=1)


def test_rollouts_rewards_advantages_and_reuse(tiny_tokenizer):
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    good, bad = tiny_tokenizer.encode("42"), tiny_tokenizer.encode("7")
    pad = [eos] * 3
    tails = [(good + [eos] + pad)[:4], (bad + [eos] + pad)[:4]] * 2 + [(bad * 4)[:4]] * 4  # the last 4 never stop
    model = _ScriptedModel(tails)
    rewards = [("accuracy", __import__("tuneforge.train.rewards", fromlist=["accuracy_reward"]).accuracy_reward)]
    maker = RolloutMaker(tiny_tokenizer, rewards, [1.0], num_generations=4, num_iterations=2, scale_rewards="none",
                         generate_kwargs={}, stop_ids=[eos])
    batch = GRPOCollator(tiny_tokenizer)([{"input_ids": [5, 6], "labels": good + [eos]},
                                          {"input_ids": [8], "labels": [-100]}])
    assert batch == {"prompt_ids": [[5, 6], [8]], "references": ["42", None]}
    step = maker.for_step(model, [batch])
    first = step.micro_batches[0]
    assert first["completion_ids"][0] == good + [eos]  # cut after the stop token, which stays
    assert first["advantages"].tolist() == [0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0]  # prompt 2: no reference, all 0
    assert step.stats["reward"] == 0.25 and step.stats["zero_std_frac"] == 0.5
    assert step.stats["truncated_frac"] == 0.5  # the second prompt's completions never stop
    assert maker.for_step(model, [batch]) is step and model.calls == 1  # the second iteration reuses them
    assert maker.for_step(model, [batch]) is not step and model.calls == 2  # then fresh ones


def test_objective_starts_on_policy_with_zero_kl(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    advantages = torch.tensor([1.0, -1.0, 0.5])
    inputs = {"prompt_ids": PROMPTS, "completion_ids": COMPLETIONS, "advantages": advantages, "accumulation": 2,
              "memo": SimpleNamespace(old_logps=None, ref_logps=None)}
    objective = GRPOObjective(LossSettings(loss_type="dapo", beta=0.1))
    loss, metrics = objective.compute(policy, inputs, num_items_in_batch=18)
    assert metrics["kl"] == 0.0  # the adapter's B starts at zero: policy == reference
    tokens = [len(c) for c in COMPLETIONS]
    expected = -sum(a * n for a, n in zip(advantages.tolist(), tokens)) / 18 * 2  # ratio 1; x accumulation
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert inputs["memo"].old_logps is not None and inputs["memo"].ref_logps is not None
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_" in n)


def test_a_constructed_reward_makes_its_token_more_likely(tmp_path, tiny_llama_dir, tiny_tokenizer, monkeypatch):
    """The recipe end to end: a user's reward function (file.py:function) pays for the character "#" (a token of
    its own in the tiny vocabulary); step after step the completions hold more of it, and the policy gives "#" many
    times the probability it had."""
    from transformers import AutoModelForCausalLM

    from tuneforge.train.grpo import run_grpo

    target = tiny_tokenizer.convert_tokens_to_ids("#")
    assert tiny_tokenizer.encode("#") == [target]
    (tmp_path / "my_rewards.py").write_text("def hashes(prompts, completions, references):\n"
                                            "    return [c.count('#') for c in completions]\n")
    rows = [{"instruction": f"Write something number {i}", "output": ""} for i in range(8)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.json").write_text(json.dumps(rows))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": "toy.json"}}))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config_dict({
        "model_name_or_path": str(tiny_llama_dir), "stage": "grpo", "do_train": True, "finetuning_type": "full",
        "dataset": "toy", "template": "qwen", "output_dir": str(tmp_path / "out"), "report_to": "none",
        "per_device_train_batch_size": 8, "num_generations": 8, "learning_rate": 3e-2, "lr_scheduler_type": "constant",
        "max_steps": 10, "logging_steps": 1, "max_new_tokens": 12, "top_k": 0, "top_p": 1.0, "temperature": 1.0,
        "seed": 0, "save_strategy": "no", "reward_funcs": "my_rewards.py:hashes", "loss_type": "bnpo",
    }, config_path=tmp_path / "grpo.yaml")

    def hash_probability(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor([tiny_tokenizer.encode("Write something number 3")])).logits
        return logits.softmax(-1)[0, :, target].mean().item()

    before = hash_probability(tiny_llama_dir)
    run_grpo(cfg)
    after = hash_probability(tmp_path / "out")
    log = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    rewards = [row["rewards/my_rewards.py:hashes"] for row in log if "reward" in row]
    assert len(rewards) == 10 and after > 5 * before, (before, after, rewards)  # 0.0025 -> 0.040 here
    assert sum(rewards[-3:]) > 2 * sum(rewards[:3])


def test_stop_requested_then_resume(tmp_path, tiny_llama_dir, monkeypatch):
    """`STOP_REQUESTED` (what the web UI's Abort writes) stops after the step in flight with a checkpoint; the same
    command then resumes from it (LF's rule) and trains to max_steps."""
    stop_file = tmp_path / "out" / "STOP_REQUESTED"
    (tmp_path / "stopper.py").write_text(
        "import os\ncalls = [0]\n"
        "def score(prompts, completions, references):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 2 and os.environ.get('GRPO_STOP_FILE'):\n"
        "        open(os.environ['GRPO_STOP_FILE'], 'w').close()\n"
        "    return [len(c) % 3 for c in completions]\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.json").write_text(json.dumps([{"instruction": f"q{i}", "output": "1"} for i in range(8)]))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": "toy.json"}}))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    from tuneforge.train.grpo import run_grpo

    def config():
        return load_config_dict({
            "model_name_or_path": str(tiny_llama_dir), "stage": "grpo", "do_train": True, "finetuning_type": "lora",
            "dataset": "toy", "template": "qwen", "output_dir": str(tmp_path / "out"), "report_to": "none",
            "per_device_train_batch_size": 2, "num_generations": 2, "max_steps": 4, "logging_steps": 1,
            "save_steps": 100, "max_new_tokens": 4, "seed": 0, "reward_funcs": "stopper.py:score", "top_k": 0,
            "top_p": 1.0, "temperature": 1.0}, config_path=tmp_path / "grpo.yaml")

    monkeypatch.setenv("GRPO_STOP_FILE", str(stop_file))
    first = run_grpo(config())
    assert first.get("interrupted") is not None and (tmp_path / "out" / "checkpoint-2" / "trainer_state.json").exists()
    monkeypatch.delenv("GRPO_STOP_FILE")
    run_grpo(config())  # resumes from checkpoint-2
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    steps = [json.loads(line)["current_steps"] for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2] and 3 in steps and 4 in steps


def test_memory_estimate_counts_the_completions_of_a_micro_batch():
    from tuneforge.estimate import spec_from_config

    cfg = load_config_dict({**BASE, "model_name_or_path": "builtin:smollm2", "stage": "grpo", "num_generations": 8,
                            "per_device_train_batch_size": 4, "cutoff_len": 256, "max_new_tokens": 32})
    spec = spec_from_config(cfg, device="cpu")
    assert (spec.batch, spec.cutoff) == (32, 288)  # 4 prompts x 8 completions, prompt + completion tokens


def test_reward_model_as_one_more_reward_source(tiny_tokenizer):
    """`reward_funcs: accuracy, reward_model` with `reward_model_type: api`: the server's score of prompt +
    completion (LF's protocol) is one more weighted reward."""
    from test_stage_ppo import _ScoreServer

    from tuneforge.train.grpo import build_reward_functions
    from tuneforge.train.rewards import compute_rewards

    prompts, completions = [tiny_tokenizer.encode("Hello")] * 2, [tiny_tokenizer.encode("8"), tiny_tokenizer.encode("99")]
    with _ScoreServer() as server:  # scores: the length of each decoded prompt + completion
        cfg = load_config_dict({**BASE, "stage": "grpo", "reward_funcs": "accuracy, reward_model",
                                "reward_weights": "1, 0.5", "reward_model": server.url, "reward_model_type": "api"})
        functions, weights, model_reward = build_reward_functions(cfg, None, tiny_tokenizer)
        model_reward.ids = (prompts, completions)
        totals, each = compute_rewards(functions, weights, ["Hello"] * 2, ["8", "99"], ["8", "8"])
    assert [name for name, _ in functions] == ["accuracy", "reward_model"] and weights == [1.0, 0.5]
    assert each["reward_model"] == [float(len("Hello8")), float(len("Hello99"))]
    assert totals == [1.0 + 0.5 * 6, 0.5 * 7]


def test_freeze_with_a_kl_penalty_to_a_frozen_copy(tmp_path, tiny_llama_dir, monkeypatch):
    """Freeze (and full) fine-tuning with beta > 0: the reference is a frozen copy of the starting model; the KL to
    it is 0 on the first step and grows once the policy has moved (loss grpo, scale_rewards batch)."""
    from tuneforge.train.grpo import run_grpo

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.json").write_text(json.dumps([{"instruction": f"q{i}", "output": "1"} for i in range(4)]))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": "toy.json"}}))
    (tmp_path / "lengths.py").write_text("def score(prompts, completions, references):\n"
                                         "    return [float(len(c)) for c in completions]\n")
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    run_grpo(load_config_dict({
        "model_name_or_path": str(tiny_llama_dir), "stage": "grpo", "do_train": True, "finetuning_type": "freeze",
        "freeze_trainable_layers": 1, "dataset": "toy", "template": "qwen", "output_dir": str(tmp_path / "out"),
        "report_to": "none", "per_device_train_batch_size": 4, "num_generations": 4, "max_steps": 3,
        "learning_rate": 5e-2, "logging_steps": 1, "save_strategy": "no", "max_new_tokens": 6, "seed": 0, "top_k": 0,
        "top_p": 1.0, "temperature": 1.0, "reward_funcs": "lengths.py:score", "beta": 0.1, "loss_type": "grpo",
        "scale_rewards": "batch"}, config_path=tmp_path / "grpo.yaml"))
    kl = [json.loads(line)["kl"] for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()
          if "kl" in json.loads(line)]
    assert kl[0] == 0.0 and kl[-1] > 0.0


def test_accuracy_without_answers_is_refused(tmp_path, tiny_llama_dir, monkeypatch):
    from tuneforge.train.grpo import run_grpo

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.json").write_text(json.dumps([{"instruction": f"q{i}", "output": ""} for i in range(4)]))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": "toy.json"}}))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"`accuracy` compares completions with the dataset's answers, and the "
                                          r"dataset \(toy\) has none"):
        run_grpo(load_config_dict({"model_name_or_path": str(tiny_llama_dir), "stage": "grpo", "do_train": True,
                                   "dataset": "toy", "template": "qwen", "output_dir": str(tmp_path / "out"),
                                   "per_device_train_batch_size": 2, "num_generations": 2}))
