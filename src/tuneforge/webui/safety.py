"""What the web UI may read, write and expose. Pure rules, no gradio, so each one is unit-tested.

- Saved arguments are a *name* (`my_run` -> `<web UI folder>/args/my_run.yaml`), never a path: Load reads
  only that folder, Save writes only there and replaces a saved name only when the user confirms.
- Output folders (train, predict, export) must lie inside the output root unless the user confirms.
- Config keys that run code from a model repository (`trust_remote_code`) need a confirmation.
- A UI served beyond this machine (`--host` not loopback, or `--share`) needs a password.

Refusals are `Refusal` errors: one message, in English or Chinese (`Refusal.text(lang)`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.webui.i18n import message

ARGS_FOLDER = "args"
ARGS_SUFFIX = ".yaml"
ARGS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
REMOTE_CODE_KEYS = ("trust_remote_code",)  # config keys that let a model repository run its own code
AUTH_ENV = "TUNEFORGE_WEBUI_AUTH"
FALSE_TEXTS = ("", "false", "0", "no", "off", "none", "null")


class Refusal(ConfigError):
    """Something the web UI will not do; `text(lang)` says why in the UI's language (str() is English)."""

    def __init__(self, message_key: str, /, **values: Any) -> None:
        self.key, self.values = message_key, values
        super().__init__(self.text("en"))

    def text(self, lang: str) -> str:
        return message(self.key, lang, **self.values)


# ---------------------------------------------------------------------------------------- saved arguments
def args_folder(home: str | Path) -> Path:
    """Where the web UI keeps saved arguments: `<web UI folder>/args`."""
    return Path(home) / ARGS_FOLDER


def args_file(home: str | Path, name: str | None) -> Path:
    """A saved-arguments name -> its file in `args_folder(home)`; anything that is not a plain name is refused."""
    folder = args_folder(home)
    name = (name or "").strip()
    stem = name[: -len(ARGS_SUFFIX)] if name.endswith(ARGS_SUFFIX) else name
    if not name:
        raise Refusal("args_no_name", folder=folder)
    if not ARGS_NAME.fullmatch(stem) or ".." in stem:
        raise Refusal("args_bad_name", name=name, folder=folder)
    return folder / f"{stem}{ARGS_SUFFIX}"


def list_saved_args(home: str | Path) -> list[str]:
    """The names saved in the web UI's folder (plain files only), sorted."""
    folder = args_folder(home)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(ARGS_SUFFIX)] for p in folder.glob(f"*{ARGS_SUFFIX}")
                  if p.is_file() and not p.is_symlink() and ARGS_NAME.fullmatch(p.name[: -len(ARGS_SUFFIX)]))


def save_args(home: str | Path, name: str | None, text: str, *, overwrite: bool = False) -> Path:
    """Write `text` as the saved arguments `name`; an existing name is replaced only with `overwrite`."""
    path = args_file(home, name)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise Refusal("args_exists", name=path.stem, path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()  # replace the link itself, never write through it
    path.write_text(text, encoding="utf-8")
    return path


def load_args(home: str | Path, name: str | None) -> dict[str, Any]:
    """The config saved under `name` in the web UI's folder (and nowhere else)."""
    from tuneforge.config.parser import read_config_file

    path = args_file(home, name)
    if path.is_symlink() or not path.is_file():
        saved = ", ".join(list_saved_args(home)) or "-"
        raise Refusal("args_missing", name=path.stem, folder=path.parent, names=saved)
    return read_config_file(path)


# ---------------------------------------------------------------------------------------- output folders
def check_inside_root(folder: str | Path, root: str | Path, allow_outside: bool = False) -> Path:
    """The resolved `folder` when it lies inside the output root (or the user allowed a folder outside it).

    Relative paths are taken from the current folder, as the jobs and the export take them; links are
    followed, so `saves/link -> /elsewhere` is outside too.
    """
    resolved = Path(folder).resolve()
    root_resolved = Path(root).resolve()
    if allow_outside or root_resolved in resolved.parents:
        return resolved
    raise Refusal("outside_root", folder=resolved, root=root_resolved)


# ---------------------------------------------------------------------------------------- remote code
def _is_set(value: Any) -> bool:
    return value is not None and value is not False and str(value).strip().lower() not in FALSE_TEXTS


def check_remote_code(config: Mapping[str, Any], allow: bool = False) -> None:
    """Refuse keys that run a model repository's own Python code unless the user confirmed it."""
    for key in REMOTE_CODE_KEYS:
        if _is_set(config.get(key)) and not allow:
            raise Refusal("remote_code", option=key)


# ---------------------------------------------------------------------------------------- serving
def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(value: str, source: str = "--auth") -> tuple[str, str]:
    """`user:password` -> (user, password); the password may contain `:`, neither part may be empty."""
    user, sep, password = (value or "").partition(":")
    if not sep or not user.strip() or not password:
        raise ConfigError(f"{source} expects user:password with a non-empty user and password "
                          f"(got {'no `:`' if not sep else 'an empty user or password'})")
    return user.strip(), password


def resolve_auth(cli_value: str | None, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The login from `--auth`, else from $TUNEFORGE_WEBUI_AUTH (an optional override), else None."""
    if cli_value is not None:
        return parse_auth(cli_value, "--auth")
    if environ.get(AUTH_ENV):
        return parse_auth(environ[AUTH_ENV], AUTH_ENV)
    return None


def served_address(host: str, port: int, share: bool, lang: str = "en") -> str:
    """The address(es) a served UI answers on, in words."""
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}"
    if host in ("0.0.0.0", "::", ""):
        address += message("all_interfaces", lang)
    if share:
        address += message("public_link", lang)
    return address


def exposure_warning(host: str, port: int, share: bool, auth: tuple[str, str] | None, lang: str = "en",
                     root: str | Path = "saves") -> str | None:
    """None when only this machine can reach the UI; the warning to print when it is exposed with a
    password; a ConfigError when it would be exposed without one."""
    if is_loopback(host) and not share:
        return None
    address = served_address(host, port, share, lang)
    if auth is None:
        raise ConfigError(message("auth_required", lang, address=address, env=AUTH_ENV))
    return message("exposed_warning", lang, address=address, user=auth[0], root=Path(root).resolve())
