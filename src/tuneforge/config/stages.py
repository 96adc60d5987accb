"""The stage registry: one record per training stage, the only place that lists the stages.

A record says what the stage's data looks like (`data`: the encoder and columns the data layer uses for
that kind, see data/stage_encode.py), which recipe runs it (`recipe`: "module:function" under
tuneforge.train), the web UI's label and the keys its Train tab shows, and the stage's own config checks
(run by config/validate.py with the key view). Adding a stage: a recipe file in train/ plus one line here
(and a data kind in data/stage_encode.py if none fits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, NotSupportedError
from .args import split_names
from .grpo_args import GRPO_KEYS

# data kinds: text (raw documents, blocks), supervised (prompt -> answer), pairwise (prompt -> chosen /
# rejected), feedback (prompt -> answer + kto_tag), prompt (prompt only, the answer kept as a reference)
DATA_KINDS = ("text", "supervised", "pairwise", "feedback", "prompt")


def _check_preference(v: Any) -> None:
    """DPO: a positive beta; label smoothing in [0, 0.5] and only for the sigmoid loss; a BCO weight >= 0 and
    only for the losses with a reference model."""
    _positive(v, "pref_beta")
    smoothing = v["dpo_label_smoothing"]
    if not 0 <= smoothing <= 0.5:
        raise ConfigError(f"{v.where('dpo_label_smoothing')}: `dpo_label_smoothing` must be in [0, 0.5], got {smoothing}")
    if smoothing and v["pref_loss"] != "sigmoid":
        raise ConfigError(f"{v.where('dpo_label_smoothing')}: `dpo_label_smoothing` only applies to "
                          f"`pref_loss: sigmoid` (found pref_loss: {v['pref_loss']})")
    bco = v["pref_bco_weight"]
    if bco < 0:
        raise ConfigError(f"{v.where('pref_bco_weight')}: `pref_bco_weight` must be >= 0 (0: no BCO loss), got {bco}")
    if bco > 1e-6 and v["pref_loss"] in ("orpo", "simpo"):  # LF silently leaves the BCO term out for these
        raise ConfigError(f"{v.where('pref_bco_weight')}: `pref_bco_weight` adds a BCO loss against the reference "
                          f"model; `pref_loss: {v['pref_loss']}` has none, so it would do nothing (LLaMA-Factory "
                          "ignores it there); remove it or use sigmoid / hinge / ipo / kto_pair")


def _check_kto(v: Any) -> None:
    for key in ("pref_beta", "kto_chosen_weight", "kto_rejected_weight"):
        _positive(v, key)


def _check_ppo(v: Any) -> None:
    """PPO samples its rollouts and has no evaluation (LF neither)."""
    if v["num_beams"] != 1:
        raise ConfigError(f"{v.where('num_beams')}: `num_beams: {v['num_beams']}`; PPO samples its rollouts, "
                          "expected num_beams: 1")
    if v["do_eval"] or v["val_size"] or v["eval_dataset"]:
        raise NotSupportedError(f"{v.where('do_eval', 'val_size', 'eval_dataset')}: evaluation during PPO is not "
                                "supported (LLaMA-Factory neither); remove do_eval / val_size / eval_dataset")
    if v["compute_accuracy"]:
        raise NotSupportedError(f"{v.where('compute_accuracy')}: `compute_accuracy`: PPO has no evaluation to "
                                "compute it in; remove it")
    kind, method = v["reward_model_type"], v["finetuning_type"]
    # LF: the reward adapter is a second adapter of the policy, of its kind (a lora one with a full policy: at load)
    if (kind == "oft" and method != "oft") or (kind == "lora" and method == "oft" and v["reward_model"]):
        raise ConfigError(f"{v.where('reward_model_type', 'finetuning_type')}: `reward_model_type: {kind}` loads the "
                          f"reward model as a second adapter of the policy, so it needs `finetuning_type: {kind}` "
                          f"(got `{method}`); use `reward_model_type: full` with a full reward model")


def _check_grpo(v: Any) -> None:
    """GRPO samples groups of completions (so it must sample), trains in one process through the HF Trainer, and
    has no evaluation; its own keys are in range (config/grpo_args.py)."""
    if v["num_generations"] < 2:
        raise ConfigError(f"{v.where('num_generations')}: `num_generations` must be at least 2 (advantages compare "
                          f"the completions of one prompt), got {v['num_generations']}")
    if not v["do_sample"] or v["num_beams"] != 1 or v["temperature"] <= 0:
        raise ConfigError(f"{v.where('do_sample', 'num_beams', 'temperature')}: GRPO samples its completions: "
                          "expected do_sample: true, num_beams: 1 and a temperature above 0 (else every completion "
                          "of a prompt is the same and nothing is learned)")
    for key in ("epsilon", "num_iterations", "max_new_tokens"):  # max_new_tokens: the completion budget
        _positive(v, key)
    if v["epsilon_high"] is not None and v["epsilon_high"] <= 0:
        raise ConfigError(f"{v.where('epsilon_high')}: `epsilon_high` must be positive, got {v['epsilon_high']}")
    if v["beta"] < 0:
        raise ConfigError(f"{v.where('beta')}: `beta` must be >= 0 (0: no KL penalty), got {v['beta']}")
    funcs, weights = split_names(v["reward_funcs"]), split_names(v["reward_weights"])
    if not funcs:
        raise ConfigError(f"{v.where('reward_funcs')}: `reward_funcs` is empty; name at least one (accuracy, format, "
                          "length, file.py:function)")
    if weights and len(weights) != len(funcs):
        raise ConfigError(f"{v.where('reward_weights')}: {len(weights)} `reward_weights` for {len(funcs)} "
                          f"`reward_funcs` ({', '.join(funcs)}); give one weight per function")
    for key in ("deepspeed", "fsdp"):
        if v[key]:
            raise NotSupportedError(f"{v.where(key)}: `{key}` with `stage: grpo` is not supported yet (GRPO runs in "
                                    f"one process); remove `{key}`")
    if v["do_eval"] or v["val_size"] or v["eval_dataset"]:
        raise NotSupportedError(f"{v.where('do_eval', 'val_size', 'eval_dataset')}: evaluation during GRPO is not "
                                "supported yet; measure before and after with `tuneforge eval recall` or predict")


def check_stage_keys(v: Any) -> None:
    """A stage's own keys set in a config of another stage would do nothing: refused."""
    for stage in STAGES.values():
        given = [key for key in stage.own_keys if v.given(key)]
        if given and v["stage"] != stage.name:
            raise ConfigError(f"{v.where(*given)}: only `stage: {stage.name}` reads {', '.join(f'`{k}`' for k in given)} "
                              f"(this config has stage `{v['stage']}`); remove them")


def _check_pt(v: Any) -> None:
    if v["neat_packing"]:
        raise NotSupportedError(f"{v.where('neat_packing')}: `neat_packing` for stage pt is not supported yet; "
                                "remove it to pack documents into blocks")


def _positive(v: Any, key: str) -> None:
    if v[key] <= 0:
        raise ConfigError(f"{v.where(key)}: `{key}` must be positive, got {v[key]}")


@dataclass(frozen=True)
class Stage:
    name: str
    data: str  # one of DATA_KINDS
    recipe: str  # "module:function" under tuneforge.train
    label: str  # the web UI's name for it
    ui_keys: tuple[str, ...] = ()  # stage keys the web UI's Train tab shows
    check: Callable[[Any], None] | None = None  # the stage's own config checks (a key view)
    unsupported: str | None = None  # why it cannot run yet; None: it can
    own_keys: tuple[str, ...] = ()  # keys only this stage reads (refused with another stage)

    @property
    def ranking(self) -> bool:
        """Needs ranking data (chosen / rejected answers)."""
        return self.data == "pairwise"


STAGES = MappingProxyType({stage.name: stage for stage in (
    Stage("sft", "supervised", "sft:run_sft", "Supervised Fine-Tuning"),
    Stage("pt", "text", "pt:run_pt", "Pre-Training", check=_check_pt),
    Stage("rm", "pairwise", "rm:run_rm", "Reward Modeling"),
    Stage("dpo", "pairwise", "dpo:run_dpo", "DPO", ("pref_beta", "pref_ftx", "pref_loss"), _check_preference),
    Stage("kto", "feedback", "kto:run_kto", "KTO", ("pref_beta", "pref_ftx"), _check_kto),
    Stage("ppo", "prompt", "ppo:run_ppo", "PPO", check=_check_ppo),
    Stage("grpo", "prompt", "grpo:run_grpo", "GRPO", ("num_generations", "reward_funcs", "beta", "loss_type"),
          _check_grpo, own_keys=GRPO_KEYS),
)})


def stage_record(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage `{name}`; expected one of: {', '.join(STAGES)}")
    return STAGES[name]
