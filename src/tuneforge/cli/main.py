"""`tuneforge` command line: parse, call the workflow, print. No training logic lives here."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from tuneforge import __version__
from tuneforge.cli.options import (DATA_SUBCOMMANDS, parse_webui_args, pop_option as _pop_option,
                                   split_data_options)
from tuneforge.cli.serve_cmd import cmd_api, cmd_webchat
from tuneforge.cli.train_cmd import cmd_train, load_run_config as _load
from tuneforge.errors import ConfigError, TuneforgeError


USAGE = """\
tuneforge {version} — fine-tune open LLMs with LLaMA-Factory-compatible configs

usage: tuneforge [--debug] <command> [config.yaml] [key=value ...]

commands:
  train    fine-tune: sft pt rm dpo kto ppo grpo         tuneforge train examples/demo_lora_sft.yaml
  chat     chat with a model / adapter in the terminal   tuneforge chat examples/demo_chat.yaml
  export   merge adapters and save a standalone model    tuneforge export examples/demo_merge.yaml
  data     preview how a dataset is rendered and masked  tuneforge data preview examples/demo_lora_sft.yaml
           check the rows a config trains on              tuneforge data check examples/demo_lora_sft.yaml [--json]
  eval     did it learn? recall of the training facts    tuneforge eval recall train.yaml [--samples 50]
           multiple choice (MMLU / C-Eval / CMMLU layout) tuneforge eval examples/demo_mcq_eval.yaml
  api      serve a model: OpenAI-compatible API          tuneforge api examples/demo_chat.yaml [--port 8000]
  webchat  one model's chat page in the browser         tuneforge webchat examples/demo_chat.yaml [--port 7860]
  webui    train, chat and export in the browser         tuneforge webui [--host H] [--port N] [--share] [--lang zh] [--auth U:P]
  bench    time training steps: tokens/s, memory, MFU   tuneforge bench examples/demo_lora_sft.yaml --steps 20
  estimate predict training memory before a run          tuneforge estimate examples/demo_lora_sft.yaml
  expand-layers  LLaMA Pro: add blocks to train          tuneforge expand-layers --model_name_or_path M --output_dir O --num_expand 8
  env      print library versions and the device
  version  print the tuneforge version

Any config key can be given or overridden on the command line as key=value or --key value.
Add --dry-run to train, chat, export or eval to check the config and everything it names and print the plan
without loading weights or writing anything (exit status 0 only when the real run would start).
`tuneforge train -h` lists every accepted key with its default. Add --debug for tracebacks.
"""


def cmd_chat(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print("usage: tuneforge chat [config.yaml] [key=value ...] [--prompt TEXT] [--answer TEXT] [--image FILE]...\n"
              "Type a message; `clear` resets the history, `exit` quits. --prompt answers once.\n"
              "--image (a vision-language model; repeat it for several): the images the conversation is about,\n"
              "one per `<image>` in its first message (put at its start when it has none).\n"
              "With a reward model (value_head.safetensors in the adapter/model folder) it scores\n"
              "answers instead: --prompt TEXT --answer TEXT prints the score.")
        return 0
    prompt = _pop_option(args, "--prompt")
    answer = _pop_option(args, "--answer")
    images = []
    while (image := _pop_option(args, "--image")) is not None:
        images.append(image)
    from tuneforge.infer.chat_cli import run_chat, run_reward_chat
    from tuneforge.infer.reward import is_reward_model

    cfg = _load(args, require_output_dir=False)
    if is_reward_model(cfg):  # a value head next to the weights: score answers instead of generating
        return run_reward_chat(cfg, prompt=prompt, answer=answer)
    if answer is not None:
        raise ConfigError("--answer is for reward models (a folder with value_head.safetensors)")
    return run_chat(cfg, prompt=prompt, images=images)


def cmd_export(args: list[str]) -> int:
    from tuneforge.export import run_export

    run_export(_load(args, require_output_dir=False))
    return 0


DATA_USAGE = """\
usage: tuneforge data preview [config.yaml] [key=value ...] [-n N]
       tuneforge data check [config.yaml] [key=value ...] [--json]
  preview  the first N samples as the model sees them, trained tokens marked, and the data report
  check    a report on exactly the rows the config trains on: format errors, empty answers, duplicates,
           conflicting answers, near-duplicate prompts, fact data, token lengths against cutoff_len, a template
           that disagrees with the model's; each finding with the keys to set. --json: the same as JSON.
           Exit status 1 when it finds an error."""


def cmd_data(args: list[str]) -> int:
    if not args or args[0] not in DATA_SUBCOMMANDS or any(a in ("-h", "--help") for a in args):
        print(DATA_USAGE)
        return 0 if any(a in ("-h", "--help") for a in args) else 2
    rest, count, as_json = split_data_options(args[0], args[1:])
    if args[0] == "check":
        from tuneforge.train.check_data import check_data

        report = check_data(_load(rest, require_output_dir=False, data_only=True))
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2) if as_json else report.format())
        return 1 if report.count("error") else 0
    from tuneforge.train.tuner import preview_data

    print(preview_data(_load(rest, require_output_dir=False, data_only=True), count))
    return 0


EVAL_USAGE = """\
usage: tuneforge eval [config.yaml] [key=value ...]        multiple choice (LLaMA-Factory's `eval`): MMLU / C-Eval /
                                                          CMMLU-layout tasks, keys task, task_dir, n_shot, lang,
                                                          batch_size, save_dir, seed (examples/demo_mcq_eval.yaml)
       tuneforge eval recall [config.yaml] [key=value ...] [--samples N] [--seed S] [--no-heldout] [--no-drift]
                             [--json] [--output FILE.json|DIR] [--base MODEL] [--drift-questions FILE]
                             [--heldout-per-row N]
Did it learn? Asks the fine-tuned model its training questions (the config's `dataset`) greedily and reports
exact match, character similarity, per-field accuracy for `key:value` answers and the worst answers; then
single-field questions in phrasings never trained (held-out); then drift: general questions answered by the
base model and by the fine-tune. Works on a training YAML: the adapter (lora) or model (full, freeze) saved in
its output_dir is evaluated. Writes recall_results.json into output_dir (or --output).
  --samples N             ask a seeded sample of N training questions (default: all)
  --seed S                the sample's seed (default: the config's seed)
  --no-heldout            skip the held-out questions
  --heldout-per-row N     held-out questions per training row, fields rotating across rows (default 2; 0 = all)
  --no-drift              skip the drift questions (no base model is loaded)
  --json                  print the results as JSON on stdout (progress goes to stderr)
  --output PATH           where to write the JSON (a .json file or a folder)
  --base MODEL            the model before training, for drift (default: from the config)
  --drift-questions FILE  your own general questions (default: the shipped set)"""

_EVAL_FLAGS = ("--no-heldout", "--no-drift", "--json")
_EVAL_VALUE_OPTIONS = ("--samples", "--seed", "--output", "--base", "--drift-questions", "--heldout-per-row")


def _int_option(args: list[str], name: str) -> int | None:
    text = _pop_option(args, name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"tuneforge eval recall: {name} expects a whole number, got {text!r}") from None


def cmd_eval(args: list[str]) -> int:
    wants_help = any(a in ("-h", "--help") for a in args)
    if wants_help or not args:
        print(EVAL_USAGE)
        return 0 if wants_help else 2
    if args[0] != "recall":
        return _eval_multiple_choice(args)
    import functools

    from tuneforge.evaluate.recall import HELDOUT_PER_ROW, RecallOptions, run_recall
    from tuneforge.evaluate.recall_report import format_recall_report

    rest = list(args[1:])
    flags = {flag: flag in rest for flag in _EVAL_FLAGS}
    rest = [a for a in rest if a not in _EVAL_FLAGS]
    samples, seed = _int_option(rest, "--samples"), _int_option(rest, "--seed")
    per_row = _int_option(rest, "--heldout-per-row")
    if samples is not None and samples < 1:
        raise ConfigError(f"tuneforge eval recall: --samples expects a number >= 1, got {samples}")
    if per_row is not None and per_row < 0:
        raise ConfigError(f"tuneforge eval recall: --heldout-per-row expects a number >= 0, got {per_row}")
    options = RecallOptions(samples=samples, seed=seed, heldout=not flags["--no-heldout"],
                            heldout_per_row=HELDOUT_PER_ROW if per_row is None else (per_row or None),
                            drift=not flags["--no-drift"], output=_pop_option(rest, "--output"),
                            base_model=_pop_option(rest, "--base"),
                            drift_questions=_pop_option(rest, "--drift-questions"))
    stray = [a for a in rest if a in _EVAL_VALUE_OPTIONS]
    if stray:
        raise ConfigError(f"tuneforge eval recall: {stray[0]} needs a value; see `tuneforge eval -h`")
    as_json = flags["--json"]
    emit = functools.partial(print, file=sys.stderr if as_json else sys.stdout, flush=True)
    results = run_recall(_load(rest, require_output_dir=False), options, emit)
    if as_json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print(format_recall_report(results))
        print(f"[tuneforge] all numbers and answers: {results['results_file']}", flush=True)
    return 0


def _eval_multiple_choice(args: list[str]) -> int:
    cfg = _load(args, require_output_dir=False)
    if not cfg.evaluation.task:
        raise ConfigError("tuneforge eval: set `task` (e.g. task: mmlu_test, with its folder under task_dir) for "
                          "multiple-choice evaluation, or run `tuneforge eval recall x.yaml` for recall of training facts")
    from tuneforge.evaluate.mcq import run_mcq_eval

    run_mcq_eval(cfg)
    return 0


WEBUI_USAGE = """\
usage: tuneforge webui [--host 127.0.0.1] [--port 7860] [--share] [--lang en|zh] [--auth user:password]
Serves the web UI (needs the `webui` extra: pip install -e '.[webui]').
  --auth user:password  the login the browser asks for; required with a --host other than 127.0.0.1 / ::1 /
                        localhost or with --share (the variable TUNEFORGE_WEBUI_AUTH=user:password is read
                        when --auth is not given)"""


def cmd_webui(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(WEBUI_USAGE)
        return 0
    options = parse_webui_args(args, os.environ)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("the web UI needs gradio, which is not installed: pip install -e '.[webui]'") from None
    from tuneforge.webui.app import launch

    launch(**options)
    return 0


def cmd_env(_: list[str]) -> int:
    import platform
    from importlib import metadata

    print(f"tuneforge    {__version__}")
    print(f"python       {platform.python_version()} ({platform.platform()})")
    for name in ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "safetensors", "gguf"):
        try:
            print(f"{name:<12} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(f"{name:<12} not installed")
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device       cuda ({torch.cuda.device_count()}x {names})")
    else:
        print(f"device       cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    from tuneforge.utils.allocator import INSTALL_HINT, find_tcmalloc, library_dirs

    tcmalloc = find_tcmalloc(library_dirs(os.environ))
    found = (f"{tcmalloc} (CPU training and the data commands run under it: cpu_allocator)" if tcmalloc
             else f"not found: {INSTALL_HINT}")
    print(f"tcmalloc     {found}")
    return 0


def cmd_bench(args: list[str]) -> int:
    from tuneforge.bench.cli import main_bench

    return main_bench(args)


def cmd_estimate(args: list[str]) -> int:
    from tuneforge.estimate.cli import main_estimate

    return main_estimate(args)


def cmd_version(_: list[str]) -> int:
    print(__version__)
    return 0


EXPAND_USAGE = """\
usage: tuneforge expand-layers --model_name_or_path M --output_dir O --num_expand N
LLaMA Pro block expansion (LLaMA-Factory's scripts/llama_pro.py): after every L/N of the model's L layers, a copy
of that layer whose o_proj/down_proj are zero (the expanded model answers exactly as before). Then fine-tune O with
finetuning_type: freeze (or lora), freeze_trainable_layers: N, use_llama_pro: true."""


def cmd_expand_layers(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(EXPAND_USAGE)
        return 0
    values = {}
    for key in ("model_name_or_path", "output_dir", "num_expand"):
        values[key] = _pop_option(args, f"--{key}") or _pop_option(args, f"--{key.replace('_', '-')}")
    missing = [f"--{k}" for k, v in values.items() if not v]
    problems = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {' '.join(args)}"] if args else [])
    if problems:
        raise ConfigError(f"tuneforge expand-layers: {'; '.join(problems)}\n{EXPAND_USAGE}")
    if not values["num_expand"].isdigit():
        raise ConfigError(f"tuneforge expand-layers: --num_expand expects a whole number, got {values['num_expand']!r}")
    from tuneforge.model.expand import expand_layers

    folder = expand_layers(values["model_name_or_path"], values["output_dir"], int(values["num_expand"]))
    print(f"expanded model written to {folder}\nfine-tune it with:\n  model_name_or_path: {folder}\n"
          f"  finetuning_type: freeze\n  freeze_trainable_layers: {values['num_expand']}\n  use_llama_pro: true")
    return 0


DRY_RUN_COMMANDS = ("train", "chat", "export", "eval")


def cmd_dry_run(command: str, args: list[str]) -> int:
    """`<command> ... --dry-run`: validate and print the plan (dry_run.py); nothing is loaded or written."""
    from tuneforge import dry_run

    args = [a for a in args if a != "--dry-run"]
    if command == "eval":  # `eval recall x.yaml [options]`: keep the config and its overrides
        args = [a for a in args[1:] if a not in _EVAL_FLAGS]
        for option in _EVAL_VALUE_OPTIONS:
            _pop_option(args, option)
    elif command == "chat":
        _pop_option(args, "--prompt")
        _pop_option(args, "--answer")
    try:
        cfg = _load(args, require_output_dir=command == "train")
    except TuneforgeError as err:
        plan = dry_run.refused_plan(command, err)
    else:
        plan = dry_run.make_plan(command, cfg)
    print(plan.format())
    return 2 if plan.refused else 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "chat": cmd_chat,
    "export": cmd_export,
    "data": cmd_data,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "estimate": cmd_estimate,
    "api": cmd_api,
    "webchat": cmd_webchat,
    "webui": cmd_webui,
    "expand-layers": cmd_expand_layers,
    "env": cmd_env,
    "version": cmd_version,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv_from_process = argv is None  # not a call from Python (tests, the web UI's own process)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(version=__version__))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        print(f"error: unknown command `{command}`.{hint} Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from tuneforge.utils.logging import setup_logging

    setup_logging(logging.DEBUG if debug else logging.INFO)
    try:
        if "--dry-run" in rest and command in DRY_RUN_COMMANDS:
            return cmd_dry_run(command, rest)
        if argv_from_process:  # this process is the command: it may start again under another allocator
            from tuneforge.cli.cpu_allocator import restart_for_command

            restart_for_command(command, rest)
        return COMMANDS[command](rest)
    except TuneforgeError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tuneforge train -h | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
