"""`tuneforge` command line: parse, call the workflow, print. No training logic lives here."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from tuneforge import __version__
from tuneforge.errors import ConfigError, TuneforgeError

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

USAGE = """\
tuneforge {version} — fine-tune open LLMs with LLaMA-Factory-compatible configs

usage: tuneforge [--debug] <command> [config.yaml] [key=value ...]

commands:
  train    fine-tune a model (stages pt, sft)            tuneforge train examples/demo_lora_sft.yaml
  chat     chat with a model / adapter in the terminal   tuneforge chat examples/demo_chat.yaml
  export   merge adapters and save a standalone model    tuneforge export examples/demo_merge.yaml
  data     preview how a dataset is rendered and masked  tuneforge data preview examples/demo_lora_sft.yaml
  webui    train, chat and export in the browser         tuneforge webui [--host H] [--port N] [--share] [--lang zh] [--auth U:P]
  bench    time training steps: tokens/s, memory, MFU   tuneforge bench examples/demo_lora_sft.yaml --steps 20
  estimate predict training memory before a run          tuneforge estimate examples/demo_lora_sft.yaml
  env      print library versions and the device
  version  print the tuneforge version

Any config key can be given or overridden on the command line as key=value or --key value.
`tuneforge train -h` lists every accepted key with its default. Add --debug for tracebacks.
"""


def split_config_and_overrides(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The first argument is the config file when it looks like one; everything else is overrides."""
    if args and not args[0].startswith("-") and args[0].lower().endswith(CONFIG_SUFFIXES):
        return args[0], list(args[1:])
    return None, list(args)


def _load(args: Sequence[str], **kwargs):
    from tuneforge.config.parser import load_config

    path, overrides = split_config_and_overrides(args)
    return load_config(path, overrides, **kwargs)


def cmd_train(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        from tuneforge.config.help import format_key_help

        print("usage: tuneforge train [config.yaml] [key=value ...]\n")
        print(format_key_help())
        return 0
    from tuneforge.train.tuner import run_train

    metrics = run_train(_load(args))
    return 130 if isinstance(metrics, dict) and metrics.get("interrupted") else 0


def _pop_option(args: list[str], name: str) -> str | None:
    """Remove `--name value` / `--name=value` from args (a command option, not a config key)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def cmd_chat(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print("usage: tuneforge chat [config.yaml] [key=value ...] [--prompt TEXT] [--answer TEXT]\n"
              "Type a message; `clear` resets the history, `exit` quits. --prompt answers once.\n"
              "With a reward model (value_head.safetensors in the adapter/model folder) it scores\n"
              "answers instead: --prompt TEXT --answer TEXT prints the score.")
        return 0
    prompt = _pop_option(args, "--prompt")
    answer = _pop_option(args, "--answer")
    from tuneforge.infer.chat_cli import run_chat, run_reward_chat
    from tuneforge.infer.reward import is_reward_model

    cfg = _load(args, require_output_dir=False)
    if is_reward_model(cfg):  # a value head next to the weights: score answers instead of generating
        return run_reward_chat(cfg, prompt=prompt, answer=answer)
    if answer is not None:
        raise ConfigError("--answer is for reward models (a folder with value_head.safetensors)")
    return run_chat(cfg, prompt=prompt)


def cmd_export(args: list[str]) -> int:
    from tuneforge.export import run_export

    run_export(_load(args, require_output_dir=False))
    return 0


def cmd_data(args: list[str]) -> int:
    if not args or args[0] != "preview" or any(a in ("-h", "--help") for a in args):
        print("usage: tuneforge data preview [config.yaml] [key=value ...] [-n N]\n"
              "Shows the first N samples as the model sees them, trained tokens marked, and the data report.")
        return 0 if args and args[0] in ("-h", "--help") else 2
    rest = list(args[1:])
    count = int(_pop_option(rest, "-n") or _pop_option(rest, "--num") or 3)
    from tuneforge.train.tuner import preview_data

    print(preview_data(_load(rest, require_output_dir=False), count))
    return 0


WEBUI_USAGE = """\
usage: tuneforge webui [--host 127.0.0.1] [--port 7860] [--share] [--lang en|zh] [--auth user:password]
Serves the web UI (needs the `webui` extra: pip install -e '.[webui]').
  --auth user:password  the login the browser asks for; required with a --host other than 127.0.0.1 / ::1 /
                        localhost or with --share (the variable TUNEFORGE_WEBUI_AUTH=user:password is read
                        when --auth is not given)"""


def parse_webui_args(args: Sequence[str], environ: Mapping[str, str]) -> dict:
    """`tuneforge webui` options -> launch()'s arguments (host, port, share, lang, auth)."""
    from tuneforge.webui.safety import resolve_auth

    args = list(args)
    share = "--share" in args
    args = [a for a in args if a != "--share"]
    host = _pop_option(args, "--host") or "127.0.0.1"
    port_text = _pop_option(args, "--port") or "7860"
    lang = _pop_option(args, "--lang") or "en"
    auth_text = _pop_option(args, "--auth")
    if args:
        raise ConfigError(f"tuneforge webui: unexpected argument(s) {' '.join(args)}; see `tuneforge webui -h`")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"tuneforge webui: --port expects a number between 1 and 65535, got {port_text!r}")
    return {"host": host, "port": int(port_text), "share": share, "lang": lang,
            "auth": resolve_auth(auth_text, environ)}


def cmd_webui(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(WEBUI_USAGE)
        return 0
    options = parse_webui_args(args, os.environ)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("the web UI needs gradio, which is not installed: pip install -e '.[webui]'") from None
    from tuneforge.webui.app import launch

    launch(**options)
    return 0


def cmd_env(_: list[str]) -> int:
    import platform
    from importlib import metadata

    print(f"tuneforge    {__version__}")
    print(f"python       {platform.python_version()} ({platform.platform()})")
    for name in ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "safetensors", "gguf"):
        try:
            print(f"{name:<12} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(f"{name:<12} not installed")
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device       cuda ({torch.cuda.device_count()}x {names})")
    else:
        print(f"device       cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    return 0


def cmd_bench(args: list[str]) -> int:
    from tuneforge.bench.cli import main_bench

    return main_bench(args)


def cmd_estimate(args: list[str]) -> int:
    from tuneforge.estimate import main_estimate

    return main_estimate(args)


def cmd_version(_: list[str]) -> int:
    print(__version__)
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "chat": cmd_chat,
    "export": cmd_export,
    "data": cmd_data,
    "bench": cmd_bench,
    "estimate": cmd_estimate,
    "webui": cmd_webui,
    "env": cmd_env,
    "version": cmd_version,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(version=__version__))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        print(f"error: unknown command `{command}`.{hint} Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from tuneforge.utils.logging import setup_logging

    setup_logging(logging.DEBUG if debug else logging.INFO)
    try:
        return COMMANDS[command](rest)
    except TuneforgeError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tuneforge train -h | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
