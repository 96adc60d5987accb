"""`tuneforge api x.yaml` (an OpenAI-compatible API) and `tuneforge webchat x.yaml` (a chat page): LLaMA-Factory's
`llamafactory-cli api` / `webchat`, on the batch worker."""

from __future__ import annotations

import os
import sys

from tuneforge.cli.options import parse_webui_args, pop_option
from tuneforge.cli.train_cmd import load_run_config
from tuneforge.errors import ConfigError

USAGE = """\
usage: tuneforge api [config.yaml] [key=value ...] [--host H] [--port N] [--max-batch N] [--max-waiting N]
Serves the config's model (and adapters) at http://H:N/v1 (OpenAI's chat completions; a reward model:
/v1/score/evaluation). LLaMA-Factory's environment variables work too: API_HOST (default 127.0.0.1),
API_PORT (8000), API_KEY (then every request needs `Authorization: Bearer <API_KEY>`), API_MODEL_NAME.
--max-batch: sequences decoded together (8); --max-waiting: queued requests before 429 answers (64).
Needs the `api` extra: pip install -e '.[api]'."""


def _number(text: str | None, name: str, default: int, low: int, high: int, command: str = "api") -> int:
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"tuneforge {command}: {name} expects a whole number from {low} to {high}, got {text!r}")
    return int(text)


def cmd_api(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    args = list(args)
    max_batch = _number(pop_option(args, "--max-batch"), "--max-batch", 8, 1, 256)
    host = pop_option(args, "--host") or os.environ.get("API_HOST") or "127.0.0.1"
    port = _number(pop_option(args, "--port") or os.environ.get("API_PORT"), "--port / API_PORT", 8000, 1, 65535)
    max_waiting = _number(pop_option(args, "--max-waiting"), "--max-waiting", 64, 0, 100_000)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError("the API needs fastapi and uvicorn, which are not installed: pip install -e '.[api]'") from None
    cfg = load_run_config(args, require_output_dir=False)
    from tuneforge.api import build_service, create_app

    api_key = os.environ.get("API_KEY") or None
    from tuneforge.webui.safety import is_loopback  # the web UI's rule for "only this machine"

    if not is_loopback(host) and not api_key:
        print(f"[tuneforge] warning: serving on {host} without API_KEY: anyone who can reach this machine can use "
              "the model", file=sys.stderr)
    service = build_service(cfg, max_batch=max_batch, max_waiting=max_waiting)
    print(f"[tuneforge] API for {service.model_name} at http://{host}:{port}/v1 "
          f"(auth: {'API_KEY' if api_key else 'none'}; batch {max_batch}, queue {max_waiting})", flush=True)
    uvicorn.run(create_app(service, api_key), host=host, port=port, log_level="info")
    return 0


WEBCHAT_USAGE = """\
usage: tuneforge webchat [config.yaml] [key=value ...] [--host 127.0.0.1] [--port 7860] [--share] [--auth user:password]
        [--max-batch N]
A chat page for the config's model (and adapters); several pages are decoded together (--max-batch, 8).
A page reachable from other machines (--host not loopback, --share) needs --auth (or TUNEFORGE_WEBUI_AUTH).
Needs the `webui` extra: pip install -e '.[webui]'."""


def cmd_webchat(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(WEBCHAT_USAGE)
        return 0
    args = list(args)
    max_batch = _number(pop_option(args, "--max-batch"), "--max-batch", 8, 1, 256, "webchat")
    rest: list[str] = []
    options = parse_webui_args(args, os.environ, command="webchat", rest=rest)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("webchat needs gradio, which is not installed: pip install -e '.[webui]'") from None
    cfg = load_run_config(rest, require_output_dir=False)
    from tuneforge.webui.webchat import launch_webchat

    launch_webchat(cfg, options["host"], options["port"], options["share"], options["auth"], max_batch=max_batch)
    return 0
