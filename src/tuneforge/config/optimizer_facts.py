"""LLaMA-Factory's own optimizers as facts the config layer checks and train/optimizers.py builds from."""

# key -> (module, pip extra, name): the packages of the optimizers; Muon is torch's own.
PACKAGES = {
    "use_galore": ("galore_torch", "galore", "GaLore"),
    "use_apollo": ("apollo_torch", "apollo", "APOLLO"),
    "use_badam": ("badam", "badam", "BAdam"),
    "use_adam_mini": ("adam_mini", "adam-mini", "Adam-mini"),
}
OPTIMIZER_KEYS = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")
# the `optim` values each projection optimizer has a class for (LF: anything else is NotImplementedError)
GALORE_OPTIMS = {"adamw_torch": "GaLoreAdamW", "adamw_torch_fused": "GaLoreAdamW", "adamw_bnb_8bit": "GaLoreAdamW8bit",
                 "adamw_8bit": "GaLoreAdamW8bit", "paged_adamw_8bit": "GaLoreAdamW8bit", "adafactor": "GaLoreAdafactor"}
APOLLO_OPTIMS = {"adamw_torch": "APOLLOAdamW", "adamw_torch_fused": "APOLLOAdamW"}


def missing_package_message(key: str) -> str:
    module, extra, name = PACKAGES[key]
    return (f"`{key}: true` ({name}) needs the {module.replace('_', '-')} package, which is not installed: "
            f"pip install 'tuneforge[{extra}]'")
