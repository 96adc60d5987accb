"""Write tests/data/lf_examples_v0_9_5.json: the key/value settings of LLaMA-Factory's example configs.

Reads a git checkout or bare mirror of hiyouga/LLaMA-Factory at tag v0.9.5 and keeps only what a config
loader sees: every example YAML parsed with `yaml.safe_load` (the same YAML reading tuneforge does, so
e.g. `2e-5` stays the string "2e-5") and every DeepSpeed JSON parsed with `json.loads`. Comments, prose,
shell scripts and READMEs are not copied.

    python tests/data/make_lf_examples.py [--repo /path/to/LLaMA-Factory(.git)] [--tag v0.9.5]

Groups in the output:
- training_configs: `llamafactory-cli train/chat/export` files (plus the LF v1-engine files under v1/).
- launcher_configs: `accelerate launch --config_file` files (accelerate/, ktransformers/accelerate/).
- deepspeed_configs: examples/deepspeed/*.json, which training configs name in `deepspeed:`.
- other_configs: YAML that is neither (a token-description file for `new_special_tokens_config`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

DEFAULT_REPO = "/work/.mirror/hiyouga+LLaMA-Factory/repo"
DEFAULT_TAG = "v0.9.5"
OUT = Path(__file__).resolve().parent / "lf_examples_v0_9_5.json"

LAUNCHER_DIRS = ("examples/accelerate/", "examples/ktransformers/accelerate/")
OTHER_FILES = ("examples/extras/multi_tokens/tokens_cfg.yaml",)  # {"<token>": "description"}, not a run config


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=DEFAULT_REPO)
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    commit = git(args.repo, "rev-parse", f"{args.tag}^{{commit}}").strip()
    paths = sorted(git(args.repo, "ls-tree", "-r", "--name-only", args.tag, "--", "examples").split())
    groups: dict[str, list[dict]] = {
        "training_configs": [], "launcher_configs": [], "deepspeed_configs": [], "other_configs": []
    }
    for path in paths:
        if path.endswith((".yaml", ".yml")):
            settings = yaml.safe_load(git(args.repo, "show", f"{args.tag}:{path}")) or {}
            if path in OTHER_FILES:
                group = "other_configs"
            elif path.startswith(LAUNCHER_DIRS):
                group = "launcher_configs"
            else:
                group = "training_configs"
        elif path.startswith("examples/deepspeed/") and path.endswith(".json"):
            settings, group = json.loads(git(args.repo, "show", f"{args.tag}:{path}")), "deepspeed_configs"
        else:
            continue  # shell scripts, READMEs
        if not isinstance(settings, dict):
            raise SystemExit(f"{path}: expected key/value settings, got {type(settings).__name__}")
        groups[group].append({"path": path, "settings": settings})

    document = {
        "source": f"hiyouga/LLaMA-Factory {args.tag} examples/, key/value settings only",
        "commit": commit,
        **groups,
    }
    Path(args.out).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    counts = ", ".join(f"{len(v)} {k}" for k, v in groups.items())
    print(f"wrote {args.out}: {counts}")


if __name__ == "__main__":
    main()
