"""utils/folders.py: what may be replaced, staging and one-rename replacement, crash leftovers."""

from __future__ import annotations

import pytest

from log_capture import LogRecords
from tuneforge.errors import ConfigError
from tuneforge.utils import folders


def test_check_replaceable_rules(tmp_path):
    target = tmp_path / "export"
    folders.check_replaceable(target, "merged model export", "export_dir")  # new: fine
    target.mkdir()
    folders.check_replaceable(target, "merged model export", "export_dir")  # empty: fine
    (target / "model.safetensors").write_bytes(b"w")
    (target / "sub").mkdir()
    (target / "sub" / "x.json").write_text("{}")
    folders.write_marker(target, "merged model export")
    folders.check_replaceable(target, "merged model export", "export_dir")  # its own previous write: fine
    with pytest.raises(ConfigError, match=r"holds a tuneforge merged model export, not a gguf export"):
        folders.check_replaceable(target, "gguf export", "export_dir")
    (target / "sub" / "mine.txt").write_text("user file")
    with pytest.raises(ConfigError, match=r"plus files it did not write: sub/mine.txt \(1 entry\)"):
        folders.check_replaceable(target, "merged model export", "export_dir")
    with pytest.raises(ConfigError, match=r"contains the output folder"):
        folders.check_replaceable(tmp_path, "merged model export", "export_dir", {"output folder": target / "sub"})


def test_many_entries_are_summarised(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"it holds f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 3 more \(8 entries\)"):
        folders.check_replaceable(tmp_path, "merged model export", "export_dir")


def test_replace_folder_and_leftovers(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = folders.make_staging(target)
    assert staging.parent == tmp_path and staging.name.startswith(".out.tuneforge-staging-")
    (staging / "new.txt").write_text("new")
    folders.replace_folder(staging, target)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "new.txt").read_text() == "new"

    # a crash between the two renames: the old folder is put back by the next write's cleanup
    old = tmp_path / ".out.tuneforge-old-123"
    target.rename(old)
    (tmp_path / ".out.tuneforge-staging-abc").mkdir()
    with LogRecords("tuneforge") as records:
        folders.clean_leftovers(target)
    assert (target / "new.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert records.messages == [
        f"removed {tmp_path / '.out.tuneforge-staging-abc'}, the staging folder of an interrupted write of {target}",
        f"restored {target} from {old} (a replacement was interrupted)",
    ]


def test_committed_files_replace_stale_weights(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"other kind: kept")
    (tmp_path / "notes.txt").write_text("kept")
    staging = tmp_path / folders.SAVING_DIRNAME
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"new")
    folders.commit_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_model.safetensors", "model.safetensors", "notes.txt"]
