"""`tuneforge webchat x.yaml` (webui/webchat.py): one model's chat page on the batch worker, loopback by default."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")

from test_infer import scripted_engine  # noqa: E402

from tuneforge.infer.batch_worker import BatchWorker  # noqa: E402


def test_answers_stream_into_the_history(tiny_tokenizer):
    from tuneforge.webui.webchat import make_respond

    engine, _ = scripted_engine(tiny_tokenizer, "hi there, friend")
    worker = BatchWorker(engine)
    try:
        respond = make_respond(engine, worker)
        updates = list(respond("Hello?", [], "Be brief.", 64, 0.0, 1.0))
        shown, kept, box = updates[-1]
        assert shown == kept == [{"role": "user", "content": "Hello?"},
                                 {"role": "assistant", "content": "hi there, friend"}]
        assert updates[0][2] == ""  # the message box is cleared at once
        assert len(updates) > 3  # the answer grew in steps
        assert engine.template.prompts[-1] == [{"role": "user", "content": "Hello?"}]
        again = list(respond("More?", kept, "", 64, 0.0, 1.0))[-1][1]
        assert [m["role"] for m in again] == ["user", "assistant", "user", "assistant"]
    finally:
        worker.close()


def test_command_line(tiny_llama_dir, capsys):
    from tuneforge.cli.main import main

    assert main(["webchat", "-h"]) == 0 and "usage: tuneforge webchat" in capsys.readouterr().out
    assert main(["webchat", f"model_name_or_path={tiny_llama_dir}", "--port", "99999"]) == 2
    assert "--port expects a number between 1 and 65535" in capsys.readouterr().err
    assert main(["webchat", f"model_name_or_path={tiny_llama_dir}", "--host", "0.0.0.0"]) == 2  # exposed, no login
    assert "--auth" in capsys.readouterr().err


def test_page_serves_on_loopback(tiny_llama_dir):
    import socket

    import httpx

    from tuneforge.config import load_config
    from tuneforge.webui.webchat import launch_webchat

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = load_config(None, [f"model_name_or_path={tiny_llama_dir}", "template=chatml"], require_output_dir=False)
    demo = launch_webchat(cfg, "127.0.0.1", port, False, None, block=False)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "tuneforge webchat" in page.text
    finally:
        demo.close()
