"""`cpu_allocator`: which allocator a CPU run asks for, and the restart under it (utils/allocator.py)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

from tuneforge.cli import cpu_allocator as cli_allocator
from tuneforge.errors import ConfigError
from tuneforge.utils import allocator
from tuneforge.utils.allocator import allocator_to_preload, find_tcmalloc, preloaded_allocator


@pytest.fixture
def fake_tcmalloc(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "lib").mkdir()
    library = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    return [tmp_path / "empty", tmp_path / "lib"], str(library)


def test_the_first_folder_holding_tcmalloc_is_used(fake_tcmalloc, tmp_path):
    dirs, library = fake_tcmalloc
    assert find_tcmalloc(dirs) == library
    assert find_tcmalloc([tmp_path / "empty"]) is None


def test_auto_preloads_tcmalloc_for_a_cpu_run_only(fake_tcmalloc, tmp_path):
    dirs, library = fake_tcmalloc
    assert allocator_to_preload("auto", {}, on_cpu=True, dirs=dirs) == (library,
                                                                        f"CPU memory allocator: tcmalloc ({library})")
    assert allocator_to_preload("auto", {}, on_cpu=False, dirs=dirs) == (None, None)
    assert allocator_to_preload("tcmalloc", {}, on_cpu=False, dirs=dirs)[0] == library
    assert allocator_to_preload("system", {}, on_cpu=True, dirs=dirs) == (None, None)
    missing, hint = allocator_to_preload("auto", {}, on_cpu=True, dirs=[tmp_path / "empty"])
    assert missing is None and "apt install libtcmalloc-minimal4" in hint
    with pytest.raises(ValueError, match="no tcmalloc library found"):
        allocator_to_preload("tcmalloc", {}, on_cpu=True, dirs=[tmp_path / "empty"])


def test_an_allocator_the_user_preloaded_is_kept(fake_tcmalloc):
    dirs, _ = fake_tcmalloc
    env = {"LD_PRELOAD": "/opt/x/libfoo.so /usr/lib/libjemalloc.so.2"}
    assert preloaded_allocator(env) == "/usr/lib/libjemalloc.so.2"
    assert allocator_to_preload("tcmalloc", env, on_cpu=True, dirs=dirs) == (
        None, "CPU memory allocator: libjemalloc.so.2 (LD_PRELOAD)")
    assert preloaded_allocator({"LD_PRELOAD": "/opt/x/libfoo.so"}) is None


def test_a_process_a_launcher_started_is_not_replaced(fake_tcmalloc):
    dirs, _ = fake_tcmalloc
    assert allocator_to_preload("auto", {"LOCAL_RANK": "0"}, on_cpu=True, dirs=dirs) == (None, None)
    library, note = allocator_to_preload("tcmalloc", {"TORCHELASTIC_RUN_ID": "x"}, on_cpu=True, dirs=dirs)
    assert library is None and "start the launcher with LD_PRELOAD" in note


def _cli_args(tmp_path):
    return ["model_name_or_path=m", "dataset=d", "template=chatml", f"output_dir={tmp_path / 'out'}"]


def test_the_cli_restarts_a_cpu_run_under_the_library_found(fake_tcmalloc, tmp_path, monkeypatch):
    dirs, library = fake_tcmalloc
    restarts = []
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator, "library_dirs", lambda env: dirs)
    monkeypatch.setattr(cli_allocator, "gpu_device_present", lambda: False)
    monkeypatch.setattr(cli_allocator, "restart_with_preload", lambda lib, env: restarts.append(lib))
    cli_allocator.run_under_cpu_allocator(None, _cli_args(tmp_path))
    cli_allocator.run_under_cpu_allocator(None, [*_cli_args(tmp_path), "cpu_allocator=system"])
    monkeypatch.setattr(cli_allocator, "gpu_device_present", lambda: True)
    cli_allocator.run_under_cpu_allocator(None, _cli_args(tmp_path))  # a GPU machine: auto leaves malloc alone
    cli_allocator.run_under_cpu_allocator(None, [*_cli_args(tmp_path), "use_cpu=true"])
    assert restarts == [library, library]


def test_asking_for_tcmalloc_without_it_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator, "library_dirs", lambda env: [tmp_path])
    with pytest.raises(ConfigError, match=r"cpu_allocator: tcmalloc: no tcmalloc library found .*apt install "
                                          r"libtcmalloc-minimal4.*`cpu_allocator: auto` / `system`"):
        cli_allocator.run_under_cpu_allocator(None, [*_cli_args(tmp_path), "cpu_allocator=tcmalloc"])


def test_the_restart_keeps_the_process_its_arguments_and_adds_the_library(tmp_path):
    library = ctypes.util.find_library("m")  # any loadable library shows the mechanism
    assert library
    script = tmp_path / "restart.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from tuneforge.utils.allocator import restart_with_preload
        print("pid", os.getpid(), "argv", sys.argv[1:], "preload", os.environ.get("LD_PRELOAD"))
        if "{library}" not in os.environ.get("LD_PRELOAD", ""):
            restart_with_preload("{library}", os.environ)
    """))
    env = {**os.environ, "LD_PRELOAD": ""}
    result = subprocess.run([sys.executable, str(script), "a b", "--x"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.splitlines()
    assert before.split()[:2] == after.split()[:2]  # the same process id
    assert "argv ['a b', '--x'] preload " in before and after.endswith(f"argv ['a b', '--x'] preload {library}")


def test_only_the_command_line_process_restarts_not_a_call_from_python(tmp_path, monkeypatch):
    from tuneforge.cli import main as cli_main

    calls = []
    monkeypatch.setattr(cli_allocator, "run_under_cpu_allocator", lambda config, overrides, data_only=False:
                        calls.append((config, list(overrides), data_only)))
    missing = str(tmp_path / "missing.yaml")
    assert cli_main.main(["train", missing]) == 2  # in-process (tests, the web UI): never replaced
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["tuneforge", "train", missing, "cpu_allocator=system"])
    assert cli_main.main() == 2
    monkeypatch.setattr(sys, "argv", ["tuneforge", "bench", missing, "--steps", "3"])
    assert cli_main.main() == 2
    monkeypatch.setattr(sys, "argv", ["tuneforge", "data", "preview", missing, "-n", "2", "cutoff_len=64"])
    assert cli_main.main() == 2
    monkeypatch.setattr(sys, "argv", ["tuneforge", "data", "check", "--json", missing])
    assert cli_main.main() == 2
    monkeypatch.setattr(sys, "argv", ["tuneforge", "data", "preview", missing, "--num=4"])  # the preview's own option
    assert cli_main.main() == 2
    for command in (["train", "-h"], ["data", "check", "-h"], ["data", "bogus", missing], ["chat", missing]):
        monkeypatch.setattr(sys, "argv", ["tuneforge", *command])
        cli_main.main()
    assert calls == [(missing, ["cpu_allocator=system"], False), (missing, [], False),
                     (missing, ["cutoff_len=64"], True), (missing, [], True), (missing, [], True)]


def test_the_data_commands_run_under_tcmalloc_even_for_a_gpu_run(fake_tcmalloc, tmp_path, monkeypatch, caplog):
    dirs, library = fake_tcmalloc
    restarts = []
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(cli_allocator, "gpu_device_present", lambda: True)
    monkeypatch.setattr(cli_allocator, "restart_with_preload", lambda lib, env: restarts.append(lib))
    monkeypatch.setattr(allocator, "library_dirs", lambda env: dirs)
    cli_allocator.run_under_cpu_allocator(None, _cli_args(tmp_path), data_only=True)
    cli_allocator.run_under_cpu_allocator(None, [*_cli_args(tmp_path), "cpu_allocator=system"], data_only=True)
    assert restarts == [library]
    monkeypatch.setattr(allocator, "library_dirs", lambda env: [tmp_path / "none"])
    with caplog.at_level("INFO", logger="tuneforge"):
        cli_allocator.run_under_cpu_allocator(None, _cli_args(tmp_path), data_only=True)
    assert restarts == [library] and "malloc" not in caplog.text  # no training hint for a data command
