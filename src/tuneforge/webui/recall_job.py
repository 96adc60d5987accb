"""The Evaluate tab's recall check ("did it learn?") as a job: UI values -> the YAML and the
`tuneforge eval recall` command line, and the job's output -> what the tab shows. Pure functions, no gradio.

The job is the CLI itself, `tuneforge eval recall <output_dir>/tuneforge_recall.yaml --output
<output_dir>/recall_results.json [--samples N] [--no-heldout] [--no-drift] [--base MODEL]`, so a user can
rerun exactly what the UI ran. It writes no trainer_log.jsonl / running_status.json: the job manager reads
its progress lines (`[tuneforge] recall 3/50 (12s)  exact so far 2/3`, `parse_progress`) from the job's
log, and the results from recall_results.json once the process has exited (written only at the end).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.evaluate.recall_data import RESULTS_FILE
from tuneforge.webui import args, safety

RECALL_YAML = "tuneforge_recall.yaml"
RECALL_LOG = "webui_recall.log"
# The tab's own values for a recall check (0 questions = every training question).
RECALL_DEFAULTS: dict[str, Any] = {"recall_samples": 50, "recall_heldout": True, "recall_drift": True}
EVAL_MODES = ("predict", "recall")

_PROGRESS = re.compile(r"^\[tuneforge\] (?P<phase>[a-z][a-z ()-]*?) (?P<done>\d+)/(?P<total>\d+) \((?P<seconds>\d+)s\)"
                       r"(?:\s+(?P<extra>.*))?$")
_BEGUN = ("[tuneforge] evaluating ", "[tuneforge] before training: ")


def build_recall_config(model_values: Mapping[str, Any], eval_values: Mapping[str, Any],
                        save_root: str | Path = "saves", *, allow_outside: bool = False) -> dict[str, Any]:
    """Model bar + Evaluate tab values -> the config `tuneforge eval recall` reads: the model (with the chosen
    adapter / checkpoint), the training datasets whose questions are asked, and the output folder (inside
    `save_root` unless `allow_outside`)."""
    m = {**args.DEFAULTS, **model_values}
    v = {**args.EVAL_DEFAULTS, **RECALL_DEFAULTS, **eval_values}
    datasets = [d for d in (v["eval_dataset"] or []) if d]
    if not datasets:
        raise ConfigError(f"{args.SOURCE}: no dataset chosen; pick the training datasets whose questions the "
                          "recall check asks")
    config: dict[str, Any] = {**args.model_config(m, save_root), "stage": "sft",
                              "finetuning_type": m["finetuning_type"], "dataset": ",".join(datasets),
                              "dataset_dir": str(v["eval_dataset_dir"] or "data"),
                              "output_dir": args.resolve_output_dir(save_root, str(m["model_path"]).strip(),
                                                                    m["finetuning_type"], v["eval_output_dir"])}
    safety.check_inside_root(config["output_dir"], save_root, allow_outside)
    return config


def recall_options(model_values: Mapping[str, Any], eval_values: Mapping[str, Any]) -> list[str]:
    """The command's flags besides --output: `--samples N` (0 = all: no flag), `--no-heldout`, `--no-drift`,
    and for a chosen full / freeze checkpoint `--base <model>` (the model bar's model, for drift)."""
    m = {**args.DEFAULTS, **model_values}
    v = {**RECALL_DEFAULTS, **eval_values}
    samples = args._number(v, "recall_samples", int)
    if samples < 0:
        raise ConfigError(f"{args.SOURCE}: the number of questions to ask must be 0 (all) or more, got {samples}")
    options = ["--samples", str(samples)] if samples else []
    if not v["recall_heldout"]:
        options.append("--no-heldout")
    if not v["recall_drift"]:
        options.append("--no-drift")
    elif m["finetuning_type"] not in ("lora", "oft") and [c for c in (m["checkpoints"] or []) if c]:
        # the checkpoint is loaded as the model: its base is the model chosen in the model bar
        options += ["--base", str(m["model_path"]).strip()]
    return options


def results_file(output_dir: str | Path) -> Path:
    return Path(output_dir) / RESULTS_FILE


def recall_argv(yaml_path: str | Path, output_dir: str | Path, options: Sequence[str] = ()) -> list[str]:
    """The job's arguments after `tuneforge`."""
    return ["eval", "recall", str(yaml_path), "--output", str(results_file(output_dir)), *options]


def command_text(argv: Sequence[str]) -> str:
    return "tuneforge " + shlex.join(argv)


# ---------------------------------------------------------------------------------------- job output
@dataclass(frozen=True)
class Progress:
    phase: str        # recall | held-out | drift (base model) | drift (fine-tuned)
    done: int
    total: int
    seconds: int      # since the phase began
    extra: str = ""   # "exact so far 2/3"


def parse_progress(log_text: str) -> Progress | None:
    """The last progress line of the job's output, if any."""
    for line in reversed(log_text.splitlines()):
        found = _PROGRESS.match(line.strip())
        if found:
            return Progress(found["phase"], int(found["done"]), int(found["total"]), int(found["seconds"]),
                            (found["extra"] or "").strip())
    return None


def has_begun(log_text: str) -> bool:
    """True once a model answers questions (before that the job loads data and models)."""
    return parse_progress(log_text) is not None or any(line.startswith(_BEGUN) for line in log_text.splitlines())


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100.0 * part / whole:.1f}%)" if whole else "-"


def summary_text(results: Mapping[str, Any], path: str | Path, lang: str) -> str:
    """The headline numbers of recall_results.json in a few lines: exact match, similarity, field accuracy,
    held-out accuracy, drift mean change, the notes on which model was evaluated, and where the JSON is."""
    from tuneforge.evaluate.recall_report import verdict
    from tuneforge.webui.i18n import message

    recall, heldout, drift = results["recall"], results["heldout"], results["drift"]
    if recall.get("field_accuracy") is None:
        fields = message("recall_no_fields", lang)
    else:
        fields = _share(recall["fields_correct"], recall["fields_total"])
    held = (message("recall_skipped", lang, reason=heldout["skipped"]) if "skipped" in heldout
            else _share(heldout["correct"], heldout["questions"]))
    moved = (message("recall_skipped", lang, reason=drift["skipped"]) if "skipped" in drift
             else f"{drift['mean_change']:.3f}")
    lines = [message("recall_summary", lang, exact=_share(recall["exact"], recall["questions"]),
                     similarity=recall["char_similarity"], fields=fields, heldout=held, drift=moved),
             verdict(dict(results))]
    lines += [f"· {note}" for note in results.get("model", {}).get("notes", [])]
    lines.append(message("recall_file", lang, path=path))
    return "\n".join(lines)
