"""`tuneforge export`: base + LoRA adapters -> one merged model folder (safetensors shards, tokenizer with
the run's chat template, generation config, Ollama Modelfile).

Before anything is written the merged model's logits are compared with the adapter model's on a
probe input. `export_dir` must be new, empty, or a previous tuneforge export (its marker file lists
the files it wrote), and must not be or contain the current directory, the model, an adapter or the
output folder: anything else is refused before the model loads. The folder is built complete in a
staging folder next to it and put in place with one rename, so a failed export never destroys an
existing good one (utils/folders.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from tuneforge.errors import ConfigError, ModelError, NotSupportedError
from tuneforge.model.adapters import attach_adapters
from tuneforge.model.vocab import prepare_vocab
from tuneforge.model.loader import load_base_model, parse_dtype, resolve_model_source
from tuneforge.model.tokenizer_loading import load_tokenizer
from tuneforge.model.saved_config import saved_dtype
from tuneforge.model.vision import copy_processor_files
from tuneforge.config.args import DataArguments, ModelArguments, split_names
from tuneforge.config.parser import RunConfig
from tuneforge.utils.folders import check_replaceable, make_staging, replace_folder, write_marker

logger = logging.getLogger(__name__)

PROBE_TEXT = "Hello! Tell me about the history of mathematics in two sentences."
# fp32 logits of a merged and an unmerged LoRA differ only by rounding; real models have logits of
# magnitude ~10-30, so the bound scales with them (1e-4 absolute for logits of magnitude <= 1).
MERGE_TOLERANCE = 1e-4
EXPORT_KIND = "merged model export"


def run_export(cfg: RunConfig) -> Path:
    """Merge, check, and write the exported model to `cfg.model.export_dir`; returns that folder."""
    import torch

    margs, fargs = cfg.model, cfg.finetuning
    if margs.export_device == "cpu" and cfg.data.cutoff_len != DataArguments.cutoff_len:
        # LF: a CPU export with cutoff_len set loads for that length (rope_scaling factor); else as inference
        margs = dataclasses.replace(margs, model_max_length=cfg.data.cutoff_len)
    export_dir = check_export_args(margs)
    check_export_dir(cfg, export_dir)
    adapters = split_names(margs.adapter_name_or_path)
    if adapters and fargs.finetuning_type not in ("lora", "oft"):
        raise ConfigError(f"adapter_name_or_path is set but finetuning_type is `{fargs.finetuning_type}`; use `finetuning_type: lora` (or oft)")

    tokenizer = load_tokenizer(margs)
    template = _run_template(cfg, tokenizer)
    source = resolve_model_source(margs)  # a USE_MODELSCOPE_HUB download: its folder
    out_dtype = _export_dtype(margs, source)
    device = "cuda" if margs.export_device == "auto" and torch.cuda.is_available() else "cpu"

    # Merge and check in float32; cast to the export dtype only at the end.
    model = load_base_model(margs, is_trainable=False, compute_dtype=torch.float32).to(device)
    prepare_vocab(model, margs)  # `add_tokens` / `resize_vocab`: rows for the new tokens, as when training
    if adapters:
        model = attach_adapters(model, adapters, margs, merge_last=False)
        model = merge_with_check(model, tokenizer, device)
    model.requires_grad_(False)
    gguf, gptq = margs.export_format == "gguf", margs.export_quantization_bit is not None
    if not gguf and not gptq:  # GGUF and GPTQ are computed from the float32 weights, written in their own types
        model = model.to(out_dtype)
    _update_generation_config(model, tokenizer, template)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        logger.warning("the tokenizer has %d tokens but the model only %d embeddings (template stop words were added?)",
                       len(tokenizer), model.get_input_embeddings().num_embeddings)

    check_export_dir(cfg, export_dir)  # again: the folder may have changed while the model loaded
    tmp = make_staging(export_dir)
    try:
        if gguf:
            from tuneforge.export_gguf import gguf_file_name, write_gguf

            name = gguf_file_name(source, margs.gguf_type)  # the model folder's name (builtin: its cache folder)
            write_gguf(model, tokenizer, tmp / name, margs.gguf_type, name=name.removesuffix(".gguf"),
                       chat_template=tokenizer.chat_template)
            (tmp / "Modelfile").write_text(ollama_modelfile(template, tokenizer, f"./{name}"), encoding="utf-8")
        elif gptq:  # no Modelfile: Ollama does not read GPTQ weights
            from tuneforge.export_gptq import export_gptq

            export_gptq(model, tokenizer, margs, tmp)
            tokenizer.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, max_shard_size=f"{margs.export_size}GB")
            tokenizer.save_pretrained(tmp)
            copy_processor_files(source, tmp)  # a vision-language model's image processor
            (tmp / "Modelfile").write_text(ollama_modelfile(template, tokenizer), encoding="utf-8")
        write_marker(tmp, EXPORT_KIND, model=str(margs.model_name_or_path), adapters=adapters)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, export_dir)
    kind = f"{margs.export_quantization_bit}-bit GPTQ" if gptq else str(out_dtype).removeprefix("torch.")
    logger.info("exported %s model to %s", kind, export_dir)
    return export_dir


def check_export_args(margs: ModelArguments) -> Path:
    if not margs.export_dir:
        raise ConfigError("export_dir is not set: add `export_dir: path/to/output` to the export config")
    if margs.export_legacy_format:
        raise NotSupportedError("export_legacy_format: true (.bin weights) is not supported: transformers 5 saves safetensors only")
    if margs.export_quantization_bit is not None:
        from tuneforge.export_gptq import check_gptq_args

        check_gptq_args(margs.export_quantization_bit, margs.export_quantization_dataset)
        if margs.export_format == "gguf":
            raise ConfigError("export_quantization_bit (GPTQ) and export_format: gguf exclude each other; GGUF "
                              "quantizes with `gguf_type: q8_0`")
    if margs.mixture_of_depths and (margs.export_format == "gguf" or margs.export_quantization_bit is not None):
        raise NotSupportedError("mixture_of_depths: a mixture-of-depths model exports as safetensors only (llama.cpp "
                                "and GPTQ loaders know no routed layers)")
    if margs.quantization_bit is not None:  # LF: "Cannot merge adapters to a quantized model."
        raise NotSupportedError("quantization_bit: an export merges the adapters into the full-precision model; "
                                "remove `quantization_bit` from the export config (the adapter trained on the "
                                "quantized model merges into the original weights)")
    if margs.export_hub_model_id:
        raise NotSupportedError("export_hub_model_id (push to the hub) is not supported yet: upload the export_dir folder yourself")
    size = margs.export_size
    if not isinstance(size, (int, float)) or size <= 0:
        raise ConfigError(f"export_size: expected a positive number of GB per shard, got {size!r}")
    return Path(margs.export_dir).expanduser().resolve()


def check_export_dir(cfg: RunConfig, export_dir: Path) -> None:
    """Refuse an export_dir whose contents the export would destroy (see the module docstring)."""
    margs = cfg.model
    protected = {"current directory": Path.cwd(), "model": margs.model_name_or_path,
                 "output folder": cfg.training.output_dir}
    for index, adapter in enumerate(split_names(margs.adapter_name_or_path)):
        protected[f"adapter #{index + 1}" if index else "adapter"] = adapter
    check_replaceable(export_dir, EXPORT_KIND, "export_dir", protected)


def _export_dtype(margs: ModelArguments, source: str):
    """`infer_dtype` when set, else the dtype the checkpoint was saved in (float32 if unknown)."""
    import torch

    infer = margs.infer_dtype
    if infer not in (None, "auto"):
        return parse_dtype(infer)
    saved = saved_dtype(source)
    if saved:
        return parse_dtype(saved, f"{Path(source) / 'config.json'} dtype")
    return torch.float32


def merge_with_check(model, tokenizer, device: str = "cpu"):
    """`merge_and_unload` a PeftModel, raising ModelError if the merged logits differ from the adapter's."""
    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    with torch.no_grad():
        before = model(input_ids=ids).logits.float()
        merged = model.merge_and_unload()
        after = merged(input_ids=ids).logits.float()
    diff = (after - before).abs().max().item()
    bound = MERGE_TOLERANCE * max(1.0, before.abs().max().item())
    logger.info("merge check: max |Δlogit| = %.3g (allowed %.3g)", diff, bound)
    if not diff <= bound:
        raise ModelError(
            f"merge check failed: the merged model's logits differ from the adapter model's by up to {diff:.3g} "
            f"(allowed {bound:.3g}); the adapter does not merge cleanly into this base model"
        )
    return merged


def _update_generation_config(model, tokenizer, template) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    stop_ids = template.stop_token_ids(tokenizer) if template is not None else [tokenizer.eos_token_id]
    gen.eos_token_id = list(dict.fromkeys([i for i in stop_ids + eos if i is not None]))
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


# ----------------------------------------------------------------------------------------------
# chat template
# ----------------------------------------------------------------------------------------------
def _run_template(cfg: RunConfig, tokenizer):
    """The run's template; a named built-in also becomes the exported tokenizer's chat template."""
    data = cfg.data
    name = data.template
    from tuneforge.data.templates import template_for

    template = template_for(data, tokenizer)
    template.fix_tokenizer(tokenizer)
    if name in (None, "auto"):
        return template
    jinja = template_to_jinja(template)
    if jinja is not None and _renders_like(template, tokenizer, jinja):
        tokenizer.chat_template = jinja
        logger.info("chat template of the export: built-in template `%s`", name)
    else:
        logger.warning("template `%s` cannot be written as a Jinja chat template; the export keeps the "
                       "tokenizer's own chat template", name)
    return template


def _jinja_slots(slots, variable: str) -> str:
    from tuneforge.data.templates.model import SpecialSlot, TokenSlot

    parts = []
    for slot in slots:
        if isinstance(slot, SpecialSlot):
            parts.append("{{ " + slot.name + " or '' }}")
        elif isinstance(slot, TokenSlot):
            parts.append("{{ " + repr(slot.token) + " }}")
        else:
            text = slot.replace("{{idx}}", "\0idx\0").replace("{{content}}", "\0content\0", 1)
            for i, piece in enumerate(text.split("\0")):
                if i % 2:
                    parts.append("{{ " + (variable if piece == "content" else "idx") + " }}")
                elif piece:
                    parts.append("{{ " + repr(piece) + " }}")
    return "".join(parts)


def template_to_jinja(template) -> str | None:
    """A HF chat template reproducing a built-in template's text (user/assistant/system/observation);
    None for templates whose logic slots cannot express (system fused into the first user turn,
    reasoning)."""
    if getattr(template, "system_in_first_user", False) or getattr(template, "reasoning", False):
        return None
    return (
        "{% set system_message = " + repr(template.default_system) + " %}"
        "{% set loop_messages = messages %}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}{% endif %}"
        "{% if loop_messages %}" + _jinja_slots(template.format_prefix, "content")
        + "{% if system_message %}" + _jinja_slots(template.format_system, "system_message") + "{% endif %}{% endif %}"
        "{% for message in loop_messages %}{% set content = message['content'] %}"
        "{% set idx = (loop.index0 // 2) | string %}"
        "{% if message['role'] == 'user' %}" + _jinja_slots(template.format_user, "content")
        + "{% elif message['role'] == 'assistant' %}" + _jinja_slots(template.format_assistant, "content")
        + "{% elif message['role'] in ('observation', 'tool') %}" + _jinja_slots(template.format_observation, "content")
        + "{% endif %}{% endfor %}"
    )


def _renders_like(template, tokenizer, jinja: str) -> bool:
    turns = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."}]
    for system in ("You are a test assistant.", None):
        head = [{"role": "system", "content": system}] if system else []
        expected = template.render_text(turns, system, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
        try:
            got = tokenizer.apply_chat_template(head + turns, chat_template=jinja, tokenize=False)
        except Exception:  # a template the generator got wrong must not break the export
            return False
        if got != expected:
            return False
    return True


def ollama_modelfile(template, tokenizer, source: str = ".") -> str:
    """An Ollama Modelfile for the export (`ollama create NAME -f Modelfile` inside the folder); `source`: the
    weights (the folder, or the .gguf file next to it)."""
    lines = [f"FROM {source}"]
    go = _ollama_template(template, tokenizer)
    if go:
        lines.append(f'TEMPLATE """{go}"""')
    system = getattr(template, "default_system", "") if template is not None else ""
    if system:
        lines.append(f'SYSTEM """{system}"""')
    stops = list(getattr(template, "stop_words", ()) or ())
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    for stop in dict.fromkeys(stops):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def _ollama_template(template, tokenizer) -> str | None:
    """Ollama's Go template from the slots; for `auto` only ChatML chat templates are recognised."""
    if template is None or not hasattr(template, "format_user"):
        if "<|im_start|>" not in str(getattr(tokenizer, "chat_template", "") or ""):
            return None
        from tuneforge.data.templates import get_template

        template = get_template("chatml", tokenizer)
    if getattr(template, "system_in_first_user", False):
        return None

    def go(slots, variable: str) -> str:
        from tuneforge.data.templates.model import SpecialSlot, TokenSlot

        out = []
        for slot in slots:
            if isinstance(slot, SpecialSlot):
                out.append(getattr(tokenizer, slot.name, None) or "")
            elif isinstance(slot, TokenSlot):
                out.append(slot.token)
            else:
                out.append(slot.replace("{{content}}", "{{ " + variable + " }}").replace("{{idx}}", "0"))
        return "".join(out)

    return (
        go(template.format_prefix, ".System")
        + "{{ if .System }}" + go(template.format_system, ".System") + "{{ end }}"
        + "{{ if .Prompt }}" + go(template.format_user, ".Prompt") + "{{ end }}"
        + go(template.format_assistant, ".Response")
    )
