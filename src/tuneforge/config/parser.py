"""Load a run configuration: YAML/JSON file + command-line overrides -> a validated, frozen `RunConfig`.

Order of work (each step raises a `TuneforgeError` that names the file or override and the key):
read the file -> apply overrides -> unknown keys ("did you mean") -> value types -> keys and values not
supported yet (support.py) -> consistency checks -> build the dataclasses and HF training arguments.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError, NotSupportedError
from ..utils.distributed import world_size
from . import lf_v1, support
from .args import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments

if TYPE_CHECKING:
    from .training_args import TrainingArguments
from .catalogue import SECTIONS, all_known_keys, expected_type, field_default, flag_keys, key_catalogue
from .eval_args import EvaluationArguments
from .facts_args import FactArguments
from .batching_args import BatchingArguments
from .profiler_args import ProfilerArguments
from .grpo_args import GRPOArguments
from .typecheck import TypeMismatch, coerce, describe_type

OVERRIDE_SOURCE = "command-line override"


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. Frozen: derive modified copies with `dataclasses.replace`."""

    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    generating: GeneratingArguments
    training: TrainingArguments  # config/training_args.py (data-only commands: config/training_values.py)
    config_path: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    facts: FactArguments = field(default_factory=FactArguments)  # tuneforge's fact-data keys
    evaluation: EvaluationArguments = field(default_factory=EvaluationArguments)  # multiple-choice evaluation
    grpo: GRPOArguments = field(default_factory=GRPOArguments)  # stage grpo's keys
    batching: BatchingArguments = field(default_factory=BatchingArguments)  # LF v1's batching_strategy
    profiler: ProfilerArguments = field(default_factory=ProfilerArguments)  # torch profiler traces

    @property
    def config_dir(self) -> Path | None:
        """Folder of the config file; relative paths in the config are resolved against it (or the cwd)."""
        return None if self.config_path is None else self.config_path.parent


# --------------------------------------------------------------------------- reading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice (PyYAML would silently keep the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"{key_node.start_mark.name}: key `{key}` appears twice (lines {seen[key]} and {line}); keep one"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a flat dict; malformed files name the line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows editors) is not content
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    else:
        try:
            loader = _UniqueKeyLoader(text)
            loader.name = str(path)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err)
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected `key: value` lines at the top level, got a {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} is not a name; keys are LLaMA-Factory argument names")
    return data


def parse_value(text: str) -> Any:
    """An override value as a YAML scalar (`true`, `8`, `1.0e-4`, `null`) or flow list/map (`[a, b]`)."""
    stripped = text.strip()
    try:
        value = yaml.safe_load(stripped)
    except yaml.YAMLError:
        return text
    if isinstance(value, (dict, list)) and not stripped.startswith(("{", "[")):
        return text  # e.g. "Note: be brief" is a sentence, not a mapping
    return value


def parse_overrides(
    overrides: Iterable[str], known_keys: Iterable[str] = (), flag_keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """`key=value`, `--key value`, `--key=value` and bare `--flag` (= true) -> {key: value}.

    With `flag_keys` (the true/false keys), a bare `--key` for any other known key is an error: its value
    is missing (`--learning_rate` at the end, or followed by the next `--key`)."""
    known = set(known_keys)
    flags = None if flag_keys is None else set(flag_keys)
    items = list(overrides)
    result: dict[str, Any] = {}

    def looks_like_assignment(item: str) -> bool:
        head = item.split("=", 1)[0].replace("-", "_")
        return "=" in item and (head in known or not known) and head.isidentifier()

    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            body = item[2:]
            if "=" in body:
                key, text = body.split("=", 1)
            elif i + 1 < len(items) and not items[i + 1].startswith("--") and not looks_like_assignment(items[i + 1]):
                key, text = body, items[i + 1]
                i += 1
            else:
                key, text = body, "true"
                name = key.strip().replace("-", "_")
                if flags is not None and name in known and name not in flags:
                    raise ConfigError(
                        f"{OVERRIDE_SOURCE} `{item}` has no value; expected `{item} VALUE` or `{name}=VALUE` "
                        "(only true/false keys may be given without a value)"
                    )
        elif "=" in item:
            key, text = item.split("=", 1)
        else:
            raise ConfigError(f"{OVERRIDE_SOURCE} `{item}`: expected `key=value`, `--key value` or `--key=value`")
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"{OVERRIDE_SOURCE} `{item}`: the key is empty")
        result[key] = parse_value(text)
        i += 1
    return result


# --------------------------------------------------------------------------- entry points


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def split_config_and_overrides(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Command-line words -> (config file, overrides): the first word is the config file when it looks like one."""
    if args and not args[0].startswith("-") and args[0].lower().endswith(CONFIG_SUFFIXES):
        return args[0], list(args[1:])
    return None, list(args)


def load_config(
    path: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    require_output_dir: bool = True,
    data_only: bool = False,
) -> RunConfig:
    """Read `path` (YAML or JSON, optional), apply `overrides`, validate, and build a `RunConfig`. `data_only`
    (commands that read data, one process): the training keys as plain values (config/training_values.py)."""
    values = read_config_file(path) if path is not None else {}
    origins = {key: str(path) for key in values}
    parsed = parse_overrides(overrides, all_known_keys(), flag_keys())
    values.update(parsed)
    origins.update({key: OVERRIDE_SOURCE for key in parsed})
    config_path = Path(path).resolve() if path is not None else None
    return _build(values, origins, config_path, require_output_dir=require_output_dir, data_only=data_only)


def load_config_dict(
    d: Mapping[str, Any],
    *,
    source: str = "<dict>",
    overrides: Iterable[str] = (),
    config_path: str | Path | None = None,
    require_output_dir: bool = True,
) -> RunConfig:
    """Build a `RunConfig` from a dict (web UI, tests); `source` names it in error messages."""
    values = dict(d)
    origins = {key: source for key in values}
    parsed = parse_overrides(overrides, all_known_keys(), flag_keys())
    values.update(parsed)
    origins.update({key: OVERRIDE_SOURCE for key in parsed})
    resolved = Path(config_path).resolve() if config_path is not None else None
    return _build(values, origins, resolved, require_output_dir=require_output_dir)


# --------------------------------------------------------------------------- building


def _problems_error(problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(f"{len(problems)} problems in the configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def _unknown_key_message(key: str, origin: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean `{match[0]}`?" if match else "run `tuneforge train -h` to list the accepted keys"
    return f"{origin}: unknown key `{key}`; {hint}"


def _check_types(values: dict[str, Any], origins: dict[str, str]) -> dict[str, Any]:
    """Unknown keys and wrongly typed values, all reported at once. Returns coerced values."""
    catalogue = key_catalogue()
    known = all_known_keys()
    foreign = support.foreign_engine([key for key in values if key not in catalogue])
    if foreign:
        engine, keys = foreign
        origin = origins.get(keys[0], "<config>")
        raise NotSupportedError(f"{origin}: {', '.join(f'`{k}`' for k in keys)} are {engine}")
    problems: list[str] = []
    coerced: dict[str, Any] = {}
    for key, value in values.items():
        origin = origins.get(key, "<config>")
        if key not in catalogue and key not in support.LEGACY_TRAINING_KEYS:
            problems.append(_unknown_key_message(key, origin, known))
            continue
        expected = expected_type(key, catalogue)
        try:
            coerced[key] = coerce(value, expected)
        except TypeMismatch:
            problems.append(
                f"{origin}: `{key}` expects {describe_type(expected)}, got {value!r} ({type(value).__name__})"
            )
    if problems:
        raise _problems_error(problems)
    return coerced


def _check_support(values: dict[str, Any], origins: dict[str, str]) -> None:
    """Every key set to something tuneforge does not implement, all reported at once."""
    catalogue = key_catalogue()
    problems: list[str] = []
    for key, value in values.items():
        origin = origins.get(key, "<config>")
        if key in support.UNSUPPORTED_KEYS:
            default = field_default(catalogue[key][0][1])
            if value != default:
                problems.append(
                    f"{origin}: `{key}` is not supported yet by tuneforge ({support.UNSUPPORTED_KEYS[key]}); "
                    f"remove it or set it to its default `{default}`"
                )
        if key in support.UNSUPPORTED_VALUES:
            accepted, reason = support.UNSUPPORTED_VALUES[key]
            if value not in accepted:
                problems.append(
                    f"{origin}: `{key}: {value}` is not supported yet by tuneforge ({reason}); "
                    f"supported: {', '.join(map(str, accepted))}"
                )
        legacy = support.LEGACY_TRAINING_KEYS.get(key)
        if legacy is not None and legacy.action == "default_only" and value != legacy.default:
            problems.append(f"{origin}: `{key}: {value}` is not supported by tuneforge ({legacy.reason})")
    if problems:
        raise NotSupportedError(_problems_error(problems).args[0])


def _translate_legacy(values: dict[str, Any], origins: dict[str, str]) -> dict[str, Any]:
    """Replace transformers-4 training keys by their transformers-5 equivalents."""
    out = {k: v for k, v in values.items() if k not in support.LEGACY_TRAINING_KEYS}
    for key, value in values.items():
        legacy = support.LEGACY_TRAINING_KEYS.get(key)
        if legacy is None:
            continue
        origin = origins.get(key, "<config>")
        if legacy.action == "alias":
            if legacy.target in values and values[legacy.target] != value:
                raise ConfigError(
                    f"{origin}: `{key}` is the old name of `{legacy.target}` and both are set differently "
                    f"({value!r} vs {values[legacy.target]!r}); keep `{legacy.target}`"
                )
            out[legacy.target] = value
        elif legacy.action == "warmup_fraction":
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{origin}: `warmup_ratio` must be in [0, 1), got {value}")
            if value > 0:
                if values.get("warmup_steps", 0) not in (0, 0.0):
                    raise ConfigError(
                        f"{origin}: set either `warmup_ratio` ({value}) or `warmup_steps` "
                        f"({values['warmup_steps']}), not both"
                    )
                out["warmup_steps"] = value  # transformers 5: a warmup_steps value < 1 is a fraction
        elif legacy.action == "sampler" and value:
            strategy = values.get("train_sampling_strategy", "random")
            if strategy not in ("random", "group_by_length"):
                raise ConfigError(
                    f"{origin}: `group_by_length: true` conflicts with `train_sampling_strategy: {strategy}`"
                )
            out["train_sampling_strategy"] = "group_by_length"
    return out


def _split(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    catalogue = key_catalogue()
    sections: dict[str, dict[str, Any]] = {name: {} for name, _ in SECTIONS}
    for key, value in values.items():
        for section, _ in catalogue[key]:
            sections[section][key] = value
    return sections


def _build(
    values: dict[str, Any], origins: dict[str, str], config_path: Path | None, *, require_output_dir: bool,
    data_only: bool = False,
) -> RunConfig:
    from .validate import check_consistency, training_kwargs  # local: keeps this module readable

    raw = MappingProxyType(copy.deepcopy(values))
    if lf_v1.is_v1_config(values):  # `USE_V1=1 llamafactory-cli train` files: their v0 meaning
        values, origins = lf_v1.translate(values, origins)
    typed = _check_types(values, origins)
    _check_support(typed, origins)
    typed = _translate_legacy(typed, origins)
    config_dir = config_path.parent if config_path is not None else None
    check_consistency(typed, origins, require_output_dir=require_output_dir, config_dir=config_dir)
    sections = _split(typed)
    file_origins = [o for o in origins.values() if o != OVERRIDE_SOURCE]
    where = file_origins[0] if file_origins else OVERRIDE_SOURCE
    try:
        model = ModelArguments(**sections["model"])
        data = DataArguments(**sections["data"])
        finetuning = FinetuningArguments(**sections["finetuning"])
        generating = GeneratingArguments(**sections["generating"])
        facts = FactArguments(**sections["facts"])
        evaluation = EvaluationArguments(**sections["evaluation"])
        grpo = GRPOArguments(**sections["grpo"])
        batching = BatchingArguments(**sections["batching"])
        profiler = ProfilerArguments(**sections["profiler"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
    plain_values = data_only and world_size() == 1
    kwargs = training_kwargs(sections["training"], finetuning.disable_shuffling, finetuning.finetuning_type,
                             probe_devices=not plain_values)
    if plain_values:
        from .training_values import TrainingValues

        training = TrainingValues(kwargs)
        return RunConfig(model, data, finetuning, generating, training, config_path, raw, facts, evaluation, grpo,
                         batching, profiler)
    try:
        from .training_args import TrainingArguments

        training = TrainingArguments(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: invalid training arguments: {err}") from None
    return RunConfig(model, data, finetuning, generating, training, config_path, raw, facts, evaluation, grpo,
                     batching, profiler)
