"""The data cache key's tokenizer part (data/split_cache.py): the whole fast tokenizer, not only its vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys

from tuneforge.data.split_cache import _tokenizer_fingerprint


def _load(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_same_vocabulary_other_pre_tokenizer_is_another_key(tmp_path, tiny_tokenizer_dir):
    other = tmp_path / "other"
    other.mkdir()
    for file in tiny_tokenizer_dir.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True  # "Hi" -> " Hi": other ids from the same vocabulary
    (other / "tokenizer.json").write_text(json.dumps(spec))
    base, changed = _load(tiny_tokenizer_dir), _load(other)
    assert base.get_vocab() == changed.get_vocab() and base("Hi")["input_ids"] != changed("Hi")["input_ids"]
    assert _tokenizer_fingerprint(base)[2] != _tokenizer_fingerprint(changed)[2]  # [1], the path, differs anyway


def test_per_call_settings_do_not_change_the_key(tiny_tokenizer_dir):
    tokenizer = _load(tiny_tokenizer_dir)
    before = _tokenizer_fingerprint(tokenizer)
    tokenizer(["a", "bb"], truncation=True, max_length=4, padding="max_length")  # leaves truncation / padding set
    assert tokenizer.backend_tokenizer.truncation is not None
    assert _tokenizer_fingerprint(tokenizer) == before


def test_the_key_is_the_same_in_another_process(tiny_tokenizer_dir):
    code = ("import sys; from transformers import AutoTokenizer; from tuneforge.data.split_cache import "
            "_tokenizer_fingerprint as f; print(f(AutoTokenizer.from_pretrained(sys.argv[1]))[2])")
    other = subprocess.run([sys.executable, "-c", code, str(tiny_tokenizer_dir)], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert other == _tokenizer_fingerprint(_load(tiny_tokenizer_dir))[2]
