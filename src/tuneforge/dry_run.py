"""`--dry-run`: read and check everything a command names that exists locally, print the plan, exit.

No weights are loaded and nothing is written: the config is validated, the model folder's config.json
and tokenizer are read (a hub id is only named, never contacted), the template is resolved, every dataset
is read and converted (rows counted, bad rows reported), and output_dir / export_dir are checked the way
the real run checks them. Exit status 0 only when the real run would start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.config.args import split_names
from tuneforge.config.parser import RunConfig
from tuneforge.config.stages import stage_record
from tuneforge.errors import TuneforgeError
from tuneforge.config.validate_parallel import ray_requested
from tuneforge.utils.env import env_enabled

REFUSED = object()  # what Plan.check returns for a step that was refused


@dataclass
class Plan:
    command: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def add(self, what: str, text: str) -> None:
        self.lines.append((what, text))

    def check(self, what: str, step) -> object:
        """Run one check; a refusal is recorded (with `what`) instead of stopping the plan: REFUSED."""
        try:
            return step()
        except TuneforgeError as err:
            self.refused.append(f"{what}: {err}")
            return REFUSED

    def format(self) -> str:
        width = max((len(what) for what, _ in self.lines), default=0)
        out = [f"tuneforge {self.command} --dry-run: the plan (no weights loaded, nothing written)"]
        out += [f"  {what.ljust(width)}  {text}" for what, text in self.lines]
        if self.refused:
            out.append(f"would be refused ({len(self.refused)}):")
            out += [f"  - {reason}" for reason in self.refused]
            out.append("dry run: the real run would stop; fix the above first")
        else:
            out.append("dry run: OK -- the real run would start")
        return "\n".join(out)


def refused_plan(command: str, error: TuneforgeError) -> Plan:
    """The plan of a config that does not even validate."""
    plan = Plan(command)
    plan.refused.append(f"config: {error}")
    return plan


def make_plan(command: str, cfg: RunConfig) -> Plan:
    plan = Plan(command)
    if cfg.config_path:
        plan.add("config", str(cfg.config_path))
    if command == "train":
        _plan_train(plan, cfg)
    elif command == "export":
        plan.add("task", "merge adapters and save a standalone model")
        _plan_model(plan, cfg)
        from tuneforge.export import check_export_args, check_export_dir

        export_dir = plan.check("export_dir", lambda: check_export_args(cfg.model))
        if export_dir is not REFUSED and plan.check("export_dir", lambda: check_export_dir(cfg, export_dir)) is not REFUSED:
            plan.add("export_dir", f"{export_dir} ({'a previous export, replaced' if export_dir.exists() else 'new'})")
        _plan_template(plan, cfg)
    elif command == "chat":
        plan.add("task", "chat with the model")
        _plan_model(plan, cfg)
        _plan_template(plan, cfg)
    elif command == "eval":
        plan.add("task", "recall of the training facts (greedy answers to the training questions)")
        _plan_model(plan, cfg)
        _plan_template(plan, cfg)
        _plan_datasets(plan, cfg)
    return plan


# ----------------------------------------------------------------------------------------------
def _plan_train(plan: Plan, cfg: RunConfig) -> None:
    f = cfg.finetuning
    if cfg.training.do_train or not cfg.training.do_predict:
        method = f.finetuning_type
        if method == "lora":
            from tuneforge.config.args import effective_lora_alpha

            method += f" (rank {f.lora_rank}, alpha {effective_lora_alpha(f)}, target {','.join(split_names(f.lora_target))})"
        elif method == "oft":
            size = f"{f.oft_rank} blocks per layer" if f.oft_rank else f"block size {f.oft_block_size}"
            target = split_names(f.oft_target) if split_names(f.oft_target) != ("all",) else split_names(f.lora_target)
            method += f" ({size}, target {','.join(target)})"
        if cfg.model.quantization_bit is not None:
            method += f", {cfg.model.quantization_bit}-bit base (QLoRA)"
        plan.add("task", f"train: stage {f.stage} ({stage_record(f.stage).data} data), {method}")
    if cfg.training.do_predict:
        rows = ", ".join(split_names(cfg.data.eval_dataset)) or f"the val_size split ({cfg.data.val_size})"
        what = (f"score the chosen and rejected answers of {rows} (loss, accuracy)" if f.stage == "rm"
                else f"generate answers to {rows} and score them")
        plan.add("task", f"predict{' with the trained model' if cfg.training.do_train else ''}: {what}")
    plan.add("launcher", _launcher(cfg))
    _plan_model(plan, cfg)
    _plan_template(plan, cfg)
    _plan_datasets(plan, cfg)
    if cfg.training.do_train:
        _plan_output_dir(plan, cfg)


def _launcher(cfg: RunConfig) -> str:
    """How `tuneforge train` would run this config: the processes it starts (LF's launch variables) and the engine."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda ({gpus} visible)" if gpus else "cpu"
    args, env = cfg.training, os.environ
    engine = " with DeepSpeed" if args.deepspeed else (" with FSDP" if args.fsdp else "")
    if ray_requested(args.ray_num_workers, env):
        return f"Ray Train: {args.ray_num_workers} workers{engine}, {args.resources_per_worker} each"
    if env.get("WORLD_SIZE"):
        return f"torchrun: world size {env['WORLD_SIZE']}, this is rank {env.get('RANK', '?')}{engine}, device {device}"
    if env_enabled("FORCE_TORCHRUN", env) or gpus > 1:
        processes = int(env.get("NPROC_PER_NODE") or max(gpus, 1)) * int(env.get("NNODES") or 1)
        return f"torchrun: {processes} processes{engine}, device {device} (FORCE_TORCHRUN / several GPUs)"
    return f"one process{engine}, device {device}"


def _plan_model(plan: Plan, cfg: RunConfig) -> None:
    from tuneforge.model.loader import BUILTIN_PREFIX, looks_local

    name = str(cfg.model.model_name_or_path or "")
    if not name:
        plan.refused.append("model_name_or_path: not set")
        return
    if name.startswith(BUILTIN_PREFIX):
        from tuneforge.model.demo import DEMO_MODEL_NAME, demo_model_dir

        if name != DEMO_MODEL_NAME:
            plan.refused.append(f"model_name_or_path: unknown built-in model `{name}` (the built-in is {DEMO_MODEL_NAME})")
            return
        folder = demo_model_dir()
        plan.add("model", f"{name} -> {folder}" + ("" if folder.is_dir() else " (converted on the first real run)"))
        if folder.is_dir():
            _describe_model_folder(plan, folder, cfg)
        return
    path = Path(name).expanduser()
    if not path.exists() and cfg.config_dir is not None and (cfg.config_dir / name).exists():
        path = cfg.config_dir / name
    if path.exists():
        plan.add("model", f"local {'file' if path.is_file() else 'folder'} {path}")
        if path.is_dir():
            _describe_model_folder(plan, path, cfg)
    elif looks_local(name):
        plan.refused.append(f"model_name_or_path: {name} does not exist")
    else:
        plan.add("model", f"hub id {name}: not contacted in a dry run (downloaded by the real run, needs internet)")
    for index, adapter in enumerate(split_names(cfg.model.adapter_name_or_path)):
        folder = Path(adapter).expanduser()
        what = f"adapter {index + 1}"
        if (folder / "adapter_config.json").is_file():
            base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
            plan.add(what, f"{folder} (trained on {base})")
        elif looks_local(adapter) or folder.exists():
            plan.refused.append(f"adapter_name_or_path: {adapter} has no adapter_config.json")
        else:
            plan.add(what, f"hub id {adapter}: not contacted in a dry run")


def _describe_model_folder(plan: Plan, folder: Path, cfg: RunConfig) -> None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        plan.refused.append(f"model_name_or_path: {folder} has no config.json; expected a Hugging Face model folder")
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    from tuneforge.model.loader import multimodal_problem

    problem = multimodal_problem(config, str(folder), cfg.finetuning.stage if plan.command == "train" else None)
    if problem:
        plan.refused.append(problem)
    arch = ", ".join(config.get("architectures") or [config.get("model_type", "?")])
    text = config.get("text_config") or config  # a vision-language model: its language model's shape
    plan.add("", f"{arch}: {text.get('num_hidden_layers', '?')} layers, hidden {text.get('hidden_size', '?')}, "
                 f"vocabulary {text.get('vocab_size', '?')}" + (", vision tower" if "vision_config" in config else ""))


def _local_model(cfg: RunConfig) -> bool:
    from tuneforge.model.demo import demo_model_dir
    from tuneforge.model.loader import BUILTIN_PREFIX

    name = str(cfg.model.model_name_or_path or "")
    if name.startswith(BUILTIN_PREFIX):
        return demo_model_dir().is_dir()
    path = Path(name).expanduser()
    return path.is_dir() or (cfg.config_dir is not None and (cfg.config_dir / name).is_dir())


def _plan_template(plan: Plan, cfg: RunConfig) -> None:
    if stage_record(cfg.finetuning.stage).data == "text" and plan.command == "train":
        plan.add("template", "none (raw text)")
        return
    name = cfg.data.template or "auto"
    if _local_model(cfg):  # the tokenizer is read (not the weights): the real run's own template checks
        from tuneforge.train.workflow import load_tokenizer_and_template

        loaded = plan.check("template", lambda: load_tokenizer_and_template(cfg))
        if loaded is not REFUSED:
            plan.add("template", f"{loaded[1].name}" + (" (the tokenizer's own chat template)" if name == "auto" else ""))
        return
    from tuneforge.data.templates import get_template

    if name == "auto":
        plan.add("template", "auto: the model's own chat template (read when the model is there)")
    elif plan.check("template", lambda: get_template(name, None, enable_thinking=cfg.data.enable_thinking,
                                                     tool_format=cfg.data.tool_format)) is not REFUSED:
        plan.add("template", f"{name} (built-in)")


def _plan_datasets(plan: Plan, cfg: RunConfig) -> None:
    from tuneforge.data.pipeline import check_stage
    from tuneforge.data.registry import load_dataset_specs
    from tuneforge.data.report import DataReport
    from tuneforge.data.rows import read_conversations

    data = cfg.data
    if not split_names(data.dataset) and not split_names(data.eval_dataset):
        plan.refused.append("dataset: not set; name at least one dataset (from dataset_info.json or a file path)")
        return
    if data.tokenized_path:
        from tuneforge.data.pipeline import tokenized_summary

        summary = plan.check("tokenized_path", lambda: tokenized_summary(data.tokenized_path, cfg.finetuning.stage))
        if summary is REFUSED:
            return
        if summary is not None:  # as the run: the saved encoding, no dataset read
            plan.add("data", summary)
            return
        plan.add("data", f"encoded as below, then saved to tokenized_path {data.tokenized_path}")
    for split, names in (("train", data.dataset), ("eval", data.eval_dataset)):
        if not split_names(names):
            continue
        specs = plan.check(f"{split} datasets", lambda: load_dataset_specs(names, data.dataset_dir or "data", cfg.config_dir))
        if specs is REFUSED or plan.check(f"{split} datasets", lambda: check_stage(specs, cfg.finetuning.stage)) is REFUSED:
            continue
        for spec in specs:
            if spec.load_from != "file":
                from tuneforge.data.loaders import origin_of

                hub = origin_of(spec)
                plan.add(f"{split} data", f"{spec.name} ({spec.formatting}, {spec.load_from} {hub}): not contacted in a dry run")
                continue
            report = DataReport()
            seed = cfg.training.seed
            rows = plan.check(f"dataset {spec.name}", lambda: read_conversations([spec], split, data, seed, report))
            if rows is REFUSED:
                continue
            stats = report.stats(spec.name, split)
            dropped = sum(stats.dropped.values())
            note = f", {dropped} bad rows ({'; '.join(sorted(stats.dropped))})" if dropped else ""
            plan.add(f"{split} data", f"{spec.name} ({spec.formatting}{', ranking' if spec.ranking else ''}, {spec.local_path}): "
                                      f"{stats.rows_read} rows, {len(rows)} used{note}")


def _plan_output_dir(plan: Plan, cfg: RunConfig) -> None:
    from tuneforge.train.resume import check_output_dir, detect_resume

    output_dir = Path(cfg.training.output_dir)
    if plan.check("output_dir", lambda: check_output_dir(cfg)) is REFUSED:
        return
    resume = plan.check("output_dir", lambda: detect_resume(cfg.training))
    if resume is REFUSED:
        return
    if resume:
        plan.add("output_dir", f"{output_dir}: resumes from {resume}")
    elif cfg.training.overwrite_output_dir and output_dir.is_dir():
        plan.add("output_dir", f"{output_dir}: exists; overwrite_output_dir removes its old checkpoints")
    else:
        plan.add("output_dir", f"{output_dir} ({'exists, no checkpoint' if output_dir.is_dir() else 'new'})")
