"""Config checks of LLaMA-Factory's own optimizers (GaLore, APOLLO, BAdam, Adam-mini, Muon; train/optimizers.py).

Part of `validate.check_consistency`; the package probe is passed in from validate.py (where the tests replace it).
"""

from __future__ import annotations

from ..errors import ConfigError, NotSupportedError
from .optimizer_facts import APOLLO_OPTIMS, GALORE_OPTIMS, OPTIMIZER_KEYS, PACKAGES, missing_package_message


def check_optimizers(v, package_available) -> None:
    """LF's own optimizers (train/optimizers.py): one at a time, the combinations LF refuses, their packages."""
    chosen = [key for key in OPTIMIZER_KEYS if v[key]]
    if not chosen:
        return
    import torch


    projection = [key for key in chosen if key in ("use_galore", "use_apollo", "use_badam")]
    if projection and v["finetuning_type"] == "lora":
        raise ConfigError(f"{v.where(*projection, 'finetuning_type')}: `{projection[0]}` cannot be used with "
                          "`finetuning_type: lora` (LLaMA-Factory: \"Cannot use LoRA with GaLore, APOLLO or BAdam "
                          "together\"); it trains the full weights: use `finetuning_type: full`")
    both = chosen + (["loraplus_lr_ratio"] if v["loraplus_lr_ratio"] is not None else [])
    if len(both) > 1:
        raise ConfigError(f"{v.where(*both)}: {' and '.join(f'`{key}`' for key in both)} each choose the optimizer; "
                          "set only one (LLaMA-Factory refuses GaLore, APOLLO and BAdam together and would quietly "
                          "use only the first of the others)")
    key = chosen[0]
    where = v.where(key)
    if v["stage"] == "ppo":
        raise NotSupportedError(f"{where}: `{key}` is not supported yet by tuneforge with stage ppo (its own PPO "
                                "loop builds a plain optimizer); it works with pt, sft, rm, dpo and kto")
    sharded = next((name for name in ("deepspeed", "fsdp") if v[name]), None)
    if sharded is not None:
        if key in ("use_galore", "use_apollo") and sharded == "deepspeed":
            raise ConfigError(f"{v.where(key, 'deepspeed')}: `{key}` cannot be used with `deepspeed` (LLaMA-Factory: "
                              "\"GaLore and APOLLO are incompatible with DeepSpeed yet\")")
        raise NotSupportedError(f"{v.where(key, sharded)}: `{key}` with `{sharded}` is not supported yet by tuneforge: "
                                "the optimizer needs each weight whole in one process, and sharding hands it "
                                "flattened pieces (LLaMA-Factory runs BAdam sharded only through its DeepSpeed "
                                "ZeRO-3 hooks, which tuneforge does not wire); train without it")
    if key in ("use_galore", "use_apollo"):
        prefix = key.removeprefix("use_")
        optim = getattr(v["optim"], "value", v["optim"])
        table = GALORE_OPTIMS if key == "use_galore" else APOLLO_OPTIMS
        if optim not in table:
            raise ConfigError(f"{v.where('optim', key)}: `{key}` works with `optim` {', '.join(sorted(table))} "
                              f"(LLaMA-Factory has no {prefix} class for others); got `optim: {optim}`")
        for name in (f"{prefix}_rank", f"{prefix}_update_interval"):
            if v[name] < 1:
                raise ConfigError(f"{v.where(name)}: `{name}` must be at least 1, got {v[name]}")
        if v[f"{prefix}_layerwise"] and v["gradient_accumulation_steps"] != 1:
            raise ConfigError(f"{v.where(f'{prefix}_layerwise', 'gradient_accumulation_steps')}: `{prefix}_layerwise` "
                              "updates each weight as soon as its gradient is ready, so it cannot accumulate: set "
                              f"`gradient_accumulation_steps: 1` (got {v['gradient_accumulation_steps']}) as "
                              "LLaMA-Factory requires")
    if key == "use_badam":
        if v["badam_mode"] == "ratio" and v["badam_update_ratio"] <= 1e-6:
            raise ConfigError(f"{v.where('badam_update_ratio')}: `badam_update_ratio` must be positive with "
                              f"`badam_mode: ratio`, got {v['badam_update_ratio']}")
        interval = v["badam_switch_interval"]
        if interval is not None and interval != -1 and interval < 1:
            raise ConfigError(f"{v.where('badam_switch_interval')}: `badam_switch_interval` is a number of steps "
                              f"(or -1: never switch blocks), got {interval}")
    if key == "use_muon" and not hasattr(torch.optim, "Muon"):
        raise NotSupportedError(f"{where}: `use_muon` needs torch.optim.Muon (torch >= 2.9); this is torch "
                                f"{torch.__version__}")
    if key in PACKAGES and not package_available(PACKAGES[key][0]):
        raise NotSupportedError(f"{where}: {missing_package_message(key)}")
