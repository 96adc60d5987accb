"""Evaluate tab: batch prediction on datasets (`do_predict` + `predict_with_generate`) or a recall check
("did it learn?", `tuneforge eval recall`) as a job.

The tab builds the same YAML a user would run by hand (`tuneforge train <output_dir>/tuneforge_train.yaml`,
or `tuneforge eval recall <output_dir>/tuneforge_recall.yaml ...`, webui/recall_job.py) and hands it to the
job manager, so progress, Abort and re-attaching after a page refresh work as for training; when the job
ends it shows BLEU-4 / ROUGE from `predict_results.json` and where the predictions are, or the recall
summary and report from `recall_results.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr

from tuneforge.webui import args, recall_job
from tuneforge.webui.components import UI, dataset_choices, error_text
from tuneforge.webui.components.export_tab import MODEL_KEYS
from tuneforge.webui.components.train_tab import render_progress
from tuneforge.webui.i18n import message

EVAL_KEYS = ("eval_dataset_dir", "eval_dataset", "eval_cutoff_len", "eval_max_samples", "max_new_tokens", "top_p",
             "temperature", "eval_output_dir")
RECALL_KEYS = ("recall_samples", "recall_heldout", "recall_drift")
MODE_CHOICES = [("eval_mode_predict", "predict"), ("eval_mode_recall", "recall")]


def default_eval_name() -> str:
    return time.strftime("eval_%Y-%m-%d-%H-%M-%S")


def create_eval_tab(ui: UI, ctx) -> None:
    d, r = args.EVAL_DEFAULTS, recall_job.RECALL_DEFAULTS
    with gr.Tab(ui.label("tab_eval"), id="eval") as tab:
        ui.add("tab_eval", tab)
        mode = ui.add("eval_mode", gr.Radio(ui.choice_list("eval_mode", MODE_CHOICES), value="predict",
                                            label=ui.label("eval_mode"), elem_id="tf-eval-mode"))
        with gr.Row():
            dataset_dir = ui.add("eval_dataset_dir", gr.Textbox(value=d["eval_dataset_dir"], scale=2,
                                                                label=ui.label("eval_dataset_dir")))
            dataset = ui.add("eval_dataset", gr.Dropdown(choices=args.list_datasets(d["eval_dataset_dir"], "sft"),
                                                         value=[], multiselect=True, scale=4,
                                                         label=ui.label("eval_dataset"), elem_id="tf-eval-dataset"))
        with gr.Row() as predict_row:
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
        with gr.Column(visible=False) as recall_box:
            ui.add("recall_hint", gr.Markdown(ui.label("recall_hint")))
            with gr.Row():
                recall_fields = [
                    ui.add("recall_samples", gr.Number(value=r["recall_samples"], precision=0, minimum=0,
                                                       label=ui.label("recall_samples"), elem_id="tf-recall-samples")),
                    ui.add("recall_heldout", gr.Checkbox(value=r["recall_heldout"], label=ui.label("recall_heldout"),
                                                         elem_id="tf-recall-heldout")),
                    ui.add("recall_drift", gr.Checkbox(value=r["recall_drift"], label=ui.label("recall_drift"),
                                                       elem_id="tf-recall-drift")),
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
        report = ui.add("recall_report", gr.Code(label=ui.label("recall_report"), language=None, lines=12,
                                                 max_lines=40, interactive=False, show_line_numbers=False,
                                                 visible=False, elem_id="tf-recall-report"))
        seen = gr.State(None)
        timer = gr.Timer(1.0)

    lang = ctx.lang_selector
    model_fields = [ui.fields[k] for k in MODEL_KEYS]

    def start_evaluation(mode_value, *values):
        eval_values = dict(zip(EVAL_KEYS, values[:len(EVAL_KEYS)]))
        recall_values = dict(zip(RECALL_KEYS, values[len(EVAL_KEYS):len(EVAL_KEYS) + len(RECALL_KEYS)]))
        allow, *model_values, lang_code = values[len(EVAL_KEYS) + len(RECALL_KEYS):]
        model_values = dict(zip(MODEL_KEYS, model_values))
        try:
            if mode_value == "recall":
                config = recall_job.build_recall_config(model_values, {**eval_values, **recall_values}, ctx.save_root,
                                                        allow_outside=bool(allow))
                options = recall_job.recall_options(model_values, recall_values)
                args.validate(config)
                snap = ctx.jobs.start(config, kind="recall", options=options)
            else:
                config = args.build_predict_config(model_values, eval_values, ctx.save_root, allow_outside=bool(allow))
                args.validate(config)
                snap = ctx.jobs.start(config)
            return message("started", lang_code, command=snap.command), "", ""
        except Exception as err:
            return error_text(err, lang_code), gr.skip(), gr.skip()

    def tick(lang_code: str, last):
        snap = ctx.jobs.snapshot()
        key = (snap.status, snap.phase, snap.current_steps, snap.output_dir, lang_code)
        if key == last:
            return gr.skip(), gr.skip(), gr.skip(), last
        if snap.kind == "recall":
            summary, report_text = recall_texts(snap, lang_code)
        else:
            summary, report_text = scores_text(snap, lang_code), ""
        return render_progress(snap, lang_code, "tf-eval-progress"), summary, report_text, key

    def switch_mode(mode_value):
        recall = mode_value == "recall"
        return gr.update(visible=not recall), gr.update(visible=recall), gr.update(visible=recall)

    mode.change(switch_mode, [mode], [predict_row, recall_box, report])
    dataset_dir.blur(lambda folder, selected, lang_code: dataset_choices(folder, "sft", selected, lang_code),
                     [dataset_dir, dataset, lang], [dataset, notice])
    start.click(start_evaluation,
                [mode, dataset_dir, dataset, *fields, output_dir, *recall_fields, allow_outside, *model_fields, lang],
                [notice, results, report])
    abort.click(lambda: ctx.jobs.abort(), None, [notice])
    timer.tick(tick, [lang, seen], [progress, results, report, seen], show_progress="hidden")


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


def recall_texts(snap, lang: str) -> tuple[str, str]:
    """(summary, report) of a recall check that finished (its recall_results.json), else nothing."""
    from tuneforge.evaluate.recall_report import format_recall_report

    path = Path(snap.results_path or ".")
    if snap.kind != "recall" or snap.status != "finished" or not path.is_file():
        return "", ""
    results = json.loads(path.read_text(encoding="utf-8"))
    return recall_job.summary_text(results, path, lang), format_recall_report(results).strip("\n")
