"""LLaMA-Factory's `dataset_dir: REMOTE:<repo>` (data/remote_info.py): dataset_info.json downloaded from a Hub
dataset repository (here a stand-in for huggingface_hub serving a local folder), its `file_name` files fetched next
to it; offline, one message that says how to use a local copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest

from tuneforge.data.loaders import load_rows
from tuneforge.data.registry import load_dataset_specs
from tuneforge.errors import DataError


def test_offline_is_one_message(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"^`dataset_dir: REMOTE:someone/data`: could not download dataset_info.json "
                                        r"from the Hugging Face Hub dataset repository someone/data: no network access\. "
                                        r"Download the repository .*huggingface-cli download someone/data "
                                        r"--repo-type dataset --local-dir DIR.* set `dataset_dir: DIR`$"):
        load_dataset_specs(["demo"], "REMOTE:someone/data", None)
    with pytest.raises(DataError, match="expected REMOTE:<user>/<dataset repository>"):
        load_dataset_specs(["demo"], "REMOTE:", None)


def test_entries_of_a_hub_repository(tmp_path, monkeypatch):
    repo = tmp_path / "repo"  # what the Hub repository holds
    repo.mkdir()
    (repo / "dataset_info.json").write_text(json.dumps({
        "demo": {"file_name": "demo.json"}, "hub": {"hf_hub_url": "someone/other"}}))
    (repo / "demo.json").write_text(json.dumps([{"instruction": "hi", "output": "hello"}]))
    snapshot, asked = tmp_path / "cache" / "snapshot", []

    def fake_download(repo_id, filename, repo_type):
        asked.append((repo_id, filename, repo_type))
        (snapshot / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    demo, hub = load_dataset_specs(["demo", "hub"], "REMOTE:someone/data", None)
    assert asked == [("someone/data", "dataset_info.json", "dataset"), ("someone/data", "demo.json", "dataset")]
    assert demo.local_path.resolve() == (snapshot / "demo.json").resolve()
    assert [row.values for row in load_rows(demo)] == [{"instruction": "hi", "output": "hello"}]
    assert (hub.load_from, hub.hf_hub_url) == ("hf_hub", "someone/other")  # loaded from the Hub when used
