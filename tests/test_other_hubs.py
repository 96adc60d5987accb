"""`USE_MODELSCOPE_HUB=1` / `USE_OPENMIND_HUB=1` (utils/other_hubs.py): a hub id goes through the hub's own client
(`snapshot_download`), `ms_hub_url` / `om_hub_url` datasets through its dataset loader; offline or without the
client each is one clear line. Nothing here reaches a network: the clients are stand-ins when installed or not."""

from __future__ import annotations

import json
import sys
import types

import pytest

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.cli.main import main
from tuneforge.utils import other_hubs


@pytest.fixture(autouse=True)
def fresh_downloads(monkeypatch):
    monkeypatch.setattr(other_hubs, "_downloaded", {})
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    monkeypatch.delenv("USE_OPENMIND_HUB", raising=False)


def fake_modelscope(monkeypatch, snapshot_download, load=None):
    """A `modelscope` package whose download calls are `snapshot_download` / `MsDataset.load` (installed or not)."""
    module = types.ModuleType("modelscope")
    module.snapshot_download = snapshot_download
    module.MsDataset = type("MsDataset", (), {"load": staticmethod(load or (lambda **kw: None))})
    hub, api = types.ModuleType("modelscope.hub"), types.ModuleType("modelscope.hub.api")
    api.HubApi = type("HubApi", (), {"login": lambda self, token: calls.append(("login", token))})
    calls: list = []
    for name, value in (("modelscope", module), ("modelscope.hub", hub), ("modelscope.hub.api", api)):
        monkeypatch.setitem(sys.modules, name, value)
    return calls


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    config = {"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "stage": "sft", "do_train": True,
              "dataset": "tiny", "template": "chatml", "cutoff_len": 64, "output_dir": "out",
              "max_steps": 1, "report_to": "none"}
    return write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")


def test_without_the_package_the_line_names_the_extra(workspace, monkeypatch, capsys):
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    monkeypatch.setitem(sys.modules, "modelscope", None)  # not installed (also where it is)
    assert main(["train", "train.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: loading `Qwen/Qwen2.5-0.5B-Instruct` from the ModelScope Hub (USE_MODELSCOPE_HUB=1) needs "
                   "the `modelscope` package, which is not installed: pip install 'tuneforge[modelscope]' (or unset "
                   "USE_MODELSCOPE_HUB to use the Hugging Face Hub, or use a local copy)")


def test_offline_is_one_line_like_the_hf_hub(workspace, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("HTTPSConnectionPool(host='www.modelscope.cn', port=443): Max retries exceeded")

    fake_modelscope(monkeypatch, offline)
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert main(["train", "train.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: could not load `Qwen/Qwen2.5-0.5B-Instruct`: not a local folder and the ModelScope Hub is "
                   "unreachable (offline; USE_MODELSCOPE_HUB=1). Download it elsewhere and pass the local folder.")
    assert "\n" not in err


def test_the_download_is_what_trains(workspace, monkeypatch, tiny_llama_dir):
    calls = []

    def snapshot_download(model_id, revision=None, cache_dir=None):
        calls.append((model_id, revision, cache_dir))
        return str(tiny_llama_dir)

    logins = fake_modelscope(monkeypatch, snapshot_download)
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert main(["train", "train.yaml", "ms_hub_token=secret"]) == 0
    assert calls == [("Qwen/Qwen2.5-0.5B-Instruct", "master", None)]  # once: tokenizer and model share it
    assert logins == [("login", "secret")]
    assert (workspace / "out" / "adapter_model.safetensors").is_file()


def test_openmind_without_the_package(workspace, monkeypatch, capsys):
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    monkeypatch.setitem(sys.modules, "openmind", None)
    assert main(["train", "train.yaml"]) == 2
    assert "needs the `openmind` package, which is not installed: pip install 'tuneforge[openmind]'" in capsys.readouterr().err


def test_hub_datasets_go_through_the_hub_clients(workspace, monkeypatch, capsys, tiny_llama_dir):
    info = {"ms": {"ms_hub_url": "AI-ModelScope/alpaca", "hf_hub_url": "tatsu-lab/alpaca"},
            "om": {"om_hub_url": "HaM/alpaca"}}
    (workspace / "data" / "dataset_info.json").write_text(json.dumps(info))

    def offline(**kwargs):
        raise ConnectionError("Max retries exceeded")

    fake_modelscope(monkeypatch, None, load=offline)
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    local = f"model_name_or_path={tiny_llama_dir}"  # a local model: only the dataset is on a hub
    assert main(["data", "check", "train.yaml", local, "dataset=ms"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # after the template notes
        "error: could not download dataset ms from the ModelScope Hub (AI-ModelScope/alpaca): no network access. "
        "Download it elsewhere and point `file_name` to the local copy.")
    monkeypatch.setitem(sys.modules, "openmind", None)
    assert main(["data", "check", "train.yaml", local, "dataset=om"]) == 2
    assert ("dataset om (om_hub_url 'HaM/alpaca') from the Modelers (OpenMind) Hub needs the `openmind` package, "
            "which is not installed: pip install 'tuneforge[openmind]' (or use a local copy)") in capsys.readouterr().err


def test_without_the_switch_nothing_changes(monkeypatch):
    from tuneforge.config.args import ModelArguments
    from tuneforge.model.loader import resolve_model_source

    assert resolve_model_source(ModelArguments(model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen/Qwen2.5-0.5B-Instruct"
