"""Command options that are not config keys (`--prompt TEXT`, `--port N`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tuneforge.errors import ConfigError


def pop_option(args: list[str], name: str) -> str | None:
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


DATA_SUBCOMMANDS = ("preview", "check")  # tuneforge data ...


def split_data_options(subcommand: str, args: Sequence[str]) -> tuple[list[str], int, bool]:
    """`tuneforge data preview|check` arguments after the subcommand -> (config and key=value overrides, the
    preview's sample count `-n` / `--num`, default 3, check's `--json`). Each subcommand takes only its own option;
    the other one stays among the overrides, which refuse it."""
    rest, count, as_json = list(args), "3", False
    if subcommand == "check":
        as_json = "--json" in rest
        rest = [a for a in rest if a != "--json"]
    else:
        count = pop_option(rest, "-n") or pop_option(rest, "--num") or count
        if not count.isdigit():
            raise ConfigError(f"tuneforge data preview: -n / --num expects a number of samples, got {count!r}")
    return rest, int(count), as_json


def parse_webui_args(args: Sequence[str], environ: Mapping[str, str], *, command: str = "webui",
                     rest: list[str] | None = None) -> dict:
    """`tuneforge webui` options -> launch()'s arguments (host, port, share, lang, auth). With `rest`, the other
    arguments (a config and its key=value overrides: `tuneforge webchat`) are put there instead of refused."""
    from tuneforge.webui.safety import resolve_auth

    args = list(args)
    share = "--share" in args
    args = [a for a in args if a != "--share"]
    host = pop_option(args, "--host") or "127.0.0.1"
    port_text = pop_option(args, "--port") or "7860"
    lang = pop_option(args, "--lang") or "en"
    auth_text = pop_option(args, "--auth")
    if rest is not None:
        rest.extend(args)
    elif args:
        raise ConfigError(f"tuneforge {command}: unexpected argument(s) {' '.join(args)}; see `tuneforge {command} -h`")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"tuneforge {command}: --port expects a number between 1 and 65535, got {port_text!r}")
    return {"host": host, "port": int(port_text), "share": share, "lang": lang,
            "auth": resolve_auth(auth_text, environ)}
