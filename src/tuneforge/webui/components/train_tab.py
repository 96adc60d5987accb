"""Train tab: datasets and preview, hyper-parameters, command preview, save/load, start/abort, progress."""

from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr

from tuneforge.webui import args, safety
from tuneforge.webui.components import UI, dataset_choices, error_text
from tuneforge.webui.components.loss_chart import render_loss_svg
from tuneforge.webui.i18n import message


def default_run_name() -> str:
    return time.strftime("train_%Y-%m-%d-%H-%M-%S")


def create_train_tab(ui: UI, ctx) -> None:
    d = args.DEFAULTS
    f = ui.fields

    def field(key, component):
        return ui.add(key, component, field=True)

    with gr.Tab(ui.label("tab_train"), id="train") as tab:
        ui.add("tab_train", tab)
        with gr.Row():
            stage = field("stage", gr.Dropdown(choices=list(args.STAGES), value=d["stage"], label=ui.label("stage"), scale=1))
            dataset_dir = field("dataset_dir", gr.Textbox(value=d["dataset_dir"], label=ui.label("dataset_dir"), scale=2,
                                                           elem_id="tf-dataset-dir"))
            dataset = field("dataset", gr.Dropdown(choices=args.list_datasets(d["dataset_dir"], d["stage"]), value=[],
                                                   multiselect=True, label=ui.label("dataset"), scale=4,
                                                   elem_id="tf-dataset"))
            preview_data = ui.add("preview_data", gr.Button(ui.label("preview_data"), scale=1,
                                                            elem_id="tf-preview-data"))
        data_preview = ui.add("data_preview", gr.HTML(label=ui.label("data_preview"), elem_id="tf-data-preview"))
        with gr.Row():
            field("learning_rate", gr.Textbox(value=d["learning_rate"], label=ui.label("learning_rate")))
            field("num_train_epochs", gr.Number(value=d["num_train_epochs"], label=ui.label("num_train_epochs")))
            field("max_steps", gr.Number(value=d["max_steps"], precision=0, label=ui.label("max_steps"),
                                         elem_id="tf-max-steps"))
            field("max_grad_norm", gr.Number(value=d["max_grad_norm"], label=ui.label("max_grad_norm")))
            field("max_samples", gr.Number(value=d["max_samples"], precision=0, label=ui.label("max_samples")))
            field("compute_type", gr.Dropdown(choices=list(args.COMPUTE_TYPES), value=d["compute_type"],
                                              label=ui.label("compute_type")))
        with gr.Row():
            field("cutoff_len", gr.Number(value=d["cutoff_len"], precision=0, label=ui.label("cutoff_len")))
            field("per_device_train_batch_size", gr.Number(value=d["per_device_train_batch_size"], precision=0,
                                                           label=ui.label("per_device_train_batch_size"), elem_id="tf-batch-size"))
            field("gradient_accumulation_steps", gr.Number(value=d["gradient_accumulation_steps"], precision=0,
                                                           label=ui.label("gradient_accumulation_steps"), elem_id="tf-grad-accum"))
            field("val_size", gr.Number(value=d["val_size"], label=ui.label("val_size")))
            field("lr_scheduler_type", gr.Dropdown(choices=list(args.LR_SCHEDULERS), value=d["lr_scheduler_type"],
                                                   label=ui.label("lr_scheduler_type")))
        with gr.Row():
            field("logging_steps", gr.Number(value=d["logging_steps"], precision=0, label=ui.label("logging_steps"),
                                             elem_id="tf-logging-steps"))
            field("save_steps", gr.Number(value=d["save_steps"], precision=0, label=ui.label("save_steps")))
            field("warmup_steps", gr.Number(value=d["warmup_steps"], precision=0, label=ui.label("warmup_steps")))
        with gr.Accordion(ui.label("lora_section"), open=False) as lora_box:
            ui.add("lora_section", lora_box)
            with gr.Row():
                field("lora_rank", gr.Number(value=d["lora_rank"], precision=0, label=ui.label("lora_rank")))
                field("lora_alpha", gr.Number(value=d["lora_alpha"], precision=0, label=ui.label("lora_alpha")))
                field("lora_dropout", gr.Number(value=d["lora_dropout"], label=ui.label("lora_dropout")))
                field("lora_target", gr.Textbox(value=d["lora_target"], label=ui.label("lora_target")))
                field("use_rslora", gr.Checkbox(value=d["use_rslora"], label=ui.label("use_rslora")))
                field("use_dora", gr.Checkbox(value=d["use_dora"], label=ui.label("use_dora")))
        with gr.Accordion(ui.label("freeze_section"), open=False) as freeze_box:
            ui.add("freeze_section", freeze_box)
            with gr.Row():
                field("freeze_trainable_layers", gr.Number(value=d["freeze_trainable_layers"], precision=0,
                                                           label=ui.label("freeze_trainable_layers")))
                field("freeze_trainable_modules", gr.Textbox(value=d["freeze_trainable_modules"],
                                                             label=ui.label("freeze_trainable_modules")))
        with gr.Accordion(ui.label("pref_section"), open=False) as pref_box:
            ui.add("pref_section", pref_box)
            with gr.Row():
                field("pref_beta", gr.Number(value=d["pref_beta"], label=ui.label("pref_beta")))
                field("pref_ftx", gr.Number(value=d["pref_ftx"], label=ui.label("pref_ftx")))
                field("pref_loss", gr.Dropdown(choices=list(args.PREF_LOSSES), value=d["pref_loss"],
                                               label=ui.label("pref_loss")))
        with gr.Accordion(ui.label("grpo_section"), open=False) as grpo_box:
            ui.add("grpo_section", grpo_box)
            with gr.Row():
                field("num_generations", gr.Number(value=d["num_generations"], precision=0,
                                                   label=ui.label("num_generations")))
                field("reward_funcs", gr.Textbox(value=d["reward_funcs"], label=ui.label("reward_funcs")))
                field("beta", gr.Number(value=d["beta"], label=ui.label("beta")))
                field("loss_type", gr.Dropdown(choices=list(args.GRPO_LOSSES), value=d["loss_type"],
                                               label=ui.label("loss_type")))
        with gr.Accordion(ui.label("extra_section"), open=False) as extra_box:
            ui.add("extra_section", extra_box)
            field("extra_args", gr.Textbox(value=d["extra_args"], lines=3, label=ui.label("extra_args"),
                                           elem_id="tf-extra-args"))
            allow_remote = ui.add("allow_remote_code", gr.Checkbox(value=False, label=ui.label("allow_remote_code"),
                                                                   elem_id="tf-allow-remote-code"))
        with gr.Row():
            output_dir = field("output_dir", gr.Dropdown(choices=[], value=default_run_name(), allow_custom_value=True,
                                                         label=ui.label("output_dir"), scale=2, elem_id="tf-output-dir"))
            allow_outside = ui.add("allow_outside", gr.Checkbox(value=False, label=ui.label("allow_outside"), scale=1,
                                                                elem_id="tf-allow-outside"))
            # saved arguments are names in the web UI's own folder, never paths
            args_name = ui.add("args_name", gr.Dropdown(choices=safety.list_saved_args(ctx.home), value=None,
                                                        allow_custom_value=True, label=ui.label("args_name"), scale=2,
                                                        elem_id="tf-args-name"))
            overwrite = ui.add("args_overwrite", gr.Checkbox(value=False, label=ui.label("args_overwrite"), scale=1,
                                                             elem_id="tf-args-overwrite"))
        with gr.Row():
            buttons = {key: ui.add(key, gr.Button(ui.label(key), elem_id=f"tf-{key.replace('_', '-')}",
                                                  variant="primary" if key == "start" else "secondary"))
                       for key in ("preview_cmd", "save_args", "load_args", "start", "abort")}
        notice = gr.Markdown(elem_id="tf-message")
        command = ui.add("command", gr.Code(language="yaml", label=ui.label("command"), visible=False,
                                            elem_id="tf-command"))
        progress = gr.HTML(render_progress(ctx.jobs.snapshot(), ui.lang), elem_id="tf-progress-box")
        with gr.Row():
            loss_chart = ui.add("loss_chart", gr.HTML(render_loss_svg(ctx.jobs.snapshot().losses, ui.lang),
                                                      label=ui.label("loss_chart"), elem_id="tf-loss",
                                                      js_on_load=None, container=True, padding=True, scale=1))
            log = ui.add("log", gr.Textbox(lines=14, max_lines=14, autoscroll=True, label=ui.label("log"),
                                           elem_id="tf-log", scale=1))
        seen = gr.State((None, "", ""))  # what the page shows: (chart key, status, log tail)
        timer = gr.Timer(1.0)

    lang = ctx.lang_selector
    model_path, method, checkpoints = f["model_path"], f["finetuning_type"], f["checkpoints"]
    all_fields = set(f.values()) | {lang, allow_outside, allow_remote}  # every field and the confirmations

    def confirmed(data: dict) -> dict:
        return {"allow_outside": bool(data[allow_outside]), "allow_remote_code": bool(data[allow_remote])}

    # ---- datasets and preview ------------------------------------------------------------------
    def preview_rows(data: dict):
        try:
            return render_data_preview(ui.values(data), ctx.save_root, **confirmed(data))
        except Exception as err:
            return f"<p class='tf-error'>{html.escape(error_text(err, data[lang]))}</p>"

    for trigger in (stage.change, dataset_dir.blur):
        trigger(dataset_choices, [dataset_dir, stage, dataset, lang], [dataset, notice])
    preview_data.click(preview_rows, all_fields, [data_preview])

    # ---- arguments -----------------------------------------------------------------------------
    def build(data: dict) -> dict:
        config = args.build_train_config(ui.values(data), ctx.save_root, **confirmed(data))
        args.validate(config)
        return config

    def preview_command(data: dict):
        try:
            config = build(data)
        except Exception as err:
            return gr.update(visible=False), error_text(err, data[lang])
        yaml_path = Path(config["output_dir"]) / "tuneforge_train.yaml"
        _, note = args.describe_output_dir(config["output_dir"], data[lang])
        body = f"# {args.train_command(yaml_path)}\n{args.to_yaml(config)}"
        return gr.update(value=body, visible=True), note

    def saved_names(value=None):
        return gr.update(choices=safety.list_saved_args(ctx.home)) if value is None else \
            gr.update(choices=safety.list_saved_args(ctx.home), value=value)

    def save_arguments(data: dict):
        try:
            config = build(data)
            path = safety.save_args(ctx.home, data[args_name], args.to_yaml(config, None), overwrite=data[overwrite])
            # the overwrite confirmation is for one save
            return message("saved_args", data[lang], name=path.stem, path=path), saved_names(path.stem), False
        except Exception as err:
            return error_text(err, data[lang]), gr.skip(), gr.skip()

    field_keys = list(f)

    def load_arguments(name: str, lang_code: str):
        try:
            path = safety.args_file(ctx.home, name)
            values = args.values_from_config(safety.load_args(ctx.home, name), ctx.save_root)
        except Exception as err:
            return [gr.skip()] * (len(field_keys) + 1) + [error_text(err, lang_code)]
        model_name = next((k for k, v in args.MODEL_CHOICES.items() if v == values.get("model_path")), args.CUSTOM_MODEL)
        updates = [gr.update(value=values[k]) if k in values else gr.skip() for k in field_keys]
        return [*updates, gr.update(value=model_name), message("loaded_args", lang_code, name=path.stem, path=path)]

    buttons["preview_cmd"].click(preview_command, all_fields, [command, notice])
    buttons["save_args"].click(save_arguments, all_fields | {args_name, overwrite}, [notice, args_name, overwrite])
    buttons["load_args"].click(load_arguments, [args_name, lang],
                               [*(f[k] for k in field_keys), ui.elems["model_name"], notice])
    args_name.focus(saved_names, None, [args_name])

    def describe_run(data: dict):
        try:
            config_dir = args.resolve_output_dir(ctx.save_root, data[model_path], data[method], data[output_dir])
        except Exception:
            return ""
        try:
            safety.check_inside_root(config_dir, ctx.save_root, data[allow_outside])
        except safety.Refusal as err:
            return error_text(err, data[lang])
        return args.describe_output_dir(config_dir, data[lang])[1]

    def refresh_runs(path_value: str, method_value: str):
        return gr.update(choices=args.list_runs(ctx.save_root, path_value, method_value))

    output_dir.change(describe_run, {model_path, method, output_dir, lang, allow_outside}, [notice])
    for trigger in (model_path.change, method.change):
        trigger(refresh_runs, [model_path, method], [output_dir])

    # ---- jobs ------------------------------------------------------------------------------------
    def start(data: dict):
        try:
            config = build(data)
            kind, note = args.describe_output_dir(config["output_dir"], data[lang])
            if kind == "conflict" and not config.get("overwrite_output_dir"):
                raise args.ConfigError(note)
            snap = ctx.jobs.start(config, note=note)
            return message("started", data[lang], command=args.train_command(snap.yaml_path)) + f"  \n{note}"
        except Exception as err:
            return error_text(err, data[lang])

    buttons["start"].click(start, all_fields, [notice])
    buttons["abort"].click(lambda: ctx.jobs.abort(), None, [notice])

    def tick(lang_code: str, path_value: str, method_value: str, selected, last):
        snap = ctx.jobs.snapshot()
        # the chart is redrawn only when its points (or the language) changed
        chart_key = (len(snap.losses), snap.losses[-1] if snap.losses else None, lang_code)
        key = (chart_key, snap.status, snap.log_tail)
        chart = render_loss_svg(snap.losses, lang_code) if key[0] != last[0] else gr.skip()
        logs = snap.log_tail if key[2] != last[2] else gr.skip()
        ckpts, next_run = gr.skip(), gr.skip()
        if key[1] != last[1] and snap.status in ("finished", "aborted", "failed"):
            # a run ended (or this page just opened on an ended run): offer its checkpoints, and a fresh
            # output folder so the next Start does not resume the run that just ended
            found = args.list_checkpoints(ctx.save_root, path_value, method_value)
            ckpts = gr.update(choices=found, value=[c for c in (selected or []) if c in found])
            next_run = gr.update(value=default_run_name())
        return render_progress(snap, lang_code), chart, logs, ckpts, next_run, key

    timer.tick(tick, [lang, model_path, method, checkpoints, seen],
               [progress, loss_chart, log, checkpoints, output_dir, seen], show_progress="hidden")


def render_progress(snap, lang: str, element_id: str = "tf-progress") -> str:
    """Progress bar + status line; `data-status` / `data-percent` let tests and scripts read it."""
    from tuneforge.webui.i18n import MESSAGES

    key = f"{snap.status}_{snap.kind}" if f"{snap.status}_{snap.kind}" in MESSAGES else snap.status
    status = message(key, lang, output_dir=snap.output_dir, message=snap.message)
    lines = [html.escape(status)]
    if snap.kind == "recall" and snap.phase:  # a recall check: questions of its current part
        phase = message(f"phase_{snap.phase}", lang) if f"phase_{snap.phase}" in MESSAGES else snap.phase
        lines.append(html.escape(message("step_line_recall", lang, phase=phase, current=snap.current_steps,
                                         total=snap.total_steps, percent=snap.percentage, elapsed=snap.elapsed)))
    elif snap.status != "idle" and snap.kind != "recall":
        speed = f" · {snap.throughput:.0f} tokens/s" if snap.throughput else ""
        lines.append(html.escape(message("step_line", lang, current=snap.current_steps, total=snap.total_steps or "?",
                                         percent=snap.percentage, elapsed=snap.elapsed, remaining=snap.remaining,
                                         speed=speed)))
    if snap.status not in ("idle", "failed") and snap.message:
        lines.append(html.escape(snap.message))
    percent = max(0.0, min(100.0, snap.percentage))
    return (f'<div id="{element_id}" data-kind="{snap.kind}" data-status="{snap.status}" data-percent="{percent:.1f}" '
            f'data-step="{snap.current_steps}" data-total="{snap.total_steps}" data-phase="{html.escape(snap.phase)}" '
            f'data-output-dir="{html.escape(snap.output_dir, quote=True)}">'
            '<div style="background:#e5e7eb;border-radius:6px;height:14px;overflow:hidden">'
            f'<div style="background:#f97316;height:14px;width:{percent:.1f}%"></div></div>'
            f'<div style="margin-top:4px;white-space:pre-wrap">{"<br>".join(lines)}</div></div>')


def render_data_preview(values: dict, save_root: str, rows: int = 3, **confirmed: bool) -> str:
    """The first rows encoded exactly as training will, trained text highlighted, then the data report."""
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.preview import GREEN, RESET, mark_sample
    from tuneforge.train import workflow

    values = {**values, "output_dir": values.get("output_dir") or "preview"}
    config = args.build_train_config(values, save_root, **confirmed)
    config["max_samples"] = min(int(config.get("max_samples") or 50), 50)  # a preview reads only a few rows
    cfg = args.validate(config, require_output_dir=False)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)  # pt: no template
    bundle = build_datasets(cfg, tokenizer, template, stage=cfg.finetuning.stage)
    parts = []
    for i, sample in enumerate(bundle.train):
        if i >= rows:
            break
        marked = html.escape(mark_sample(list(sample["input_ids"]), list(sample["labels"]), tokenizer, color=True))
        marked = marked.replace(GREEN, '<mark style="background:#bbf7d0">').replace(RESET, "</mark>")
        parts.append(f"<p><b>sample {i}</b> ({len(sample['input_ids'])} tokens)</p>"
                     f"<pre style='white-space:pre-wrap'>{marked}</pre>")
    parts.append(f"<pre style='white-space:pre-wrap'>{html.escape(bundle.report.format())}</pre>")
    return "\n".join(parts)
