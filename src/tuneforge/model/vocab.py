"""New tokens and the embedding rows for them, with LLaMA-Factory 0.9.5's meaning.

Tokenizer side (LF `patch_tokenizer`, called by `tokenizer_loading.load_tokenizer`):
* `add_tokens: a,b` adds plain tokens, `add_special_tokens: <x>,<y>` special ones (one id each, kept
  whole by the tokenizer); `new_special_tokens_config: tokens.yaml` (a YAML mapping token -> description)
  names the special tokens instead, and wins over `add_special_tokens`.
* Adding a token that was not there turns `resize_vocab` on, as LF does.

Model side (LF `resize_embedding_layer` + `init_adapter`, called by `adapters.apply_finetuning` for every
model built from a config, training or not):
* `resize_vocab`: when the tokenizer has more tokens than the model has embedding rows, the input (and an
  untied output) embedding grows to `len(tokenizer)` rounded up to a multiple of 64.
* The new rows: `init_special_tokens: noise_init` (default) = mean of the old rows + Gaussian noise of std
  1/sqrt(hidden); `desc_init` = the mean of the rows of the tokens of the token's description
  (`new_special_tokens_config`); `desc_init_w_noise` = that + the same noise. Rows without a description
  (padding up to the multiple of 64, plain tokens) get `noise_init`. Without descriptions, `desc_init*`
  falls back to `noise_init` with a warning (as LF).
* With LoRA, a resized vocabulary makes the input and output embeddings `modules_to_save` (LF's
  `additional_target`) unless `additional_target` is set, so the new rows train and are saved with the
  adapter (tied embeddings stay tied).
* Loading an adapter whose saved embeddings have more rows than the model grows the model first
  (`fit_embeddings_to_adapter`), and `tokenizer_loading.load_tokenizer` takes the adapter folder's own tokenizer when
  it has tokens the base tokenizer lacks -- so chat and export of such an adapter need no extra keys.

Deliberate differences from LF: a description initialises the row of its own token (LF writes the i-th
description to the i-th new row, which is another token when `add_tokens` is set too); an untied output
embedding is initialised from its own rows (LF uses the input embedding's); the noise is drawn from a
generator seeded with the run's seed, so the policy and a reference model get the same new rows.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from tuneforge.config.args import ModelArguments, split_names
from tuneforge.errors import ConfigError, NotSupportedError
from tuneforge.model.quantization import is_quantized

logger = logging.getLogger(__name__)

PAD_TO_MULTIPLE_OF = 64  # LF: model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
INIT_METHODS = ("noise_init", "desc_init", "desc_init_w_noise")


# ----------------------------------------------------------------------------------------------
# tokenizer side
# ----------------------------------------------------------------------------------------------
def special_token_descriptions(model_args: ModelArguments) -> dict[str, str] | None:
    """The token -> description mapping of `new_special_tokens_config`, or None when it is not set."""
    path = model_args.new_special_tokens_config
    if not path:
        return None
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"new_special_tokens_config: {path} does not exist (a YAML file mapping each new "
                          f"special token to its description, e.g. `<think>: the start of the reasoning`)")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"new_special_tokens_config: {path} is not valid YAML ({err})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"new_special_tokens_config: {path} must be a YAML mapping of token -> description, "
                          f"got {type(loaded).__name__}")
    descriptions = {}
    for token, description in loaded.items():
        if not isinstance(token, str) or not token.strip() or not isinstance(description, str):
            raise ConfigError(f"new_special_tokens_config: {path}: `{token}: {description}` is not a token "
                              f"(text) mapped to its description (text)")
        descriptions[token.strip()] = description
    return descriptions


def new_tokens(model_args: ModelArguments) -> tuple[list[str], list[str]]:
    """(plain tokens, special tokens) the config adds; `new_special_tokens_config` wins over `add_special_tokens`."""
    plain = list(split_names(model_args.add_tokens))
    descriptions = special_token_descriptions(model_args)
    if descriptions is not None:
        if model_args.add_special_tokens:
            logger.warning("both new_special_tokens_config and add_special_tokens are set: adding the tokens of "
                           "%s (%s)", model_args.new_special_tokens_config, ", ".join(descriptions))
        return plain, list(descriptions)
    return plain, list(split_names(model_args.add_special_tokens))


def adds_tokens(model_args: ModelArguments) -> bool:
    return bool(model_args.add_tokens or model_args.add_special_tokens or model_args.new_special_tokens_config)


def add_new_tokens(tokenizer, model_args: ModelArguments) -> int:
    """Add the config's tokens to `tokenizer` (LF `patch_tokenizer`); returns how many were new."""
    plain, special = new_tokens(model_args)
    added = 0
    if plain:
        added += tokenizer.add_tokens(plain, special_tokens=False)
        logger.info("add tokens %s to the tokenizer's vocabulary", ",".join(plain))
    if special:
        added += tokenizer.add_tokens(special, special_tokens=True)
        logger.info("add special tokens %s to the tokenizer's vocabulary", ",".join(special))
    if added and not model_args.resize_vocab:
        logger.warning("new tokens have been added: resize_vocab is on (as in LLaMA-Factory)")
    return added


def init_method(model_args: ModelArguments) -> str:
    """`init_special_tokens`, falling back to noise_init (with LF's warning) when there are no descriptions."""
    method = model_args.init_special_tokens
    if method not in INIT_METHODS:
        raise ConfigError(f"init_special_tokens: `{method}` is not one of {', '.join(INIT_METHODS)}")
    if method != "noise_init" and not model_args.new_special_tokens_config:
        logger.warning("init_special_tokens: %s needs new_special_tokens_config (the token descriptions); "
                       "falling back to noise_init", method)
        return "noise_init"
    return method


# ----------------------------------------------------------------------------------------------
# model side
# ----------------------------------------------------------------------------------------------
def _noise_generator(device):
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(torch.initial_seed())  # the run's seed (set_seed): the same rows in every copy
    return generator


def _noisy_mean_rows(weight, old_rows: int, generator) -> None:
    """LF `_noisy_mean_initialization`: every row past `old_rows` = mean of the old rows + N(0, 1/sqrt(dim))."""
    import torch

    new = weight.shape[0] - old_rows
    mean = weight[:old_rows].float().mean(dim=0, keepdim=True)
    noise = torch.randn((new, weight.shape[1]), generator=generator, device=weight.device, dtype=torch.float32)
    weight[old_rows:] = (mean + noise / math.sqrt(weight.shape[1])).to(weight.dtype)


def _description_rows(weight, old_rows: int, descriptions: dict[str, str], tokenizer, add_noise: bool,
                      generator) -> None:
    """LF `_description_based_initialization`: a token's row = mean of the rows of its description's tokens
    (old tokens only), plus noise for desc_init_w_noise; a description with no old token -> mean of all."""
    import torch

    new_ids = set(range(old_rows, weight.shape[0]))
    for token, description in descriptions.items():
        row = tokenizer.convert_tokens_to_ids(token)
        if row not in new_ids:
            continue  # not a new row: its trained embedding is kept
        ids = [i for i in tokenizer(description, add_special_tokens=False)["input_ids"] if i < old_rows]
        if ids:
            base = weight[torch.tensor(ids, device=weight.device)].float().mean(dim=0)
        else:
            logger.warning("the description of %s has no token of the old vocabulary: its embedding is the mean "
                           "of all", token)
            base = weight[:old_rows].float().mean(dim=0)
        if add_noise:
            noise = torch.randn(weight.shape[1], generator=generator, device=weight.device, dtype=torch.float32)
            base = base + noise / math.sqrt(weight.shape[1])
        weight[row] = base.to(weight.dtype)


def ties_embeddings(model) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def resize_embedding_layer(model, tokenizer, descriptions: dict[str, str] | None = None,
                           method: str = "noise_init") -> int:
    """Grow the embeddings to `len(tokenizer)` (a multiple of 64) and initialise the new rows; returns how many
    rows were added (0 when the model already has a row for every token)."""
    import torch

    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return 0
    if is_quantized(model):
        raise NotSupportedError("resize_vocab: cannot resize the embeddings of a quantized model (quantization_bit "
                                "is set); train the new tokens without quantization")
    if not isinstance(model.get_output_embeddings(), torch.nn.Linear):
        raise NotSupportedError(f"resize_vocab: {type(model).__name__} does not support resizing its embedding "
                                f"layers (its output embedding is not a plain linear layer)")
    tied = ties_embeddings(model)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=PAD_TO_MULTIPLE_OF, mean_resizing=False)
    new_rows = model.get_input_embeddings().weight.shape[0]
    matrices = [model.get_input_embeddings().weight]
    if not tied and model.get_output_embeddings() is not None:
        matrices.append(model.get_output_embeddings().weight)
    with torch.no_grad():
        for weight in matrices:
            generator = _noise_generator(weight.device)
            _noisy_mean_rows(weight.data, old_rows, generator)
            if method != "noise_init" and descriptions:
                _description_rows(weight.data, old_rows, descriptions, tokenizer, method == "desc_init_w_noise",
                                  generator)
    model.config.vocab_size = new_rows
    logger.info("resized the token embeddings from %d to %d (+%d rows, %s)", old_rows, new_rows,
                new_rows - old_rows, method)
    return new_rows - old_rows


def prepare_vocab(model, model_args: ModelArguments) -> bool:
    """LF's `resize_vocab` on a freshly loaded model: add the config's tokens to its tokenizer and grow the
    embeddings to it. Returns whether `resize_vocab` is in effect (set, or tokens were new), which makes
    LoRA train and save the embeddings."""
    if not (model_args.resize_vocab or adds_tokens(model_args)):
        return False
    from tuneforge.model.tokenizer_loading import tokenizer_from_files

    tokenizer = tokenizer_from_files(model_args)
    added = add_new_tokens(tokenizer, model_args)
    if not (model_args.resize_vocab or added):
        return False
    method = init_method(model_args)
    descriptions = special_token_descriptions(model_args) if method != "noise_init" else None
    resize_embedding_layer(model, tokenizer, descriptions, method)
    return True


def embedding_module_names(model) -> tuple[str, ...]:
    """Short names of the input and output embedding modules (LF: what a resized vocabulary adds to
    `additional_target`), e.g. ("embed_tokens", "lm_head")."""
    wanted = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    names = {name.split(".")[-1] for name, module in model.named_modules() if any(module is m for m in wanted)}
    return tuple(sorted(names))


def fit_embeddings_to_adapter(model, folder: Path) -> None:
    """Grow the model's embeddings to the rows an adapter saved for them (`modules_to_save` of a run with new
    tokens), so that peft can load it; the adapter's own rows replace the new ones."""
    from tuneforge.model.adapter_check import adapter_shapes

    names = embedding_module_names(model)
    rows = model.get_input_embeddings().weight.shape[0]
    saved = [shape[0] for key, shape in adapter_shapes(folder).items()
             if len(shape) == 2 and "lora_" not in key and key.removesuffix(".weight").split(".")[-1] in names]
    if saved and max(saved) > rows:
        model.resize_token_embeddings(max(saved), mean_resizing=False)
        model.config.vocab_size = max(saved)
        logger.info("adapter %s has embeddings for %d tokens: resized the model's from %d", folder, max(saved), rows)
