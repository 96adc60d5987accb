"""The model bar at the top: model, method, adapters/checkpoints, quantization, template, RoPE, booster."""

from __future__ import annotations

import gradio as gr

from tuneforge.webui import args
from tuneforge.webui.components import UI


def template_choices() -> list[str]:
    from tuneforge.data.templates import available_templates

    return ["auto", *sorted(available_templates())]


def create_model_bar(ui: UI, ctx) -> None:
    d = args.DEFAULTS
    with gr.Row():
        lang = ui.add("lang", gr.Dropdown(choices=list(ctx.langs), value=ui.lang, label=ui.label("lang"), scale=1,
                                               elem_id="tf-lang"))
        name = ui.add("model_name", gr.Dropdown(choices=list(args.MODEL_CHOICES), value=next(iter(args.MODEL_CHOICES)),
                                                label=ui.label("model_name"), scale=2,
                                                elem_id="tf-model-name"))
        path = ui.add("model_path", gr.Textbox(value=d["model_path"], label=ui.label("model_path"), scale=3,
                                               elem_id="tf-model-path"), field=True)
    with gr.Row():
        method = ui.add("finetuning_type", gr.Dropdown(choices=list(args.FINETUNING_TYPES), value=d["finetuning_type"],
                                                       label=ui.label("finetuning_type"), scale=1), field=True)
        checkpoints = ui.add("checkpoints", gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                                                        label=ui.label("checkpoints"), scale=4,
                                                        elem_id="tf-checkpoints"), field=True)
        refresh = ui.add("refresh", gr.Button(ui.label("refresh"), scale=0, min_width=80, elem_id="tf-refresh"))
    with gr.Row():
        ui.add("quantization_bit", gr.Dropdown(choices=list(args.QUANT_BITS), value=d["quantization_bit"],
                                               label=ui.label("quantization_bit")), field=True)
        ui.add("quantization_method", gr.Dropdown(choices=list(args.QUANT_METHODS), value=d["quantization_method"],
                                                  label=ui.label("quantization_method")), field=True)
        ui.add("template", gr.Dropdown(choices=template_choices(), value=d["template"], label=ui.label("template")),
               field=True)
        ui.add("rope_scaling", gr.Dropdown(choices=list(args.ROPE_SCALINGS), value=d["rope_scaling"],
                                           label=ui.label("rope_scaling")), field=True)
        ui.add("booster", gr.Dropdown(choices=list(args.BOOSTERS), value=d["booster"], label=ui.label("booster")),
               field=True)

    def pick_model(display_name: str, current_path: str):
        chosen = args.MODEL_CHOICES.get(display_name, "")
        return gr.update(value=chosen) if chosen and chosen != current_path else gr.skip()

    def name_for_path(current_path: str, display_name: str):
        """A path typed by hand that is not the chosen entry's makes the model `Custom`."""
        if args.MODEL_CHOICES.get(display_name) == current_path.strip():
            return gr.skip()
        match = next((k for k, v in args.MODEL_CHOICES.items() if v and v == current_path.strip()), args.CUSTOM_MODEL)
        return gr.update(value=match) if match != display_name else gr.skip()

    def refresh_checkpoints(model_path: str, finetuning_type: str, selected: list[str] | None):
        found = args.list_checkpoints(ctx.save_root, model_path, finetuning_type)
        keep = [c for c in (selected or []) if c in found]
        return gr.update(choices=found, value=keep)

    name.change(pick_model, [name, path], [path])
    path.blur(name_for_path, [path, name], [name])
    for trigger in (path.change, method.change, refresh.click):
        trigger(refresh_checkpoints, [path, method, checkpoints], [checkpoints])
    ctx.lang_selector = lang
