"""Multiple-choice evaluation (`tuneforge eval x.yaml`, evaluate/mcq.py + mcq_data.py): task layouts, LF's prompt,
the letter read from the logits, scores per subject / category / average."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from tuneforge.errors import ConfigError, DataError
from tuneforge.evaluate.mcq import format_messages, score_lines
from tuneforge.evaluate.mcq_data import TaskFolder, parse_task, read_mcq_csv

ROW = {"question": "What is 2 + 2?", "A": "3", "B": "4", "C": "5", "D": "6", "answer": "B"}


def test_three_csv_layouts_and_bad_rows():
    mmlu = read_mcq_csv("What is 2 + 2?,3,4,5,6,B\nSky?,red,blue,green,pink,B\n", "mmlu.csv")
    ceval = read_mcq_csv("id,question,A,B,C,D,answer,explanation\n0,What is 2 + 2?,3,4,5,6,B,because\n", "c.csv")
    cmmlu = read_mcq_csv(",Question,A,B,C,D,Answer\n0,What is 2 + 2?,3,4,5,6,B\n", "cm.csv")
    assert mmlu[0] == ceval[0] == cmmlu[0] == ROW and len(mmlu) == 2  # MMLU files have no header: every row counts
    with pytest.raises(DataError, match=r"bad.csv, row 2: answer 'E'; expected one of A, B, C, D"):
        read_mcq_csv("question,A,B,C,D,answer\nq,1,2,3,4,E\n", "bad.csv")
    with pytest.raises(DataError, match=r"short.csv, row 1: 3 columns"):
        read_mcq_csv("q,1,2\n", "short.csv")


def test_task_names_and_folders(tmp_path):
    assert parse_task("mmlu_test") == ("mmlu", "test") and parse_task("ceval_validation") == ("ceval", "validation")
    with pytest.raises(ConfigError, match="not `<name>_<split>`"):
        parse_task("mmlu")
    with pytest.raises(ConfigError, match="does not exist"):
        TaskFolder(tmp_path, "mmlu")
    (tmp_path / "mmlu").mkdir()
    with pytest.raises(ConfigError, match="mapping.json is missing"):
        TaskFolder(tmp_path, "mmlu")
    (tmp_path / "mmlu" / "mapping.json").write_text(json.dumps({"algebra": {"name": "algebra", "category": "STEM"}}))
    with zipfile.ZipFile(tmp_path / "mmlu" / "mmlu.zip", "w") as archive:  # LF's evaluation/mmlu/mmlu.zip layout
        archive.writestr("data/dev/algebra_dev.csv", "q1,1,2,3,4,A\n")
        archive.writestr("data/test/algebra_test.csv", "What is 2 + 2?,3,4,5,6,B\n")
    folder = TaskFolder(tmp_path, "mmlu")
    assert folder.rows("algebra", "test") == [ROW] and folder.rows("algebra", "train")[0]["answer"] == "A"
    with pytest.raises(DataError, match="no val file for subject 'algebra'"):
        folder.rows("algebra", "validation")


def test_prompt_is_llamafactorys():
    support = [{"question": "1 + 1?", "A": "2", "B": "3", "C": "4", "D": "5", "answer": "A"}]
    assert format_messages(ROW, support, "math", "en") == [
        {"role": "user", "content": "The following are multiple choice questions (with answers) about math.\n\n"
                                    "1 + 1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"},
        {"role": "assistant", "content": "B"}]
    zh = format_messages(ROW, [], "数学", "zh")
    assert zh[0]["content"] == "以下是中国关于数学考试的单项选择题，请选出其中的正确答案。\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\n答案："


class AnswerKeyModel(torch.nn.Module):
    """A model constructed so that a chosen letter wins: the last `key=X` in each (left-padded) prompt."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep=0):
        from types import SimpleNamespace

        logits = torch.zeros(input_ids.shape[0], 1, len(self.tokenizer))
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            assert mask[-1] == 1 and position_ids[row, -1] == mask.sum() - 1  # left padding, positions from 0
            text = self.tokenizer.decode(ids[mask.bool()])
            letter = text.rsplit("key=", 1)[1][0]
            logits[row, 0, self.tokenizer.encode(letter, add_special_tokens=False)[-1]] = 5.0
        return SimpleNamespace(logits=logits)


def _task(root, keys_by_subject):
    folder = root / "evaluation" / "quiz"
    (folder / "dev").mkdir(parents=True)
    (folder / "test").mkdir()
    mapping = {"algebra": {"name": "algebra", "category": "STEM"}, "history": {"name": "history", "category": "Humanities"}}
    (folder / "mapping.json").write_text(json.dumps(mapping))
    for subject, (answers, keys) in keys_by_subject.items():
        (folder / "dev" / f"{subject}_dev.csv").write_text("".join(f"dev {i} key=A,1,2,3,4,A\n" for i in range(3)))
        (folder / "test" / f"{subject}_test.csv").write_text(
            "".join(f"question {i} key={key},1,2,3,4,{answer}\n" for i, (answer, key) in enumerate(zip(answers, keys))))


def test_forced_answers_score_exactly(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    import tuneforge.model as model_package
    from tuneforge.cli.main import main
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    _task(tmp_path, {"algebra": ("BCDA", "BCDA"), "history": ("ABCD", "ABAB")})  # 4/4 right, 2/4 right
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model_package, "load_model", lambda *a, **k: AnswerKeyModel(tokenizer))
    args = ["eval", f"model_name_or_path={tiny_llama_dir}", "task=quiz_test", "template=fewshot", "n_shot=2",
            "batch_size=3", "save_dir=out"]
    assert main(args) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["subjects"]["algebra"]["accuracy"] == 1.0 and scores["subjects"]["history"]["accuracy"] == 0.5
    assert scores["categories"] == {"STEM": {"correct": 4, "total": 4, "accuracy": 1.0},
                                    "Humanities": {"correct": 2, "total": 4, "accuracy": 0.5}}
    assert scores["average"] == {"correct": 6, "total": 8, "accuracy": 0.75}
    assert json.loads((tmp_path / "out" / "results.json").read_text())["history"] == {"0": "A", "1": "B", "2": "A", "3": "B"}
    log = (tmp_path / "out" / "results.log").read_text()
    assert log == score_lines(scores) == "        Average: 75.00\n           STEM: 100.00\n     Humanities: 50.00"
    assert log in capsys.readouterr().out
    assert main(args) == 2  # save_dir must be new, as in LLaMA-Factory
    assert "save_dir: out already exists and is not empty" in capsys.readouterr().err


def test_real_tiny_model_runs_the_shipped_sample_task(repo_root, tiny_llama_dir, monkeypatch, tmp_path, capsys):
    from tuneforge.cli.main import main

    monkeypatch.chdir(repo_root)
    assert main(["eval", "examples/demo_mcq_eval.yaml", f"model_name_or_path={tiny_llama_dir}", "task=demozh_test",
                 "lang=zh", "n_shot=1", f"save_dir={tmp_path / 'zh'}"]) == 0
    scores = json.loads((tmp_path / "zh" / "scores.json").read_text())
    assert scores["average"]["total"] == 24 and set(scores["categories"]) == {"STEM", "Social Sciences", "Humanities"}
    assert "Average:" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("lang=fr", "`lang` is 'fr'; expected en or zh"),
    ("n_shot=-1", "`n_shot` must be >= 0"),
    ("download_mode=force_redownload", "nothing is downloaded"),
])
def test_bad_evaluation_keys(override, message, capsys):
    from tuneforge.cli.main import main

    assert main(["eval", "model_name_or_path=x", "task=demo_test", override]) == 2
    assert message in capsys.readouterr().err
