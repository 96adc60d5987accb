"""Chat tab: load / unload the model bar's model (with its adapters), stream answers."""

from __future__ import annotations

import gradio as gr

from tuneforge.webui import args
from tuneforge.webui.components import UI, error_text
from tuneforge.webui.components.export_tab import MODEL_KEYS
from tuneforge.webui.i18n import message


def create_chat_tab(ui: UI, ctx) -> None:
    model_fields = [ui.fields[k] for k in MODEL_KEYS]
    lang = ctx.lang_selector
    with gr.Tab(ui.label("tab_chat"), id="chat") as tab:
        ui.add("tab_chat", tab)
        with gr.Row():
            load = ui.add("load_model", gr.Button(ui.label("load_model"), variant="primary", elem_id="tf-load-model"))
            unload = ui.add("unload_model", gr.Button(ui.label("unload_model"), elem_id="tf-unload-model"))
        status = ui.add("chat_status", gr.Textbox(value=_status(ctx, ui.lang), label=ui.label("chat_status"),
                                                  interactive=False, elem_id="tf-chat-status"))
        with gr.Row():
            with gr.Column(scale=3):
                system = ui.add("system", gr.Textbox(label=ui.label("system"), lines=1))
                chatbot = ui.add("chatbot", gr.Chatbot(label=ui.label("chatbot"), height=360, elem_id="tf-chatbot"))
                query = ui.add("query", gr.Textbox(label=ui.label("query"), lines=2, elem_id="tf-query"))
                with gr.Row():
                    send = ui.add("send", gr.Button(ui.label("send"), variant="primary", elem_id="tf-send"))
                    clear = ui.add("clear", gr.Button(ui.label("clear"), elem_id="tf-clear"))
            with gr.Column(scale=1):
                max_new = ui.add("max_new_tokens", gr.Slider(8, 4096, value=512, step=8, label=ui.label("max_new_tokens"),
                                                             elem_id="tf-max-new-tokens"))
                temperature = ui.add("temperature", gr.Slider(0.01, 1.5, value=0.95, step=0.01,
                                                              label=ui.label("temperature")))
                top_p = ui.add("top_p", gr.Slider(0.01, 1.0, value=0.7, step=0.01, label=ui.label("top_p")))
                do_sample = ui.add("do_sample", gr.Checkbox(value=True, label=ui.label("do_sample")))
                # a vision-language model (Qwen-VL): the image goes with the next message, as `<image>` before it
                image = ui.add("image", gr.Image(type="filepath", label=ui.label("image"), elem_id="tf-image"))
        history = gr.State([])  # plain {"role", "content"} dicts: what the engine gets
        images = gr.State([])  # the conversation's image files, one per `<image>` in `history`

    def load_model(*values):
        *model_values, lang_code = values
        if ctx.chat.loaded:
            return message("model_loaded", lang_code, description=ctx.chat.description)
        try:
            config = args.model_config(dict(zip(MODEL_KEYS, model_values)), ctx.save_root)
            config["finetuning_type"] = model_values[1]
            return message("model_loaded", lang_code, description=ctx.chat.load(config))
        except Exception as err:
            return error_text(err, lang_code)

    def unload_model(lang_code: str):
        ctx.chat.unload()
        return message("model_unloaded", lang_code)

    def respond(text: str, messages: list, files: list, picture, system_prompt: str, max_new_tokens, temp,
                top_p_value, sample, lang_code):
        text = (text or "").strip()
        if not text:
            yield gr.skip(), messages, files, gr.skip(), gr.skip(), gr.skip()
            return
        asked = [*files, picture] if picture else files
        prompt = [*messages, {"role": "user", "content": (ctx.chat.image_tag if picture else "") + text}]
        shown = [*prompt, {"role": "assistant", "content": ""}]
        yield shown, messages, files, "", gr.skip(), gr.skip()
        try:
            for delta in ctx.chat.stream(prompt, system_prompt, images=asked, max_new_tokens=int(max_new_tokens),
                                         temperature=float(temp), top_p=float(top_p_value), do_sample=bool(sample)):
                shown[-1] = {"role": "assistant", "content": shown[-1]["content"] + delta}
                yield shown, messages, files, gr.skip(), gr.skip(), gr.skip()
        except Exception as err:
            yield prompt, messages, files, text, gr.skip(), error_text(err, lang_code)
            return
        yield shown, shown, asked, gr.skip(), None, gr.skip()

    load.click(lambda lang_code: message("loading_model", lang_code), [lang], [status]).then(
        load_model, [*model_fields, lang], [status])
    unload.click(unload_model, [lang], [status])
    inputs = [query, history, images, image, system, max_new, temperature, top_p, do_sample, lang]
    for trigger in (send.click, query.submit):
        trigger(respond, inputs, [chatbot, history, images, query, image, status])
    clear.click(lambda: ([], [], []), None, [chatbot, history, images])


def _status(ctx, lang: str) -> str:
    if ctx.chat.loaded:
        return message("model_loaded", lang, description=ctx.chat.description)
    return message("model_unloaded", lang)
