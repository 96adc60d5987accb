"""LLaMA-Factory's `dataset_dir: REMOTE:<repo>`: the dataset_info.json of a Hugging Face Hub dataset repository.

As in LF, dataset_info.json is downloaded from the repository (huggingface_hub's cache); its entries then mean what
they mean locally: `hf_hub_url` entries load from the Hub, and — beyond LF, which looks for them in a local folder
named "REMOTE:<repo>" — `file_name` entries are fetched from the same repository next to it. Without network access
(or with HF_HUB_OFFLINE=1 and nothing cached) the run stops with one message saying how to use a local copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.errors import DataError

PREFIX = "REMOTE:"
_NETWORK_HINTS = ("offline", "connection", "network", "timed out", "max retries", "name or service not known",
                  "temporary failure in name resolution", "unreachable", "localentrynotfound")


def is_network_error(err: Exception) -> bool:
    """An error that means "the hub could not be reached" (offline mode, no route, DNS), not a bad request."""
    text = f"{type(err).__name__}: {err}".lower()
    return isinstance(err, ConnectionError) or any(hint in text for hint in _NETWORK_HINTS)


def _download(repo_id: str, filename: str, dataset_dir: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if filename.endswith("/"):  # a folder dataset: every file under it
            return Path(snapshot_download(repo_id=repo_id, repo_type="dataset", allow_patterns=[f"{filename}*"]))
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))
    except Exception as err:  # noqa: BLE001 -- huggingface_hub's errors vary by version: one message each way
        where = f"`dataset_dir: {dataset_dir}`: could not download {filename.rstrip('/')} from the Hugging Face Hub " \
                f"dataset repository {repo_id}"
        if is_network_error(err):
            raise DataError(f"{where}: no network access. Download the repository where the Hub is reachable "
                            f"(`huggingface-cli download {repo_id} --repo-type dataset --local-dir DIR`) and set "
                            "`dataset_dir: DIR`") from None
        raise DataError(f"{where}: {type(err).__name__}: {err}") from None


def fetch_remote_info(dataset_dir: str, names: list[str], read_info) -> tuple[Path, dict[str, Any]]:
    """(the downloaded dataset_info.json, its entries); the `file_name` files of `names` are downloaded beside it."""
    repo_id = dataset_dir[len(PREFIX):].strip()
    if not repo_id:
        raise DataError(f"`dataset_dir: {dataset_dir}`: expected REMOTE:<user>/<dataset repository>")
    info_file = _download(repo_id, "dataset_info.json", dataset_dir)
    info = read_info(info_file)
    for name in names:
        entry = info.get(name)
        if isinstance(entry, dict) and "file_name" in entry and not any(k.endswith("_hub_url") for k in entry):
            file_name = str(entry["file_name"])
            is_folder = "." not in Path(file_name).name  # LF's folder datasets have no extension
            _download(repo_id, file_name + ("/" if is_folder else ""), dataset_dir)
    return info_file, info
