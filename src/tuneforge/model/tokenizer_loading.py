"""Loading the model's tokenizer: `model_name_or_path`'s (or a GGUF file's), a trained adapter's when it added
tokens, and the config's added tokens (model/vocab.py).

`AutoTokenizer.from_pretrained` always builds the model's config first, and transformers' config classes import
torch (`configuration_utils` -> `modeling_rope_utils`): 1-2 s of a `tuneforge data preview` / `data check`, which
never need torch. For the common model types in `REGISTERED_TOKENIZERS` the class AutoTokenizer would choose is
decided from config.json's `model_type` and tokenizer_config.json's `tokenizer_class` alone, and imported from its
own module (no torch); every other folder goes through `AutoTokenizer`. `tests/test_tokenizer_loading.py` checks
each entry against the installed transformers (its mapping, and the class and encodings AutoTokenizer gives).
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from tuneforge.config.args import ModelArguments
from tuneforge.model.loader import (call_from_pretrained, check_model_folder, gguf_location, hub_kwargs,
                                    resolve_model_source)

logger = logging.getLogger("tuneforge")

# model_type -> the tokenizer class transformers registers for it (`TOKENIZER_MAPPING_NAMES`; None: none).
REGISTERED_TOKENIZERS: dict[str, str | None] = {
    "llama": None,
    "qwen2": "Qwen2Tokenizer",
    "qwen3": "Qwen2Tokenizer",
    "qwen3_moe": "Qwen2Tokenizer",
}
# the classes this shortcut loads, and their modules (which do not import torch)
TOKENIZER_MODULES: dict[str, str] = {
    "TokenizersBackend": "transformers.tokenization_utils_tokenizers",
    "Qwen2Tokenizer": "transformers.models.qwen2.tokenization_qwen2",
}
# names under which a tokenizer_config.json asks for the generic fast tokenizer
GENERIC_NAMES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(model_args: ModelArguments):
    """The tokenizer of `model_name_or_path` (right padding; fixing eos/pad is the template's job), with the
    config's `add_tokens` / `add_special_tokens` / `new_special_tokens_config` added (model/vocab.py)."""
    from tuneforge.model.vocab import add_new_tokens

    tokenizer = tokenizer_from_files(model_args)
    add_new_tokens(tokenizer, model_args)
    return tokenizer


def tokenizer_from_files(model_args: ModelArguments):
    """The saved tokenizer, nothing added: `model_name_or_path`'s, or the last adapter folder's own when that
    one has tokens the model's lacks (an adapter trained with new tokens: see model/vocab.py)."""
    path = resolve_model_source(model_args)
    kwargs = {**hub_kwargs(model_args), "padding_side": "right"}
    gguf = gguf_location(path)
    if gguf:
        from transformers import AutoTokenizer

        return call_from_pretrained(AutoTokenizer.from_pretrained, gguf[0], "tokenizer", gguf_file=gguf[1], **kwargs)
    check_model_folder(path)
    # transformers 5 has fast tokenizers only; `use_fast_tokenizer: false` cannot be honoured.
    if model_args.use_fast_tokenizer is False:
        logger.warning("use_fast_tokenizer: false is ignored: transformers 5 always uses the fast tokenizer")
    direct = direct_tokenizer_class(path)  # the class AutoTokenizer would pick, loaded without importing torch
    if direct is not None:
        kwargs.pop("trust_remote_code")  # AutoTokenizer's own key, not the class's
        tokenizer = call_from_pretrained(direct.from_pretrained, path, "tokenizer", _from_auto=True, **kwargs)
    else:
        from transformers import AutoTokenizer

        tokenizer = call_from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer", **kwargs)
    return _adapter_tokenizer(model_args, tokenizer) or tokenizer


def _adapter_tokenizer(model_args: ModelArguments, base_tokenizer):
    """The last adapter folder's tokenizer when it has more tokens than `base_tokenizer`, else None."""
    from tuneforge.config.args import split_names

    adapters = split_names(model_args.adapter_name_or_path)
    folder = Path(adapters[-1]).expanduser() if adapters else None
    if folder is None or not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="right",
                                                  trust_remote_code=bool(model_args.trust_remote_code))
    except (OSError, ValueError) as exc:
        logger.warning("adapter %s has a tokenizer that does not load (%s); using the model's", folder,
                       str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    if len(tokenizer) <= len(base_tokenizer):
        return None
    added = tokenizer.convert_ids_to_tokens(list(range(len(base_tokenizer), len(tokenizer))))
    logger.info("using the tokenizer saved with adapter %s: it adds %s", folder, ", ".join(added))
    return tokenizer


def direct_tokenizer_class_name(folder: str | Path) -> str | None:
    """The class AutoTokenizer picks for `folder`, when this shortcut covers the folder; else None."""
    folder = Path(folder)
    config, tokenizer_config = _read_json(folder / "config.json"), _read_json(folder / "tokenizer_config.json")
    if config is None or tokenizer_config is None or not (folder / "tokenizer.json").is_file():
        return None
    if "auto_map" in tokenizer_config or "auto_map" in config:  # remote code decides
        return None
    model_type, declared = config.get("model_type"), tokenizer_config.get("tokenizer_class")
    if model_type not in REGISTERED_TOKENIZERS or not isinstance(declared, str):
        return None
    registered = REGISTERED_TOKENIZERS[model_type]
    if registered is None:
        # nothing registered: AutoTokenizer takes the declared class; the generic names give TokenizersBackend
        return "TokenizersBackend" if declared in GENERIC_NAMES else None
    return registered if declared.removesuffix("Fast") == registered else None


def direct_tokenizer_class(folder: str | Path):
    """The tokenizer class itself (imported without torch), or None: use AutoTokenizer."""
    name = direct_tokenizer_class_name(folder)
    if name is None:
        return None
    return getattr(importlib.import_module(TOKENIZER_MODULES[name]), name)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
