"""Export tab: merge + save through `run_export`; an export folder outside the output root needs a confirmation."""

from __future__ import annotations

import gradio as gr

from tuneforge.webui import args, safety
from tuneforge.webui.components import UI, error_text
from tuneforge.webui.i18n import message

MODEL_KEYS = ("model_path", "finetuning_type", "checkpoints", "quantization_bit", "quantization_method",
              "template", "rope_scaling", "booster")


def create_export_tab(ui: UI, ctx) -> None:
    lang = ctx.lang_selector
    with gr.Tab(ui.label("tab_export"), id="export") as tab:
        ui.add("tab_export", tab)
        with gr.Row():
            export_dir = ui.add("export_dir", gr.Textbox(label=ui.label("export_dir"), scale=3, elem_id="tf-export-dir"))
            export_size = ui.add("export_size", gr.Slider(1, 100, value=5, step=1, label=ui.label("export_size")))
            ui.add("export_format", gr.Dropdown(choices=["safetensors"], value="safetensors",
                                                label=ui.label("export_format")))
        with gr.Row():  # LF's export tab: GPTQ with calibration text (export_gptq.py)
            quant_bit = ui.add("export_quantization_bit", gr.Dropdown(choices=["none", "8", "4", "2"], value="none",
                                                                      label=ui.label("export_quantization_bit"),
                                                                      elem_id="tf-export-quant-bit"))
            quant_data = ui.add("export_quantization_dataset", gr.Textbox(value="data/c4_demo.jsonl",
                                                                          label=ui.label("export_quantization_dataset"),
                                                                          elem_id="tf-export-quant-data"))
        allow_outside = ui.add("export_allow_outside", gr.Checkbox(value=False, label=ui.label("export_allow_outside"),
                                                                   elem_id="tf-export-allow-outside"))
        run = ui.add("export_btn", gr.Button(ui.label("export_btn"), variant="primary", elem_id="tf-export"))
        info = ui.add("export_info", gr.Textbox(label=ui.label("export_info"), interactive=False, lines=2,
                                                elem_id="tf-export-info"))

    def export(*values):
        *model_values, folder, size, bits, calibration, allow, lang_code = values
        try:
            from tuneforge.export import run_export

            folder = (folder or "").strip()
            if folder:
                safety.check_inside_root(folder, ctx.save_root, bool(allow))
            config = args.model_config(dict(zip(MODEL_KEYS, model_values)), ctx.save_root)
            config.update(finetuning_type=model_values[1], export_dir=folder or None,
                          export_size=int(size))
            if bits and bits != "none":
                config.update(export_quantization_bit=int(bits), export_quantization_dataset=calibration or None)
            path = run_export(args.validate(config, require_output_dir=False))
            return message("exported", lang_code, path=path)
        except Exception as err:
            return error_text(err, lang_code)

    run.click(lambda lang_code: message("exporting", lang_code), [lang], [info]).then(
        export, [*(ui.fields[k] for k in MODEL_KEYS), export_dir, export_size, quant_bit, quant_data, allow_outside,
                 lang], [info])
