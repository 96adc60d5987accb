"""LLaMA-Factory's other hubs: `USE_MODELSCOPE_HUB=1` (ModelScope) and `USE_OPENMIND_HUB=1` (Modelers / OpenMind).

With one of them set, a `model_name_or_path` that is not a local path is downloaded from that hub with its own
client (`modelscope.snapshot_download`, logged in with `ms_hub_token`; `openmind`'s `snapshot_download` with
`om_hub_token`) and loaded from the downloaded folder, as LF's `try_download_model_from_other_hub` does
(ModelScope's `master` stands for `model_revision: main`; model/loader.py `resolve_model_source` calls
`download_model`). Datasets: an entry's `ms_hub_url` / `om_hub_url` (data/registry.py, data/loaders.py). The
clients are optional extras: `pip install tuneforge[modelscope]` / `tuneforge[openmind]`. Every failure is one
`ModelError` (`DataError` for datasets) line, as for the Hugging Face Hub.
"""

from __future__ import annotations

import importlib
import logging

from tuneforge.errors import DataError, ModelError
from tuneforge.utils.env import env_enabled

logger = logging.getLogger(__name__)

# hub -> (environment switch, client package, extra, display name)
HUBS = {
    "modelscope": ("USE_MODELSCOPE_HUB", "modelscope", "modelscope", "ModelScope Hub"),
    "openmind": ("USE_OPENMIND_HUB", "openmind", "openmind", "Modelers (OpenMind) Hub"),
}
NETWORK_HINTS = ("offline", "connection", "network", "timed out", "timeout", "max retries", "name or service not known",
                 "temporary failure in name resolution", "unreachable", "failed to resolve")
_downloaded: dict[tuple, str] = {}  # (hub, name, revision, cache_dir) -> local folder, once per process
# the run's hub tokens and cache_dir (its ModelArguments, seen when its model is resolved): datasets use them too
_run_settings: dict[str, str | None] = {"ms_hub_token": None, "om_hub_token": None, "cache_dir": None}


def other_hub() -> str | None:
    """`modelscope` or `openmind` when its environment switch is on (ModelScope first, as LF), else None."""
    return next((hub for hub, (variable, *_) in HUBS.items() if env_enabled(variable)), None)


def import_client(hub: str, what: str, error=ModelError):
    """The hub's client package, or an `error` naming the extra that installs it."""
    variable, package, extra, name = HUBS[hub]
    try:
        return importlib.import_module(package)
    except ImportError:
        switched = f" ({variable}=1)" if env_enabled(variable) else ""
        instead = f"unset {variable} to use the Hugging Face Hub, or use a local copy" if switched else "use a local copy"
        raise error(f"{what} from the {name}{switched} needs the `{package}` package, which is not installed: "
                    f"pip install 'tuneforge[{extra}]' (or {instead})") from None


def is_network_error(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    return isinstance(err, (ConnectionError, TimeoutError)) or any(hint in text for hint in NETWORK_HINTS)


def download_model(name: str, model_args) -> str:
    """`name` (a hub id) downloaded from the hub `other_hub()` names; the local folder."""
    hub = other_hub()
    key = (hub, name, model_args.model_revision, model_args.cache_dir)
    if key in _downloaded:
        return _downloaded[key]
    variable, _, _, hub_name = HUBS[hub]
    client = import_client(hub, f"loading `{name}`")
    revision = model_args.model_revision or "main"
    try:
        if hub == "modelscope":
            if model_args.ms_hub_token:
                from modelscope.hub.api import HubApi  # type: ignore[import-not-found]

                HubApi().login(model_args.ms_hub_token)
            path = client.snapshot_download(name, revision="master" if revision == "main" else revision,
                                            cache_dir=model_args.cache_dir)
        else:
            from openmind.utils.hub import snapshot_download  # type: ignore[import-not-found]

            token = {"token": model_args.om_hub_token} if model_args.om_hub_token else {}
            path = snapshot_download(name, revision=revision, cache_dir=model_args.cache_dir, **token)
    except Exception as err:  # the clients raise their own types (requests, HTTP, not found, ...)
        if is_network_error(err):
            raise ModelError(f"could not load `{name}`: not a local folder and the {hub_name} is unreachable "
                             f"(offline; {variable}=1). Download it elsewhere and pass the local folder.") from err
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"could not load `{name}`: not a local folder and not a model on the {hub_name} "
                         f"({variable}=1): {first}") from err
    logger.info("%s: %s downloaded to %s", hub_name, name, path)
    _downloaded[key] = str(path)
    return str(path)


def remember_run(model_args) -> None:
    """The run's hub tokens and cache_dir, for the datasets it loads from these hubs (`load_hub_dataset`)."""
    _run_settings.update(ms_hub_token=model_args.ms_hub_token, om_hub_token=model_args.om_hub_token,
                         cache_dir=model_args.cache_dir)


def load_hub_dataset(spec):
    """A dataset entry's `ms_hub_url` (ModelScope's `MsDataset.load`) or `om_hub_url` (OpenMind's
    `OmDataset.load_dataset`) as a HF dataset, as LF loads them. A missing client is a DataError naming the extra;
    the client's own errors are left to the caller (data/loaders.py words them like the HF hub's)."""
    if spec.load_from == "ms_hub":
        import_client("modelscope", f"dataset {spec.name} (ms_hub_url '{spec.ms_hub_url}')", DataError)
        from modelscope import MsDataset  # type: ignore[import-not-found]

        if _run_settings["ms_hub_token"]:
            from modelscope.hub.api import HubApi  # type: ignore[import-not-found]

            HubApi().login(_run_settings["ms_hub_token"])
        cache = {"cache_dir": _run_settings["cache_dir"]} if _run_settings["cache_dir"] else {}
        dataset = MsDataset.load(dataset_name=spec.ms_hub_url, subset_name=spec.subset, data_dir=spec.folder,
                                 split=spec.split, **cache)
        return dataset.to_hf_dataset() if isinstance(dataset, MsDataset) else dataset
    import_client("openmind", f"dataset {spec.name} (om_hub_url '{spec.om_hub_url}')", DataError)
    from openmind import OmDataset  # type: ignore[import-not-found]

    extra = {key: value for key, value in (("cache_dir", _run_settings["cache_dir"]),
                                           ("token", _run_settings["om_hub_token"])) if value}
    return OmDataset.load_dataset(path=spec.om_hub_url, name=spec.subset, data_dir=spec.folder, split=spec.split,
                                  **extra)
