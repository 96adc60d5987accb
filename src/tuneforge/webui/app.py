"""Build the gradio Blocks and serve them: `launch(host, port, share, lang, auth)` is `tuneforge webui`."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.webui.chat import ChatSession
from tuneforge.webui.i18n import LANGS
from tuneforge.webui.jobs import JobManager
from tuneforge.webui.safety import exposure_warning, parse_auth

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


@dataclass
class AppContext:
    """What the handlers of one served app share: the job manager, the chat model, where runs go."""

    jobs: JobManager
    chat: ChatSession
    save_root: str = "saves"
    langs: tuple[str, ...] = LANGS
    lang_selector: Any = None  # the language dropdown, set by the model bar

    @property
    def home(self) -> Path:
        """The web UI's own folder (job state, saved arguments): the job manager's state folder."""
        return self.jobs.state_dir


def webui_home() -> Path:
    """Where a served web UI keeps its own files: `<tuneforge cache>/webui`."""
    from tuneforge.model.demo import cache_root

    return cache_root() / "webui"


def build_app(ctx: AppContext, lang: str = "en"):
    import gradio as gr

    from tuneforge.webui.components import UI
    from tuneforge.webui.components.chat_tab import create_chat_tab
    from tuneforge.webui.components.eval_tab import create_eval_tab
    from tuneforge.webui.components.export_tab import create_export_tab
    from tuneforge.webui.components.model_bar import create_model_bar
    from tuneforge.webui.components.train_tab import create_train_tab

    ui = UI(lang, root=str(ctx.save_root))
    with gr.Blocks(title="tuneforge", analytics_enabled=False) as demo:
        ui.add("title", gr.Markdown(ui.label("title")))
        create_model_bar(ui, ctx)
        with gr.Tabs():
            create_train_tab(ui, ctx)
            create_eval_tab(ui, ctx)
            create_chat_tab(ui, ctx)
            create_export_tab(ui, ctx)
        elems = list(ui.elems.values())
        ctx.lang_selector.change(ui.relabel, [ctx.lang_selector], elems)
    return demo


def local_url(host: str, port: int) -> str:
    """The address to open on this machine for a server bound to `host` (all interfaces: 127.0.0.1)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def check_port_free(host: str, port: int) -> None:
    """A clear error before gradio's own ("Cannot find empty port") when the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ConfigError(f"cannot serve the web UI on {host}:{port}: the port is already in use or not "
                              f"available ({err.strerror}); choose another one with --port N") from None


def launch(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, share: bool = False, lang: str = "en",
           auth: tuple[str, str] | str | None = None, *, save_root: str = "saves", block: bool = True):
    """Serve the web UI on http://host:port (the URL is printed); returns the running Blocks when not blocking.

    `auth` is `(user, password)` or "user:password"; it is required when the UI is reachable from other
    machines (`host` not loopback, or `share`), and then a warning names the address served.
    """
    if lang not in LANGS:
        raise ConfigError(f"--lang {lang}: expected one of {', '.join(LANGS)}")
    if isinstance(auth, str):
        auth = parse_auth(auth)
    warning = exposure_warning(host, port, share, auth, lang, save_root)  # refuses an exposed UI without auth
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_port_free(host, port)
    ctx = AppContext(jobs=JobManager(webui_home(), workdir=Path.cwd()), chat=ChatSession(), save_root=save_root)
    demo = build_app(ctx, lang)
    if warning:
        print(warning, flush=True)
    print(f"[tuneforge] web UI: {local_url(host, port)}  (Ctrl-C to stop)", flush=True)
    demo.queue(default_concurrency_limit=4).launch(server_name=host, server_port=port, share=share, quiet=True,
                                                   auth=tuple(auth) if auth else None,
                                                   prevent_thread_lock=not block, show_error=True)
    return demo
