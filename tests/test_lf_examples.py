"""LLaMA-Factory v0.9.5's own example configs as a compatibility suite.

tests/data/lf_examples_v0_9_5.json holds the key/value settings of every example YAML in LF's repository
(written by tests/data/make_lf_examples.py). Each training/inference/export example is run through
tuneforge's config loader (`load_config_dict`) exactly as written, except that
- `model_name_or_path` points at the tiny local model (no weights are loaded: the loader never opens it), or
  for LF's `*-VL-*` models at a tiny Qwen3-VL (tests/vision_fixtures.py),
- LF's dataset names become local demo sets of the same kind (DATASET_MAP); LF's multimodal dataset
  entries are registered as LF has them (MULTIMODAL_ENTRIES), `mllm_demo.json` with small generated images,
- it runs from a folder that holds LF's examples/deepspeed/*.json at their LF paths.

A config that loads then has its template looked up (`template_for`) and its datasets resolved
(`load_dataset_specs`) and checked against its stage (`check_stage`): the checks a run makes before it
reads any data or weights.

Every outcome is pinned: an example in EXPECTED_REFUSED must be refused with a message containing the
text given there, every other example must load. A change in tuneforge that makes an example load, or
refuse it differently, fails here and the table is updated on purpose. The hardware is fixed to a
CPU-only machine, as in tests/test_config.py, with the packages of LF's own optimizers
(galore-torch, apollo-torch, badam, adam-mini) counted as installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tuneforge.config import validate
from tuneforge.errors import TuneforgeError
from vision_fixtures import build_tiny_qwen_vl, write_image_dataset, write_image_ranking_dataset

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = json.loads((Path(__file__).parent / "data" / "lf_examples_v0_9_5.json").read_text(encoding="utf-8"))
TRAINING = EXAMPLES["training_configs"]

# LF dataset name -> local dataset of the same kind (data/dataset_info.json).
DATASET_MAP = {
    "identity": "identity",  # alpaca, same file in both projects
    "alpaca_en_demo": "demo_bilingual_alpaca",  # alpaca
    "alpaca_zh_demo": "demo_bilingual_alpaca",  # alpaca
    "alpaca_zh": "demo_bilingual_alpaca",  # alpaca (hub copy of the full set)
    "dpo_en_demo": "demo_dpo_en_zh",  # ranking (LF's is sharegpt, ours alpaca; both chosen/rejected)
    "kto_en_demo": "demo_kto",  # sharegpt with a kto_tag column
    "c4_demo": "demo_pt_corpus",  # pretraining text (columns: prompt: text)
    "med": "demo_bilingual_alpaca",  # the ASFT examples' own alpaca sets, not in LF's dataset_info.json
    "math": "demo_bilingual_alpaca",
}
# LF's data/dataset_info.json entries for the multimodal sets the examples use, kept as they are.
MULTIMODAL_ENTRIES = {
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant"}},
    "llava_1k_en": {"hf_hub_url": "BUAADreamer/llava-en-zh-2k", "subset": "en", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "images": "images"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant"}},
    "llava_1k_zh": {"hf_hub_url": "BUAADreamer/llava-en-zh-2k", "subset": "zh", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "images": "images"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant"}},
    "rlhf_v": {"hf_hub_url": "llamafactory/RLHF-V", "ranking": True, "formatting": "sharegpt",
               "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                           "images": "images"}},
}

# DeepSpeed examples load where the `deepspeed` extra is installed (tests/test_deepspeed.py runs them)
_DS_MISSING = "`deepspeed` needs the deepspeed package, which is not installed: pip install 'tuneforge[deepspeed]'"
_DS_REFUSED = {} if importlib.util.find_spec("deepspeed") else {
    "examples/train_full/qwen3_full_sft.yaml": _DS_MISSING, "examples/train_lora/qwen3_lora_sft_ds3.yaml": _DS_MISSING,
    "examples/train_full/qwen3vl_full_sft.yaml": _DS_MISSING,
    "examples/v1/train_full/train_full_deepspeed.yaml": _DS_MISSING}
_V1_FLASH = "`flash_attn: flash_attention2` is not a v1 value"  # LF v1 refuses these two files as well
_MCA = "are Megatron-Core settings"  # LF's `USE_MCA=1` files (mcore_adapter)
# QLoRA examples load where the `qlora` extra is installed (bitsandbytes' CPU backend: tests/test_qlora.py)
_BNB_MISSING = "(QLoRA) needs bitsandbytes, which is not installed: pip install tuneforge[qlora]"
_QLORA_REFUSED = {} if importlib.util.find_spec("bitsandbytes") else {
    "examples/extras/fsdp_qlora/llama3_lora_sft.yaml": _BNB_MISSING,  # FSDP comes from its accelerate launcher
    "examples/extras/qoft/llama3_oft_sft_bnb_npu.yaml": _BNB_MISSING,  # qoft/*_{awq,gptq}.yaml load (see train_qlora)
    "examples/train_qlora/qwen3_lora_sft_bnb_npu.yaml": _BNB_MISSING,
    "examples/train_qlora/qwen3_lora_sft_otfq.yaml": _BNB_MISSING,
    "examples/v1/train_qlora/quantization.yaml": _BNB_MISSING}

# example path -> text the refusal message contains. Every example not listed here must load.
EXPECTED_REFUSED = {
    # Ascend examples load: `use_v1_kernels` (LF has no v1 kernel for a CPU) and `flash_attn: fa2` (a warning and
    # PyTorch SDPA where FlashAttention-2 cannot run, as in LF)
    "examples/extras/fp8/llama3_fp8_deepspeed_sft.yaml": "`fp8` is not supported yet by tuneforge",
    "examples/extras/fp8/llama3_fp8_fsdp_sft.yaml": "`fp8` is not supported yet by tuneforge",
    "examples/ktransformers/train_lora/deepseek_v2_lora_sft_kt.yaml": "`use_kt` is not supported yet by tuneforge",
    "examples/ktransformers/train_lora/deepseek_v3_lora_sft_kt.yaml": "`use_kt` is not supported yet by tuneforge",
    "examples/ktransformers/train_lora/qwen3_5moe_lora_sft_kt.yaml": "`use_kt` is not supported yet by tuneforge",
    "examples/ktransformers/train_lora/qwen3moe_lora_sft_kt.yaml": "`use_kt` is not supported yet by tuneforge",
    "examples/megatron/qwen2_vl_full.yaml": _MCA,
    "examples/megatron/qwen3_moe_full.yaml": _MCA,
    # LF's default `resources_per_worker: {"GPU": 1}` on this CPU-only machine; with {"CPU": 1} it is the download of
    # `dataset_dir: REMOTE:llamafactory/demo_data` that fails offline (test_ray_example_on_cpu_workers)
    "examples/train_lora/qwen3_lora_sft_ray.yaml": '`resources_per_worker: {"GPU": 1}` (LF\'s default) gives each Ray '
                                                   "worker a GPU, and this machine has none",
    # train_qlora/llama3_lora_sft_{aqlm,awq,gptq}.yaml load: the quantization is in the (pre-quantized)
    # model's own config.json, which the config loader does not open
    # LF's v1-engine files (`USE_V1=1 llamafactory-cli train`, config/lf_v1.py); the other 8 load
    "examples/v1/train_batching_strategy/train_full_fsdp2_dynamic_padding_free.yaml": _V1_FLASH,
    "examples/v1/train_batching_strategy/train_full_fsdp2_padding_free.yaml": _V1_FLASH,
    "examples/v1/train_full/train_full_liger_kernel.yaml": "`enable_liger_kernel` is not supported yet",
    "examples/v1/train_full/train_full_ulysses_cp.yaml": "context parallelism (`cp_size: 2`, Ulysses)",
    **_DS_REFUSED,
    **_QLORA_REFUSED,
}


# --------------------------------------------------------------------------- running one example


# LF's hub datasets -> local ones of the same layout in the workspace
LOCAL_SETS = {"rlhf_v": "rlhf_demo", "llava_1k_en": "mllm_demo", "llava_1k_zh": "mllm_demo"}


def map_datasets(value):
    """`identity, alpaca_en_demo` -> `identity,demo_bilingual_alpaca`; other names stay as they are."""
    if not isinstance(value, str):
        return value
    names = (name.strip() for name in value.split(","))
    return ",".join(DATASET_MAP.get(name, LOCAL_SETS.get(name, name)) for name in names)


def localise(settings: dict, model_dir: Path, vl_model_dir: Path) -> dict:
    """The example's settings with a tiny model of the same kind (text, or vision-language for `*-VL-*`
    models) and the local datasets swapped in; nothing else changed."""
    local = dict(settings)
    for key in ("model_name_or_path", "model"):  # `model`: a LF v1 file
        if key in local:
            local[key] = str(vl_model_dir if "-VL" in local[key] else model_dir)
    for key in ("dataset", "eval_dataset"):
        if key in local:
            local[key] = map_datasets(local[key])
    return local


def make_workspace(root: Path) -> Path:
    """A run folder: data/ with the local demo sets plus LF's multimodal entries, and LF's
    examples/deepspeed/*.json where LF's examples point (`deepspeed: examples/deepspeed/ds_z3_config.json`)."""
    data = root / "data"
    data.mkdir(parents=True)
    info = json.loads((REPO / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    for name in set(DATASET_MAP.values()):
        shutil.copy(REPO / "data" / info[name]["file_name"], data)
    (data / "dataset_info.json").write_text(json.dumps({**info, **MULTIMODAL_ENTRIES}), encoding="utf-8")
    write_image_dataset(data, info=False)  # mllm_demo.json (LF's entry, above) with local images
    write_image_ranking_dataset(data)  # `rlhf_demo`: LF's hub set rlhf_v in its layout, local (LOCAL_SETS)
    # LF v1 files read `train_dataset: data/v1_sft_demo.yaml`: LF's two entries over the local files
    v1_sets = {name: {"path": f"data/{info[DATASET_MAP[name]]['file_name']}", "source": "local", "converter": "alpaca"}
               for name in ("identity", "alpaca_en_demo")}
    v1_sets["alpaca_en_demo"]["size"] = 500
    (data / "v1_sft_demo.yaml").write_text(json.dumps(v1_sets), encoding="utf-8")  # JSON is YAML
    for entry in EXAMPLES["deepspeed_configs"]:
        path = root / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entry["settings"], indent=2), encoding="utf-8")
    return root


def run_example(path: str, settings: dict, model_dir: Path, vl_model_dir: Path, tokenizer) -> tuple[str, str]:
    """("loads", "") or ("refused", message): the config loader, then the model, template and dataset checks a
    run makes before it reads data or weights. Runs in the current folder (a workspace from make_workspace)."""
    from tuneforge.config.parser import load_config_dict
    from tuneforge.data.pipeline import check_stage
    from tuneforge.data.registry import load_dataset_specs
    from tuneforge.data.templates import template_for
    from tuneforge.errors import NotSupportedError
    from tuneforge.model.loader import multimodal_problem, resolve_attn_implementation

    try:
        cfg = load_config_dict(localise(settings, model_dir, vl_model_dir), source=path)
        model_config = json.loads((Path(cfg.model.model_name_or_path) / "config.json").read_text(encoding="utf-8"))
        problem = multimodal_problem(model_config, path, cfg.finetuning.stage if cfg.training.do_train else None)
        if problem:
            raise NotSupportedError(problem)
        resolve_attn_implementation(cfg.model.flash_attn, has_cuda=validate.cuda_available())
        template_for(cfg.data, tokenizer)  # a named template is looked up; the tokenizer is not changed
        stage = cfg.finetuning.stage
        for names in (cfg.data.dataset, cfg.data.eval_dataset):
            specs = load_dataset_specs(names, cfg.data.dataset_dir, None)
            check_stage(specs, stage)
    except TuneforgeError as err:
        return "refused", str(err)
    return "loads", ""


# --------------------------------------------------------------------------- tests


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """Deterministic hardware: a machine without CUDA or MPS (bitsandbytes as installed: _QLORA_REFUSED)."""
    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    monkeypatch.setattr(validate, "mps_available", lambda: False)
    # LF's own optimizers (use_galore, use_badam, ...): their packages count as installed, as LF requires them
    monkeypatch.setattr(validate, "optimizer_package_available", lambda module: True)
    # Ray (qwen3_lora_sft_ray.yaml) counts as installed, on a machine that starts its own Ray cluster
    monkeypatch.setattr(validate, "ray_available", lambda: True)
    for name in ("USE_RAY", "FORCE_TORCHRUN", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("lf_examples"))


@pytest.fixture(scope="module")
def tiny_vl_dir(tmp_path_factory, tiny_template_model) -> Path:
    """A tiny Qwen3-VL (tests/vision_fixtures.py) for LF's `*-VL-*` models, with the templates' special tokens."""
    return build_tiny_qwen_vl(tiny_template_model, tmp_path_factory.mktemp("tiny_vl"))


@pytest.mark.parametrize("example", TRAINING, ids=[e["path"].removeprefix("examples/") for e in TRAINING])
def test_example_outcome(example, workspace, tiny_llama_dir, tiny_vl_dir, tiny_tokenizer, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(workspace / "cache"))
    outcome, message = run_example(example["path"], example["settings"], tiny_llama_dir, tiny_vl_dir, tiny_tokenizer)
    expected = EXPECTED_REFUSED.get(example["path"])
    if expected is None:
        assert outcome == "loads", f"{example['path']} used to load, now refused:\n{message}"
    else:
        assert outcome == "refused", f"{example['path']} used to be refused ({expected!r}) and now loads"
        assert expected in message, f"{example['path']}: refusal changed; expected {expected!r} in:\n{message}"


def test_expectations_name_real_examples():
    paths = {e["path"] for e in TRAINING}
    assert not set(EXPECTED_REFUSED) - paths


def test_example_file_is_complete():
    """The extracted file covers LF's examples: its groups, header and the deepspeed files examples name."""
    assert EXAMPLES["source"] == "hiyouga/LLaMA-Factory v0.9.5 examples/, key/value settings only"
    groups = ("training_configs", "launcher_configs", "deepspeed_configs", "other_configs")
    paths = [e["path"] for group in groups for e in EXAMPLES[group]]
    assert len(paths) == len(set(paths))
    assert all(isinstance(e["settings"], dict) and e["settings"] for group in groups for e in EXAMPLES[group])
    assert all(e["path"].startswith(("examples/accelerate/", "examples/ktransformers/accelerate/"))
               and "distributed_type" in e["settings"] for e in EXAMPLES["launcher_configs"])
    deepspeed = {e["path"] for e in EXAMPLES["deepspeed_configs"]}
    named = {e["settings"]["deepspeed"] for e in TRAINING if "deepspeed" in e["settings"]}
    assert named <= deepspeed, named - deepspeed
    assert len(TRAINING) == 71 and len(EXAMPLES["launcher_configs"]) == 10 and len(deepspeed) == 7


def test_ray_example_on_cpu_workers(workspace, tiny_llama_dir, tiny_vl_dir, tiny_tokenizer, monkeypatch):
    """LF's Ray example with CPU workers passes the Ray checks; its dataset_info.json on the Hub is then downloaded,
    which offline (no network here) stops with one message."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no retries against a Hub that cannot be reached
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(workspace / "cache"))
    path = "examples/train_lora/qwen3_lora_sft_ray.yaml"
    settings = next(e["settings"] for e in TRAINING if e["path"] == path)
    assert settings["dataset_dir"] == "REMOTE:llamafactory/demo_data"
    outcome, message = run_example(path, {**settings, "resources_per_worker": {"CPU": 1}}, tiny_llama_dir,
                                   tiny_vl_dir, tiny_tokenizer)
    assert outcome == "refused" and ("could not download dataset_info.json from the Hugging Face Hub dataset "
                                     "repository llamafactory/demo_data: no network access") in message, message


# --------------------------------------------------------------------------- the loading examples train
# The training examples that load, run for one step on a tiny Llama whose tokenizer also has the special tokens of
# the examples' templates (qwen / qwen3 / llama3), with `max_steps: 1` and a fresh output_dir as the only other
# changes. DeepSpeed's examples are left to tests/test_deepspeed.py (2 processes, the same engine).
TEMPLATE_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<think>",
                   "</think>"]
TRAINING_THAT_LOADS = [e for e in TRAINING if e["path"] not in EXPECTED_REFUSED
                       and (e["settings"].get("do_train") or "train_dataset" in e["settings"])  # v1: train_dataset
                       and not e["settings"].get("deepspeed")
                       and (e["settings"].get("dist_config") or {}).get("name") != "deepspeed"]


@pytest.fixture(scope="module")
def tiny_template_model(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from conftest import _tiny_config_kwargs

    folder = tmp_path_factory.mktemp("tiny_template_model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": TEMPLATE_TOKENS})
    tokenizer.save_pretrained(folder)
    AutoModelForCausalLM.from_config(LlamaConfig(**_tiny_config_kwargs(tokenizer))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama_pro_model(tmp_path_factory, tiny_template_model) -> Path:
    """LLaMA Pro's example trains `models/llama3-8b-pro` (32 + 8 layers, LF's llama_pro.py --num_expand 8): the tiny
    model with 8 layers, expanded by 8 with `tuneforge expand-layers`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuneforge.model.expand import expand_layers

    folder = tmp_path_factory.mktemp("tiny_llama_pro")
    config = AutoConfig.from_pretrained(tiny_template_model)
    config.num_hidden_layers = 8
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "base")
    AutoTokenizer.from_pretrained(tiny_template_model).save_pretrained(folder / "base")
    return expand_layers(str(folder / "base"), folder / "expanded", 8)


def test_the_example_list_that_trains():
    # of the 58 that load: 9 chat/export configs, 1 predict, 6 DeepSpeed; 5 of the 42 quantize (the qlora extra)
    assert len(TRAINING_THAT_LOADS) == (42 if importlib.util.find_spec("bitsandbytes") else 37)


@pytest.mark.parametrize("example", TRAINING_THAT_LOADS, ids=[e["path"].removeprefix("examples/") for e in TRAINING_THAT_LOADS])
def test_loading_training_example_runs_a_step(example, workspace, tiny_template_model, tiny_vl_dir, monkeypatch,
                                              tmp_path, capsys, request):
    import yaml

    from tuneforge.cli.main import main

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    if example["settings"].get("use_llama_pro"):
        tiny_template_model = request.getfixturevalue("tiny_llama_pro_model")
    settings = {**localise(example["settings"], tiny_template_model, tiny_vl_dir), "max_steps": 1,
                "output_dir": str(tmp_path / "out")}
    if "tokenized_path" in settings:
        settings["tokenized_path"] = str(tmp_path / "tokenized")
    config = tmp_path / "example.yaml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    assert main(["train", str(config)]) == 0, capsys.readouterr().err[-2000:]
    log = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert any(row.get("current_steps") == 1 for row in log)
