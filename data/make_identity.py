"""Make your own identity dataset from data/identity.json.

identity.json keeps LLaMA-Factory's placeholders `{{name}}` and `{{author}}`; the training pipeline
does not fill them in, so substitute them once and register the result in dataset_info.json:

    python data/make_identity.py --name Forgey --author "the tuneforge team"   # -> data/identity_tuneforge.json
    python data/make_identity.py --name Ada --author "Acme Labs" --output data/identity_ada.json

Then add `"identity_ada": {"file_name": "identity_ada.json"}` to data/dataset_info.json and train
with `dataset: identity_ada`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
PLACEHOLDERS = ("{{name}}", "{{author}}")


def substitute_identity(rows: list[dict], name: str, author: str) -> list[dict]:
    """Return a copy of `rows` with `{{name}}` / `{{author}}` replaced in every string field."""
    for label, value in (("--name", name), ("--author", author)):
        if not value.strip() or "{{" in value:
            raise ValueError(f"{label} must be a non-empty string without '{{{{', got {value!r}")

    def fill(text: str) -> str:
        return text.replace("{{name}}", name).replace("{{author}}", author)

    return [{key: fill(val) if isinstance(val, str) else val for key, val in row.items()} for row in rows]


def dump_rows(rows: list[dict]) -> str:
    """The on-disk form used by every shipped JSON file: UTF-8, 2-space indent, final newline."""
    return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="Forgey", help="assistant name for {{name}} (default: Forgey)")
    parser.add_argument(
        "--author", default="the tuneforge team", help="developer for {{author}} (default: the tuneforge team)"
    )
    parser.add_argument("--input", type=Path, default=DATA_DIR / "identity.json", help="template rows")
    parser.add_argument(
        "--output", type=Path, default=DATA_DIR / "identity_tuneforge.json", help="where to write the result"
    )
    args = parser.parse_args(argv)

    rows = json.loads(args.input.read_text(encoding="utf-8"))
    try:
        filled = substitute_identity(rows, args.name, args.author)
    except ValueError as err:
        parser.error(str(err))
    args.output.write_text(dump_rows(filled), encoding="utf-8")
    print(f"wrote {len(filled)} rows to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
