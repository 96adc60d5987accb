"""`tuneforge webchat x.yaml`: one model's chat page (LLaMA-Factory's `webchat`), loopback by default.

Answers stream from the batch worker (infer/batch_worker.py), so several open pages are decoded together
instead of waiting for each other.
"""

from __future__ import annotations

import os

import gradio as gr

from tuneforge.webui.app import check_port_free, local_url
from tuneforge.webui.safety import exposure_warning


def build_webchat(engine, worker, title: str) -> gr.Blocks:
    with gr.Blocks(title="tuneforge webchat") as demo:
        gr.Markdown(f"### tuneforge webchat\n{title}")
        system = gr.Textbox(label="System prompt", lines=1, elem_id="tf-system")
        chatbot = gr.Chatbot(label="Chat", height=420, elem_id="tf-chatbot")
        query = gr.Textbox(label="Message", lines=2, elem_id="tf-query")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="tf-send")
            clear = gr.Button("Clear", elem_id="tf-clear")
        with gr.Accordion("Generation", open=False):
            max_new = gr.Slider(8, 4096, value=engine.settings.max_new_tokens or 512, step=8, label="max_new_tokens")
            temperature = gr.Slider(0.0, 1.5, value=engine.settings.temperature, step=0.01, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.01, 1.0, value=engine.settings.top_p, step=0.01, label="top_p")
        history = gr.State([])  # plain {"role", "content"} dicts: what the engine gets

        respond = make_respond(engine, worker)
        for trigger in (send.click, query.submit):
            trigger(respond, [query, history, system, max_new, temperature, top_p], [chatbot, history, query])
        clear.click(lambda: ([], []), None, [chatbot, history])
    return demo


def make_respond(engine, worker):
    """The Send handler: (message, history, system, max_new_tokens, temperature, top_p) -> yields (chat shown,
    history kept, message box) as the answer streams."""

    def respond(text: str, messages: list, system_prompt: str, max_new_tokens, temp, top_p_value):
        text = (text or "").strip()
        if not text:
            yield gr.skip(), messages, gr.skip()
            return
        prompt = [*messages, {"role": "user", "content": text}]
        shown = [*prompt, {"role": "assistant", "content": ""}]
        yield shown, messages, ""
        sampling = {"do_sample": False} if float(temp) == 0 else {"do_sample": True, "temperature": float(temp)}
        settings = engine.settings.with_overrides(max_new_tokens=int(max_new_tokens), top_p=float(top_p_value),
                                                  **sampling)
        stream = worker.submit(engine.encode_prompt(prompt, system_prompt or None, settings=settings), settings)
        try:
            for delta in engine.text_deltas(stream, settings):
                shown[-1] = {"role": "assistant", "content": shown[-1]["content"] + delta}
                yield shown, messages, gr.skip()
        finally:
            stream.cancel()  # the page went away, or a stop word ended the answer
        yield shown, shown, gr.skip()

    return respond


def launch_webchat(cfg, host: str, port: int, share: bool, auth, *, max_batch: int = 8, block: bool = True):
    from tuneforge.infer.batch_worker import BatchWorker
    from tuneforge.infer.engine import ChatEngine

    warning = exposure_warning(host, port, share, auth)  # refuses an exposed page without a login
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_port_free(host, port)
    engine = ChatEngine.from_config(cfg)
    demo = build_webchat(engine, BatchWorker(engine, max_batch=max_batch), engine.description)
    if warning:
        print(warning, flush=True)
    print(f"[tuneforge] webchat: {local_url(host, port)}  (Ctrl-C to stop)", flush=True)
    demo.queue(default_concurrency_limit=max_batch).launch(
        server_name=host, server_port=port, share=share, quiet=True, auth=tuple(auth) if auth else None,
        prevent_thread_lock=not block, show_error=True)
    return demo
