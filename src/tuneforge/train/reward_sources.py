"""Where PPO's scores come from: `reward_model` + `reward_model_type` (LLaMA-Factory's keys).

Every source has `score(prompts, responses) -> Tensor [B]` (float32, CPU) taking token-id lists,
the response including its end-of-turn token. The value is read at the last token of prompt + response.

- `lora`: `reward_model` is a LoRA adapter (with `value_head.safetensors`, as `stage: rm` saves it)
  trained on the same base model as the policy. It is loaded as a second adapter named `reward`
  into the policy's own PeftModel and switched on only while scoring: no second copy of the base.
- `full`: `reward_model` is a folder holding a full reward model (+ `reward_model_adapters`).
- `api`: `reward_model` is an http(s) URL. Each prompt + response is decoded with its special
  tokens and POSTed as `{"model": "model", "messages": [text, ...]}`; the answer must be
  `{"scores": [float, ...]}` (LLaMA-Factory's `get_rewards_from_server` protocol).
- `FunctionReward`: any Python callable, for tests and custom rewards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from tuneforge.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

REWARD_ADAPTER_NAME = "reward"
POLICY_ADAPTER_NAME = "default"


class RewardSource(Protocol):
    def score(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> torch.Tensor: ...


def pack_sequences(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_i + response_i for every i concatenated into one padding-free row: (input_ids, position_ids)."""
    ids: list[int] = []
    positions: list[int] = []
    for prompt, response in zip(prompts, responses):
        sequence = [*prompt, *response]
        ids.extend(sequence)
        positions.extend(range(len(sequence)))
    return (torch.tensor([ids], dtype=torch.long, device=device),
            torch.tensor([positions], dtype=torch.long, device=device))


class FunctionReward:
    """Scores from `fn(prompt_ids, response_ids) -> float`, one call per rollout."""

    def __init__(self, fn: Callable[[list[int], list[int]], float]) -> None:
        self.fn = fn

    def score(self, prompts, responses) -> torch.Tensor:
        return torch.tensor([float(self.fn(list(p), list(r))) for p, r in zip(prompts, responses)], dtype=torch.float32)


class ValueHeadReward:
    """A frozen `ValueHeadModel` (a full reward model): its value at the last token of each sequence."""

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def score(self, prompts, responses) -> torch.Tensor:
        device = next(self.model.parameters()).device
        input_ids, position_ids = pack_sequences(prompts, responses, device)
        return self.model.sequence_values(input_ids, position_ids=position_ids).float().cpu()


class LoraAdapterReward:
    """The reward adapter + its value head, run on the policy's base model (adapter switched per call)."""

    def __init__(self, policy, adapter_path: str) -> None:
        from tuneforge.model.value_head import load_value_head_state

        peft_model = policy.pretrained_model
        if not hasattr(peft_model, "load_adapter") or not hasattr(peft_model, "peft_config"):
            raise ConfigError("reward_model_type: lora loads the reward model as a second LoRA adapter of the "
                              "policy, so the policy must use `finetuning_type: lora`; use `reward_model_type: full` "
                              "with a full reward model otherwise")
        folder = Path(adapter_path).expanduser()
        if not (folder / "adapter_config.json").is_file():
            hint = " (it holds a full model: set `reward_model_type: full`)" if (folder / "config.json").is_file() else ""
            raise ModelError(f"reward_model: {adapter_path} is not a LoRA adapter folder (no adapter_config.json){hint}; "
                             "with `reward_model_type: lora` it must be the output_dir of a `stage: rm` LoRA run")
        state = load_value_head_state(folder)  # ModelError naming the file when it is not a reward model
        self.policy = policy
        self.head = nn.Linear(policy.v_head.in_features, 1, dtype=torch.float32).to(policy.v_head.weight.device)
        with torch.no_grad():
            self.head.weight.copy_(state["v_head.summary.weight"])
            self.head.bias.copy_(state["v_head.summary.bias"])
        self.head.requires_grad_(False)
        self.active_adapter = getattr(peft_model, "active_adapter", POLICY_ADAPTER_NAME)
        try:
            peft_model.load_adapter(str(folder), adapter_name=REWARD_ADAPTER_NAME, is_trainable=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"reward_model: could not load the LoRA adapter {adapter_path} onto the policy's base "
                             f"model: {str(exc).splitlines()[0]}") from exc
        peft_model.set_adapter(self.active_adapter)  # loading must not change which adapter trains

    @torch.no_grad()
    def score(self, prompts, responses) -> torch.Tensor:
        peft_model = self.policy.pretrained_model
        device = self.head.weight.device
        input_ids, position_ids = pack_sequences(prompts, responses, device)
        from tuneforge.model.value_head import last_token_indices

        rows, columns = last_token_indices(input_ids, position_ids=position_ids)
        peft_model.set_adapter(REWARD_ADAPTER_NAME, inference_mode=True)
        try:
            hidden = self.policy.hidden_states(input_ids, position_ids=position_ids)
        finally:
            peft_model.set_adapter(self.active_adapter)  # trainable again
        return self.head(hidden[rows, columns].float()).squeeze(-1).cpu()


class ApiReward:
    """POST the decoded rollouts to `url`; expects `{"scores": [...]}` with one number per rollout."""

    def __init__(self, url: str, tokenizer, timeout: float = 60.0) -> None:
        self.url = url
        self.tokenizer = tokenizer
        self.timeout = timeout

    def score(self, prompts, responses) -> torch.Tensor:
        texts = self.tokenizer.batch_decode([[*p, *r] for p, r in zip(prompts, responses)], skip_special_tokens=False)
        body = json.dumps({"model": "model", "messages": texts}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        where = f"reward_model (api) {self.url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise ModelError(f"{where} answered HTTP {exc.code} {exc.reason}; expected 200 with {{\"scores\": [...]}}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelError(f"{where} could not be reached ({reason}); is the reward server running?") from exc
        try:
            scores = json.loads(payload)["scores"]
            values = [float(s[0] if isinstance(s, (list, tuple)) else s) for s in scores]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"{where} answered {payload[:200]!r}; expected JSON {{\"scores\": [number, ...]}}") from exc
        if len(values) != len(texts):
            raise ModelError(f"{where} returned {len(values)} scores for {len(texts)} rollouts; expected one per rollout")
        return torch.tensor(values, dtype=torch.float32)


def build_reward_source(cfg, policy, tokenizer, compute_dtype=None) -> RewardSource:
    """The reward source that `reward_model` / `reward_model_type` describe."""
    finetuning = cfg.finetuning
    kind, location = finetuning.reward_model_type, finetuning.reward_model
    if not location:
        raise ConfigError("stage ppo needs `reward_model`: a reward model trained with `stage: rm` "
                          "(its output_dir), or a URL with `reward_model_type: api`")
    if kind == "api":
        if not str(location).startswith(("http://", "https://")):
            raise ConfigError(f"reward_model: `{location}` is not an http(s) URL, which `reward_model_type: api` expects")
        logger.info("reward: scores from the API at %s", location)
        return ApiReward(str(location), tokenizer)
    if kind in ("lora", "oft"):  # an adapter of the policy's kind (config/stages.py)
        if getattr(finetuning, "reward_model_adapters", None):
            raise ConfigError("reward_model_adapters is for `reward_model_type: full`; with `lora` the adapter "
                              "itself is `reward_model`")
        logger.info("reward: LoRA adapter %s on the policy's base model", location)
        return LoraAdapterReward(policy, str(location))
    if kind == "full":
        return ValueHeadReward(_load_full_reward_model(cfg, str(location), compute_dtype))
    raise ConfigError(f"reward_model_type: `{kind}` is not one of lora, oft, full, api")


def _load_full_reward_model(cfg, location: str, compute_dtype):
    from tuneforge.model.loader import resolve_model_path
    from tuneforge.config.args import split_names
    from tuneforge.model.value_head import load_value_head_model

    adapters = split_names(cfg.finetuning.reward_model_adapters)
    path = Path(location).expanduser()
    if not adapters and (path / "adapter_config.json").is_file():
        raise ConfigError(f"reward_model: {location} is a LoRA adapter; set `reward_model_type: lora` (same base "
                          "model as the policy), or `reward_model: <its base model>` with `reward_model_adapters`")
    model_args = dataclasses.replace(cfg.model, model_name_or_path=location,
                                     adapter_name_or_path=tuple(adapters) or None,
                                     quantization_bit=cfg.finetuning.reward_model_quantization_bit)
    finetuning_args = dataclasses.replace(cfg.finetuning, finetuning_type="lora" if adapters else "full")
    head_dir = adapters[-1] if adapters else resolve_model_path(location)
    logger.info("reward: full reward model %s%s", location, f" + adapters {','.join(adapters)}" if adapters else "")
    return load_value_head_model(model_args, finetuning_args, is_trainable=False, compute_dtype=compute_dtype,
                                 head_dir=head_dir)
