"""Evaluate tab: batch prediction on datasets (`do_predict` + `predict_with_generate`) as a job.

The tab builds the same YAML a user would run by hand (`tuneforge train <output_dir>/tuneforge_train.yaml`)
and hands it to the job manager, so progress, Abort and re-attaching after a page refresh work as for
training; when the job ends it shows BLEU-4 / ROUGE from `predict_results.json` and where the
predictions are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr

from tuneforge.webui import args
from tuneforge.webui.components import UI, dataset_choices, error_text
from tuneforge.webui.components.export_tab import MODEL_KEYS
from tuneforge.webui.components.train_tab import render_progress
from tuneforge.webui.i18n import message

EVAL_KEYS = ("eval_dataset_dir", "eval_dataset", "eval_cutoff_len", "eval_max_samples", "max_new_tokens", "top_p",
             "temperature", "eval_output_dir")


def default_eval_name() -> str:
    return time.strftime("eval_%Y-%m-%d-%H-%M-%S")


def create_eval_tab(ui: UI, ctx) -> None:
    d = args.EVAL_DEFAULTS
    with gr.Tab(ui.label("tab_eval"), id="eval") as tab:
        ui.add("tab_eval", tab)
        with gr.Row():
            dataset_dir = ui.add("eval_dataset_dir", gr.Textbox(value=d["eval_dataset_dir"], scale=2,
                                                                label=ui.label("eval_dataset_dir")))
            dataset = ui.add("eval_dataset", gr.Dropdown(choices=args.list_datasets(d["eval_dataset_dir"], "sft"),
                                                         value=[], multiselect=True, scale=4,
                                                         label=ui.label("eval_dataset"), elem_id="tf-eval-dataset"))
        with gr.Row():
            fields = [
                ui.add("eval_cutoff_len", gr.Number(value=d["eval_cutoff_len"], precision=0,
                                                    label=ui.label("eval_cutoff_len"))),
                ui.add("eval_max_samples", gr.Number(value=d["eval_max_samples"], precision=0,
                                                     label=ui.label("eval_max_samples"), elem_id="tf-eval-max-samples")),
                ui.add("eval_max_new_tokens", gr.Number(value=d["max_new_tokens"], precision=0,
                                                        label=ui.label("eval_max_new_tokens"),
                                                        elem_id="tf-eval-max-new-tokens")),
                ui.add("eval_top_p", gr.Slider(0.01, 1.0, value=d["top_p"], step=0.01, label=ui.label("eval_top_p"))),
                ui.add("eval_temperature", gr.Slider(0.01, 1.5, value=d["temperature"], step=0.01,
                                                     label=ui.label("eval_temperature"))),
            ]
        with gr.Row():
            output_dir = ui.add("eval_output_dir", gr.Textbox(value=default_eval_name(), scale=2,
                                                              label=ui.label("eval_output_dir"),
                                                              elem_id="tf-eval-output-dir"))
            allow_outside = ui.add("eval_allow_outside", gr.Checkbox(value=False, label=ui.label("eval_allow_outside"),
                                                                     elem_id="tf-eval-allow-outside"))
            start = ui.add("eval_start", gr.Button(ui.label("eval_start"), variant="primary", elem_id="tf-eval-start"))
            abort = ui.add("eval_abort", gr.Button(ui.label("eval_abort"), elem_id="tf-eval-abort"))
        notice = gr.Markdown(elem_id="tf-eval-message")
        progress = gr.HTML(render_progress(ctx.jobs.snapshot(), ui.lang, "tf-eval-progress"))
        results = ui.add("eval_results", gr.Textbox(label=ui.label("eval_results"), lines=3, interactive=False,
                                                    elem_id="tf-eval-results"))
        seen = gr.State(None)
        timer = gr.Timer(1.0)

    lang = ctx.lang_selector
    model_fields = [ui.fields[k] for k in MODEL_KEYS]

    def start_prediction(*values):
        allow, *model_values, lang_code = values[len(EVAL_KEYS):]
        try:
            config = args.build_predict_config(dict(zip(MODEL_KEYS, model_values)),
                                               dict(zip(EVAL_KEYS, values[:len(EVAL_KEYS)])), ctx.save_root,
                                               allow_outside=bool(allow))
            args.validate(config)
            snap = ctx.jobs.start(config)
            return message("started", lang_code, command=args.train_command(snap.yaml_path)), ""
        except Exception as err:
            return error_text(err, lang_code), gr.skip()

    def tick(lang_code: str, last):
        snap = ctx.jobs.snapshot()
        key = (snap.status, snap.current_steps, snap.output_dir, lang_code)
        if key == last:
            return gr.skip(), gr.skip(), last
        return render_progress(snap, lang_code, "tf-eval-progress"), scores_text(snap, lang_code), key

    dataset_dir.blur(lambda folder, selected, lang_code: dataset_choices(folder, "sft", selected, lang_code),
                     [dataset_dir, dataset, lang], [dataset, notice])
    start.click(start_prediction, [dataset_dir, dataset, *fields, output_dir, allow_outside, *model_fields, lang],
                [notice, results])
    abort.click(lambda: ctx.jobs.abort(), None, [notice])
    timer.tick(tick, [lang, seen], [progress, results, seen], show_progress="hidden")


def scores_text(snap, lang: str) -> str:
    """The scores of a prediction job that ended (its predict_results.json), else nothing."""
    from tuneforge.evaluate.predict import PREDICTIONS_FILE, RESULTS_FILE

    results_path = Path(snap.output_dir or ".") / RESULTS_FILE
    if snap.kind != "predict" or snap.status not in ("finished", "aborted") or not results_path.is_file():
        return ""
    scores = json.loads(results_path.read_text(encoding="utf-8"))
    return message("predict_scores", lang, bleu=scores["predict_bleu-4"], rouge1=scores["predict_rouge-1"],
                   rouge2=scores["predict_rouge-2"], rougel=scores["predict_rouge-l"],
                   samples=scores["predict_samples"], speed=scores.get("predict_tokens_per_second", 0.0),
                   predictions=results_path.parent / PREDICTIONS_FILE, scores=results_path)
