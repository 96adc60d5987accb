"""What `tuneforge eval recall` asks and which model answers: the training questions of a config, the
drift questions, and the fine-tuned / base model a training YAML points at.

Training questions come from the config's `dataset` exactly as training reads it (dataset_info.json
specs, `num_samples` / `max_samples` with the run's seed, the format converters, `mix_strategy`), taken
from the converted conversations (the last user turn and the answer to it, earlier turns as history),
before any tokenization or augmentation.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.data.formats import RowError
from tuneforge.data.media import image_placeholder, media_folder, row_image_paths
from tuneforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tuneforge.config.parser import RunConfig

RESULTS_FILE = "recall_results.json"
DRIFT_QUESTIONS_FILE = Path(__file__).resolve().parent / "drift_questions.json"  # package data


@dataclass(frozen=True)
class TrainingQuestion:
    question: str                 # the last user turn
    expected: str                 # the trained answer to it
    history: tuple[dict, ...] = ()  # earlier turns of the conversation, as message dicts
    system: str = ""
    tools: str = ""
    source: str = ""              # "data/x.json row 3"
    images: tuple[str, ...] = ()  # resolved image files, one per `<image>` in the turns (a vision-language model)


def run_seed(cfg: RunConfig) -> int:
    seed = cfg.training.seed
    return 42 if seed is None else int(seed)  # the data pipeline's rule


def training_questions(cfg: RunConfig) -> tuple[list[TrainingQuestion], int]:
    """(questions, rows skipped) for the config's `dataset`; skipped = rows that are not a question
    followed by an answer (or that the converters reject: `tuneforge data preview` names them)."""
    from tuneforge.data.pipeline import check_stage
    from tuneforge.data.registry import load_dataset_specs
    from tuneforge.config.args import split_names
    from tuneforge.data.report import DataReport
    from tuneforge.data.rows import read_conversations

    data = cfg.data
    if not split_names(data.dataset):
        raise ConfigError("eval recall asks the training questions: set `dataset` (the names trained on)")
    config_dir = Path(cfg.config_path).parent if cfg.config_path else None
    specs = load_dataset_specs(data.dataset, data.dataset_dir or "data", config_dir)
    check_stage(specs, "sft")  # ranking data has no single answer to recall
    report = DataReport()
    mixed = read_conversations(specs, "train", data, run_seed(cfg), report)  # the rows training reads
    skipped = sum(sum(report.stats(spec.name).dropped.values()) for spec in specs)
    media = media_folder(data.media_dir, config_dir)  # where training looks for the images (data/media.py)
    folders = {spec.name: media or spec.dataset_dir for spec in specs}
    questions = []
    for name, conv in mixed:
        messages = conv.messages
        images = _row_images(conv, folders.get(name))
        if len(messages) < 2 or messages[-1].role != "assistant" or not messages[-1].content.strip() or images is None:
            skipped += 1
            continue
        history = tuple({"role": m.role, "content": m.content} for m in messages[:-2])
        questions.append(TrainingQuestion(messages[-2].content, messages[-1].content, history,
                                          conv.system, conv.tools, conv.source, images))
    if not questions:
        raise DataError(f"dataset {', '.join(s.name for s in specs)}: no row is a question with an answer to recall")
    return questions, skipped


def _row_images(conv, folder) -> tuple[str, ...] | None:
    """The row's image files, resolved as training resolves them; None when training drops the row for them (a
    missing file, or images and `<image>` tags that do not pair up: data/media.py)."""
    if not conv.images:
        return ()
    try:
        return tuple(row_image_paths(conv, folder, image_placeholder()))
    except RowError:
        return None


def takes_images(model_args) -> bool:
    """Whether the model `model_args` loads is a vision-language model tuneforge feeds images (its config.json)."""
    from tuneforge.model.loader import resolve_model_source
    from tuneforge.utils.vision_models import read_model_config, vision_family

    config = read_model_config(resolve_model_source(model_args))
    return config is not None and vision_family(config) is not None


def choose_sample(rows: list, samples: int | None, seed: int) -> list:
    """All rows, or `samples` of them drawn with `seed` (kept in dataset order)."""
    if samples is None or samples >= len(rows):
        return list(rows)
    if samples < 1:
        raise ConfigError(f"--samples expects a number >= 1, got {samples}")
    picked = sorted(random.Random(seed).sample(range(len(rows)), samples))
    return [rows[i] for i in picked]


def load_drift_questions(path: str | Path | None = None) -> list[dict]:
    """[{"question", "lang", "expect": [keywords]}] from `path` or the shipped src/tuneforge/evaluate/drift_questions.json."""
    file = Path(path) if path else DRIFT_QUESTIONS_FILE
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"drift questions: cannot read {file} ({err.strerror}); pass --drift-questions FILE "
                          "or --no-drift") from None
    except ValueError as err:
        raise DataError(f"drift questions: {file} is not valid JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise DataError(f"drift questions: {file} must hold a non-empty JSON list of {{\"question\": ...}} objects")
    questions = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            item = {"question": item}
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise DataError(f"drift questions: {file} item {index} needs a non-empty string `question`")
        expect = item.get("expect") or []
        if isinstance(expect, str):
            expect = [expect]
        questions.append({"question": item["question"], "lang": item.get("lang", ""), "expect": list(expect)})
    return questions


@dataclass(frozen=True)
class EvalTargets:
    model_args: object              # ModelArguments of the model to evaluate
    base_args: object | None        # ModelArguments of the model before training (drift); None = unknown
    notes: tuple[str, ...] = ()     # what was defaulted or skipped, for the report


def _holds_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _holds_full_model(folder: Path) -> bool:
    return ((folder / "config.json").is_file() and not _holds_adapter(folder)
            and (any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()))


def _same_path(a, b) -> bool:
    try:
        return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def resolve_targets(cfg, base_model: str | None = None) -> EvalTargets:
    """The fine-tuned model a config means, and its base for drift.

    lora: `adapter_name_or_path`, else the config's `output_dir` when it holds an adapter; the base is
    the model without the last adapter. full / freeze: the config's `output_dir` when it holds a saved
    model (the config's `model_name_or_path` is then the base), else `model_name_or_path` as given.
    `base_model` (--base) names the base explicitly.
    """
    from tuneforge.config.args import split_names

    model_args = cfg.model
    method = cfg.finetuning.finetuning_type
    output_dir = Path(cfg.training.output_dir) if cfg.raw.get("output_dir") else None
    notes = []
    base_args = None
    if method in ("lora", "oft"):  # config/args.py ADAPTER_METHODS
        adapters = split_names(model_args.adapter_name_or_path)
        if not adapters and output_dir is not None and _holds_adapter(output_dir):
            adapters = [str(output_dir)]
            notes.append(f"adapter_name_or_path not set: evaluating the adapter trained in output_dir {output_dir}")
        elif not adapters:
            where = f"output_dir {output_dir} holds no adapter_config.json" if output_dir else "no output_dir"
            notes.append(f"no adapter ({where}): evaluating {model_args.model_name_or_path} as it is")
        evaluated = dataclasses.replace(model_args, adapter_name_or_path=adapters or None)
        if adapters:
            base_args = dataclasses.replace(model_args, adapter_name_or_path=adapters[:-1] or None)
    else:
        evaluated = model_args
        trained = output_dir is not None and _holds_full_model(output_dir)
        if trained and not _same_path(output_dir, model_args.model_name_or_path):
            evaluated = dataclasses.replace(model_args, model_name_or_path=str(output_dir))
            base_args = model_args
            notes.append(f"evaluating the {method} fine-tune saved in output_dir {output_dir} "
                         f"(base: {model_args.model_name_or_path})")
        else:
            notes.append(f"evaluating {model_args.model_name_or_path} as it is")
    if base_model:
        base_args = dataclasses.replace(model_args, model_name_or_path=base_model, adapter_name_or_path=None)
    elif base_args is None:
        notes.append("drift skipped: nothing fine-tuned to compare with the base model (pass --base MODEL to compare)")
    return EvalTargets(evaluated, base_args, tuple(notes))


def adapters_text(model_args) -> str | None:
    """`adapter_name_or_path` as one comma-separated string (None when unset)."""
    from tuneforge.config.args import split_names

    return ",".join(split_names(model_args.adapter_name_or_path)) or None


def results_path(cfg, output: str | None) -> Path:
    """--output (a .json file or a folder), else the config's output_dir, else the current folder."""
    if output:
        path = Path(output)
        return path if path.suffix.lower() == ".json" else path / RESULTS_FILE
    if cfg.raw.get("output_dir"):
        return Path(cfg.training.output_dir) / RESULTS_FILE
    return Path(RESULTS_FILE)
