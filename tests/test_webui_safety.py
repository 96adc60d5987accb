"""The web UI reads and writes only where it should (issue 10, item 6).

Saved arguments are names in the web UI's own folder (Load showed any YAML on the machine, Save overwrote
any path); output and export folders outside the output root need a confirmation; `trust_remote_code` from
the extra arguments needs a confirmation; a UI served beyond loopback needs a password. The rules are pure
functions (`webui.safety`); the handlers are also called as the served app calls them (through the
Blocks' registered functions), so the wiring is tested without a browser.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from test_webui_args import UI_VALUES, write_data  # noqa: E402
from tuneforge.errors import ConfigError  # noqa: E402
from tuneforge.webui import args, safety  # noqa: E402
from tuneforge.webui.safety import Refusal  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------- saved arguments
def test_an_arguments_name_maps_into_the_webui_folder(tmp_path):
    home = tmp_path / "webui"
    assert safety.args_file(home, "my_run") == home / "args" / "my_run.yaml"
    assert safety.args_file(home, " my_run.yaml ") == home / "args" / "my_run.yaml"
    assert safety.args_file(home, "Qwen2.5-7B_lora.v2") == home / "args" / "Qwen2.5-7B_lora.v2.yaml"


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "/tmp/secret.yaml", "a/b", "a\\b",
                                  "..", "a..b", "~/x", ".hidden", "-x", "C:\\x.yaml", "x y", "é"])
def test_a_path_is_not_an_arguments_name(tmp_path, name):
    home = tmp_path / "webui"
    with pytest.raises(Refusal) as info:
        safety.args_file(home, name)
    folder = home / "args"
    assert str(info.value) == (f"`{name}` is not a name for saved arguments: use only letters, digits, `.`, `_` and "
                               f"`-` (a name, not a path); arguments are saved in and loaded from {folder} only")
    assert info.value.text("zh").startswith(f"`{name}` 不是有效的参数名称")
    with pytest.raises(Refusal, match="^Give the arguments a name"):
        safety.args_file(home, "  ")


def test_save_refuses_to_replace_a_saved_name_without_the_confirmation(tmp_path):
    home = tmp_path / "webui"
    path = safety.save_args(home, "run", "a: 1\n")
    assert path == home / "args" / "run.yaml" and path.read_text() == "a: 1\n"
    with pytest.raises(Refusal) as info:
        safety.save_args(home, "run", "a: 2\n")
    assert str(info.value).startswith(f"Arguments named `run` already exist ({path}); tick “Overwrite saved")
    assert path.read_text() == "a: 1\n"
    safety.save_args(home, "run", "a: 2\n", overwrite=True)
    assert path.read_text() == "a: 2\n"
    # a link planted in the folder is replaced, never written through
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (home / "args" / "linked.yaml").symlink_to(victim)
    with pytest.raises(Refusal, match="already exist"):
        safety.save_args(home, "linked", "a: 3\n")
    safety.save_args(home, "linked", "a: 3\n", overwrite=True)
    assert victim.read_text() == "keep me" and (home / "args" / "linked.yaml").read_text() == "a: 3\n"
    assert safety.list_saved_args(home) == ["linked", "run"]


def test_load_reads_only_names_saved_in_the_webui_folder(tmp_path):
    home = tmp_path / "webui"
    secret = tmp_path / "secret.yaml"
    secret.write_text("hf_token: hf_SECRET\npassword: hunter2\n")
    assert safety.list_saved_args(home) == []
    with pytest.raises(Refusal, match="is not a name for saved arguments"):
        safety.load_args(home, str(secret))
    with pytest.raises(Refusal, match="is not a name for saved arguments"):
        safety.load_args(home, "../../secret")
    (home / "args").mkdir(parents=True)
    (home / "args" / "planted.yaml").symlink_to(secret)
    safety.save_args(home, "mine", "seed: 3\n")
    with pytest.raises(Refusal) as info:
        safety.load_args(home, "planted")
    assert str(info.value) == f"No saved arguments named `planted` in {home / 'args'}; saved names: mine"
    assert safety.load_args(home, "mine") == {"seed": 3}


# ---------------------------------------------------------------------------------------- output folders
def test_output_folders_outside_the_root_need_a_confirmation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = (tmp_path / "saves").resolve()
    assert args.build_train_config(UI_VALUES, "saves")["output_dir"] == "saves/smollm2/lora/run1"
    for given in ("/etc/cron.d", "../elsewhere", "saves/../elsewhere", "./run1", ".."):
        with pytest.raises(Refusal) as info:
            args.build_train_config({**UI_VALUES, "output_dir": given}, "saves")
        folder = (tmp_path / args.resolve_output_dir("saves", "builtin:smollm2", "lora", given)).resolve()
        assert str(info.value) == (f"The folder {folder} is outside the output root {root}; choose a folder inside "
                                   f"{root}, or tick “Allow … outside {root}” if you mean it")
        assert info.value.text("zh").startswith(f"文件夹 {folder} 不在输出根目录 {root} 之内")
        config = args.build_train_config({**UI_VALUES, "output_dir": given}, "saves", allow_outside=True)
        assert config["output_dir"] == given
    with pytest.raises(Refusal, match="The folder /etc is outside the output root"):  # extra args cannot bypass it
        args.build_train_config({**UI_VALUES, "extra_args": '{"output_dir": "/etc"}'}, "saves")
    (tmp_path / "saves").mkdir()
    (tmp_path / "saves" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(Refusal, match="outside the output root"):  # links are followed
        args.build_train_config({**UI_VALUES, "output_dir": "saves/link/run"}, "saves")
    with pytest.raises(Refusal, match="outside the output root"):  # the root itself holds runs, it is not one
        safety.check_inside_root("saves", "saves")
    absolute_inside = str(root / "mine" / "run")
    assert args.build_train_config({**UI_VALUES, "output_dir": absolute_inside}, "saves")["output_dir"] == absolute_inside

    model = {"model_path": "builtin:smollm2", "finetuning_type": "lora"}
    assert args.build_predict_config(model, {"eval_dataset": ["tiny"], "eval_output_dir": "eval1"}, "saves")
    with pytest.raises(Refusal, match=r"^The folder /tmp is outside the output root"):
        args.build_predict_config(model, {"eval_dataset": ["tiny"], "eval_output_dir": "/tmp"}, "saves")
    assert args.build_predict_config(model, {"eval_dataset": ["tiny"], "eval_output_dir": "/tmp"}, "saves",
                                     allow_outside=True)["output_dir"] == "/tmp"


# ---------------------------------------------------------------------------------------- remote code
@pytest.mark.parametrize("value", ["true", '"true"', '"yes"', "1"])
def test_trust_remote_code_from_the_extra_arguments_needs_a_confirmation(value):
    extra = f'{{"trust_remote_code": {value}}}'
    with pytest.raises(Refusal) as info:
        args.build_train_config({**UI_VALUES, "extra_args": extra}, "saves")
    assert str(info.value) == ("`trust_remote_code` lets the model repository run its own Python code on this machine; "
                               "tick “Allow trust_remote_code” to confirm, or remove it from the extra arguments")
    assert info.value.text("zh").startswith("`trust_remote_code` 会让模型仓库在本机运行其自带的 Python 代码")
    config = args.build_train_config({**UI_VALUES, "extra_args": extra}, "saves", allow_remote_code=True)
    assert "trust_remote_code" in config


def test_trust_remote_code_off_needs_nothing():
    config = args.build_train_config({**UI_VALUES, "extra_args": '{"trust_remote_code": false}'}, "saves")
    assert config["trust_remote_code"] is False


# ---------------------------------------------------------------------------------------- serving
def test_an_exposed_ui_needs_a_password():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LocalHost"):
        assert safety.is_loopback(host), host
        assert safety.exposure_warning(host, 7860, False, None) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not safety.is_loopback(host), host
    with pytest.raises(ConfigError) as info:
        safety.exposure_warning("0.0.0.0", 7860, False, None)
    assert str(info.value) == ("the web UI would serve http://0.0.0.0:7860 (every network interface of this machine) "
                               "to other machines without a password; add --auth user:password (or set "
                               "TUNEFORGE_WEBUI_AUTH=user:password), or serve on 127.0.0.1 only")
    with pytest.raises(ConfigError, match=r"serve http://127\.0\.0\.1:80 and a public gradio\.live link to other"):
        safety.exposure_warning("127.0.0.1", 80, True, None)
    with pytest.raises(ConfigError, match=r"^网页界面将在没有密码的情况下向其它机器提供 http://\[fe80::1\]:7860"):
        safety.exposure_warning("fe80::1", 7860, False, None, "zh")
    warning = safety.exposure_warning("10.0.0.2", 8000, False, ("me", "pw"), root="/srv/saves")
    assert warning == ("[tuneforge] WARNING: the web UI is exposed beyond this machine: it serves http://10.0.0.2:8000. "
                       "Anyone with the password of user `me` can train, export and write files under /srv/saves.")


def test_auth_from_the_command_line_or_the_environment():
    from tuneforge.cli.main import parse_webui_args

    base = {"host": "127.0.0.1", "port": 7860, "share": False, "lang": "en", "auth": None}
    assert parse_webui_args([], {}) == base
    assert parse_webui_args(["--host", "0.0.0.0", "--auth", "me:p:w"], {}) == {**base, "host": "0.0.0.0",
                                                                                 "auth": ("me", "p:w")}
    assert parse_webui_args(["--auth=me:pw", "--share"], {})["auth"] == ("me", "pw")
    env = {safety.AUTH_ENV: "env:secret"}
    assert parse_webui_args([], env)["auth"] == ("env", "secret")
    assert parse_webui_args(["--auth", "cli:pw"], env)["auth"] == ("cli", "pw")  # the flag wins
    for bad in ("mepw", ":pw", "me:"):
        with pytest.raises(ConfigError, match=r"^--auth expects user:password with a non-empty user and password"):
            parse_webui_args(["--auth", bad], {})
    with pytest.raises(ConfigError, match=r"^TUNEFORGE_WEBUI_AUTH expects user:password"):
        parse_webui_args([], {safety.AUTH_ENV: "nopassword"})


def test_webui_on_all_interfaces_without_a_password_does_not_start(capsys, monkeypatch, tmp_path):
    from tuneforge.cli.main import main
    from tuneforge.webui.app import launch

    monkeypatch.delenv(safety.AUTH_ENV, raising=False)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    port = free_port()
    assert main(["webui", "--host", "0.0.0.0", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the web UI would serve http://0.0.0.0:{port} (every network interface") and "--auth" in err
    with pytest.raises(ConfigError, match="without a password"):
        launch("0.0.0.0", port, share=False)
    assert not (tmp_path / "cache").exists()  # refused before anything was built or bound


def test_exposed_ui_with_a_password_warns_and_asks_for_the_login(capsys, monkeypatch, tmp_path):
    from tuneforge.webui.app import launch

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    port = free_port()
    demo = launch("0.0.0.0", port, False, "en", "me:pw", block=False)
    try:
        out = capsys.readouterr().out
        assert (f"[tuneforge] WARNING: the web UI is exposed beyond this machine: it serves http://0.0.0.0:{port} "
                "(every network interface of this machine). Anyone with the password of user `me`") in out
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10).read()
        assert info.value.code == 401
    finally:
        demo.close()


# ---------------------------------------------------------------------------------------- the served handlers
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The Blocks as `tuneforge webui` builds them, with the web UI folder and output root in a temp folder."""
    from tuneforge.webui.app import AppContext, build_app
    from tuneforge.webui.chat import ChatSession
    from tuneforge.webui.jobs import JobManager

    base = tmp_path_factory.mktemp("served")
    write_data(base / "data")
    ctx = AppContext(jobs=JobManager(base / "webui", workdir=base), chat=ChatSession(), save_root=str(base / "saves"))
    return build_app(ctx), ctx, base


def call(demo, name: str, **by_elem_id):
    """Run the event handler `name` as gradio would, with the page's values (given ones by elem_id)."""
    fn = next(b for b in demo.fns.values() if b.name == name)
    given = {key.replace("_", "-"): value for key, value in by_elem_id.items()}
    assert set(given) <= {c.elem_id for c in fn.inputs}, (set(given), [c.elem_id for c in fn.inputs])
    values = [given.get(c.elem_id, c.value) for c in fn.inputs]
    return fn.fn(dict(zip(fn.inputs, values))) if fn.inputs_as_dict else fn.fn(*values)


def train_values(base: Path, **more):
    return {"tf_dataset_dir": str(base / "data"), "tf_dataset": ["tiny"], **more}


def test_load_arguments_shows_no_file_from_outside_the_webui_folder(app):
    demo, ctx, base = app
    secret = base / "secret.yaml"
    secret.write_text("hf_token: hf_SECRET\npassword: hunter2\n")
    for lang, start in (("en", "Error: `"), ("zh", "错误：`")):
        out = call(demo, "load_arguments", tf_args_name=str(secret), tf_lang=lang)
        assert "hunter2" not in repr(out)
        assert out[-1].startswith(f"{start}{secret}`"), out[-1]
        assert str(ctx.home / "args") in out[-1]


def test_save_arguments_writes_only_named_files_and_asks_before_replacing(app):
    demo, ctx, base = app
    victim = base / "victim.txt"
    victim.write_text("important")
    notice, *_ = call(demo, "save_arguments", **train_values(base), tf_args_name=str(victim))
    assert notice.startswith(f"Error: `{victim}` is not a name for saved arguments") and victim.read_text() == "important"

    saved = ctx.home / "args" / "mine.yaml"
    notice, names, overwrite = call(demo, "save_arguments", **train_values(base), tf_args_name="mine")
    assert notice == f"Arguments `mine` saved to {saved}" and "mine" in names["choices"][0]
    first = saved.read_text()
    notice, *_ = call(demo, "save_arguments", **train_values(base, tf_max_steps=7), tf_args_name="mine")
    assert notice.startswith(f"Error: Arguments named `mine` already exist ({saved})") and saved.read_text() == first
    notice, _, overwrite = call(demo, "save_arguments", **train_values(base, tf_max_steps=7), tf_args_name="mine",
                                tf_args_overwrite=True)
    assert notice.startswith("Arguments `mine` saved") and "max_steps: 7" in saved.read_text() and overwrite is False

    out = call(demo, "load_arguments", tf_args_name="mine", tf_lang="en")
    assert out[-1] == f"Arguments `mine` loaded from {saved}"
    assert {"value": 7, "__type__": "update"} in out


def test_start_refuses_an_outside_folder_and_remote_code_without_confirmation(app):
    demo, ctx, base = app
    outside = base / "elsewhere"
    notice = call(demo, "start", **train_values(base), tf_output_dir=str(outside))
    assert notice.startswith(f"Error: The folder {outside} is outside the output root {Path(ctx.save_root).resolve()}")
    notice = call(demo, "start", **train_values(base), tf_output_dir=str(outside), tf_lang="zh")
    assert notice.startswith(f"错误：文件夹 {outside} 不在输出根目录")
    notice = call(demo, "start", **train_values(base), tf_extra_args='{"trust_remote_code": true}')
    assert notice.startswith("Error: `trust_remote_code` lets the model repository run its own Python code")
    assert ctx.jobs.snapshot().status == "idle" and not outside.exists()
    # confirmed, the same values get past the check (to the config loader, which names the unknown dataset)
    notice = call(demo, "preview_command", **train_values(base, tf_dataset=["nope"]), tf_output_dir=str(outside),
                  tf_allow_outside=True, tf_extra_args='{"trust_remote_code": true}', tf_allow_remote_code=True)
    assert "outside the output root" not in notice[1] and "trust_remote_code" not in notice[1]


def test_export_and_predict_refuse_a_folder_outside_the_root(app):
    demo, ctx, base = app
    unrelated = base / "my_documents"
    unrelated.mkdir()
    (unrelated / "thesis.txt").write_text("years of work")
    info = call(demo, "export", tf_export_dir=str(unrelated), tf_model_path="builtin:smollm2")
    assert info.startswith(f"Error: The folder {unrelated} is outside the output root") and "tick" in info
    assert (unrelated / "thesis.txt").read_text() == "years of work"
    for mode in ("predict", "recall"):
        notice, *_ = call(demo, "start_evaluation", tf_eval_mode=mode, tf_eval_dataset=["tiny"],
                          tf_eval_output_dir=str(unrelated))
        assert notice.startswith(f"Error: The folder {unrelated} is outside the output root"), mode
    assert ctx.jobs.snapshot().status == "idle" and sorted(p.name for p in unrelated.iterdir()) == ["thesis.txt"]


def test_export_passes_the_gptq_choice_on(app):
    demo, ctx, base = app
    folder = Path(ctx.save_root) / "gptq_export"
    info = call(demo, "export", tf_export_dir=str(folder), tf_model_path="builtin:smollm2", tf_export_quant_bit="4",
                tf_export_quant_data=str(base / "missing.jsonl"))
    assert info.startswith("Error: export_quantization_dataset: ") and "missing.jsonl is not a file" in info
    assert not folder.exists()
