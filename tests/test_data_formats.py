"""alpaca / sharegpt / openai rows -> Conversation, and bad rows -> RowError with the row named."""

from __future__ import annotations

import pytest

from tuneforge.data.formats import Conversation, Message, RowError, convert_row
from tuneforge.data.registry import parse_entry
from tuneforge.errors import DataError


def spec(**entry):
    entry.setdefault("file_name", "x.json")
    return parse_entry("demo", entry, None, None)


U, A = "user", "assistant"


# ------------------------------------------------------------------------------------ alpaca
@pytest.mark.parametrize(
    "row, user_text",
    [
        ({"instruction": "Translate", "input": "hello", "output": "你好"}, "Translate\nhello"),
        ({"instruction": "Translate", "input": "", "output": "你好"}, "Translate"),
        ({"instruction": "Translate", "output": "你好"}, "Translate"),
        ({"instruction": "", "input": "hello", "output": "你好"}, "hello"),
        ({"instruction": "Translate", "input": None, "output": "你好"}, "Translate"),
    ],
)
def test_alpaca_instruction_and_input_join_without_stray_newline(row, user_text):
    conv = convert_row(row, spec(), "f.json row 1")
    assert conv == Conversation(messages=(Message(U, user_text), Message(A, "你好")), source="f.json row 1")


def test_alpaca_history_system_and_tools():
    entry = spec(columns={"history": "history", "system": "system", "tools": "tools"})
    row = {
        "instruction": "q3", "input": "", "output": "a3", "system": "Be brief.",
        "history": [["q1", "a1"], ["q2", "a2"]], "tools": [{"name": "f"}],
    }
    conv = convert_row(row, entry, "s")
    assert [(m.role, m.content) for m in conv.messages] == [
        (U, "q1"), (A, "a1"), (U, "q2"), (A, "a2"), (U, "q3"), (A, "a3")]
    assert conv.system == "Be brief."
    assert conv.tools == '[{"name": "f"}]'


def test_alpaca_system_column_ignored_unless_mapped():
    conv = convert_row({"instruction": "q", "output": "a", "system": "S"}, spec(), "s")
    assert conv.system == ""


def test_alpaca_ranking_and_kto():
    ranked = spec(ranking=True, columns={"chosen": "chosen", "rejected": "rejected"})
    conv = convert_row({"instruction": "q", "input": "i", "chosen": "good", "rejected": "bad"}, ranked, "s")
    assert conv.messages == (Message(U, "q\ni"),)
    assert conv.chosen == Message(A, "good") and conv.rejected == Message(A, "bad")
    kto = spec(columns={"kto_tag": "label"})
    assert convert_row({"instruction": "q", "output": "a", "label": False}, kto, "s").kto_tag is False


def test_alpaca_errors_name_row_and_problem():
    with pytest.raises(RowError) as err:
        convert_row({"question": "q", "answer": "a"}, spec(), "data/f.json row 7")
    assert str(err.value) == "data/f.json row 7: no column 'instruction' or 'input' (row has keys 'question', 'answer')"
    assert isinstance(err.value, DataError)
    with pytest.raises(RowError, match=r"row 2: column 'output' must be a string, found int 5"):
        convert_row({"instruction": "q", "output": 5}, spec(), "row 2")
    with pytest.raises(RowError, match=r"history\[0\] must be a \[prompt, response\] pair"):
        convert_row({"instruction": "q", "output": "a", "h": [["only one"]]}, spec(columns={"history": "h"}), "r")
    with pytest.raises(RowError, match="ranking row needs string columns 'chosen'"):
        convert_row({"instruction": "q", "chosen": "x"}, spec(ranking=True, columns={"chosen": "chosen",
                                                                                      "rejected": "rejected"}), "r")


# ------------------------------------------------------------------------------------ sharegpt
def sg(*turns):
    return [{"from": f, "value": v} for f, v in turns]


def test_sharegpt_roles_and_leading_system():
    row = {"conversations": sg(("system", "S"), ("human", "hi"), ("gpt", "yo"), ("human", "call"),
                               ("function_call", "{}"), ("observation", "42"), ("gpt", "It is 42"))}
    conv = convert_row(row, spec(formatting="sharegpt"), "s")
    assert conv.system == "S"
    assert [m.role for m in conv.messages] == [U, A, U, "function", "observation", A]


def test_sharegpt_system_column_used_without_leading_system_message():
    entry = spec(formatting="sharegpt", columns={"system": "sys"})
    conv = convert_row({"conversations": sg(("human", "hi"), ("gpt", "yo")), "sys": "col"}, entry, "s")
    assert conv.system == "col"


def test_sharegpt_alternation_error_names_row_and_position():
    row = {"conversations": sg(("human", "a"), ("human", "b"))}
    with pytest.raises(RowError) as err:
        convert_row(row, spec(formatting="sharegpt"), "data/chat.json row 3")
    assert str(err.value) == (
        "data/chat.json row 3: message 1 has role 'user' but roles must alternate: user/observation at even "
        "positions, assistant/function at odd positions (0-based, after a leading system message)")


def test_sharegpt_must_end_with_assistant_and_tags_are_checked():
    with pytest.raises(RowError, match="row 4: the last message \\(#0\\) is a 'user' turn"):
        convert_row({"conversations": sg(("human", "a"))}, spec(formatting="sharegpt"), "row 4")
    with pytest.raises(RowError, match="message 1 has unknown role 'bot'; expected one of 'human', 'gpt'"):
        convert_row({"conversations": sg(("human", "a"), ("bot", "b"))}, spec(formatting="sharegpt"), "r")
    with pytest.raises(RowError, match="column 'conversations' must be a list of messages, found missing"):
        convert_row({"messages": []}, spec(formatting="sharegpt"), "r")


def test_sharegpt_custom_partial_tags_keep_defaults():
    entry = spec(formatting="sharegpt", tags={"user_tag": "user", "assistant_tag": "bot"})
    conv = convert_row({"conversations": sg(("user", "a"), ("bot", "b"))}, entry, "s")
    assert conv.messages == (Message(U, "a"), Message(A, "b"))


def test_sharegpt_ranking():
    entry = spec(formatting="sharegpt", ranking=True, columns={"chosen": "chosen", "rejected": "rejected"})
    row = {"conversations": sg(("human", "q")), "chosen": {"from": "gpt", "value": "good"},
           "rejected": {"from": "gpt", "value": "bad"}}
    conv = convert_row(row, entry, "s")
    assert conv.messages == (Message(U, "q"),)
    assert (conv.chosen, conv.rejected) == (Message(A, "good"), Message(A, "bad"))
    row["rejected"] = {"from": "human", "value": "bad"}
    with pytest.raises(RowError, match="column 'rejected' \\(rejected\\) must be an assistant/function message"):
        convert_row(row, entry, "s")


# ------------------------------------------------------------------------------------ openai
def test_openai_messages_system_and_tool_calls():
    row = {"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "warm"},
        {"role": "assistant", "content": "Sunny and warm."},
    ], "tools": [{"name": "w"}]}
    conv = convert_row(row, spec(formatting="openai", columns={"tools": "tools"}), "s")
    assert conv.system == "S"
    assert conv.messages == (
        Message(U, "weather?"),
        Message("function", '[{"name": "w", "arguments": "{}"}]'),
        Message("observation", "sunny\n</tool_response>\n<tool_response>\nwarm"),
        Message(A, "Sunny and warm."),
    )
    assert conv.tools == '[{"name": "w"}]'


def test_openai_alternation_error():
    row = {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}
    with pytest.raises(RowError, match="row 9: message 0 has role 'assistant'"):
        convert_row(row, spec(formatting="openai"), "row 9")


def test_non_object_row():
    with pytest.raises(RowError, match="r: expected an object .*found 'text'"):
        convert_row("text", spec(), "r")


# ------------------------------------------------------------------------------------ missing / empty text
@pytest.mark.parametrize("entry, row, problem", [
    ({"formatting": "sharegpt"}, {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]},
     "message 1 (gpt): its 'value' (content_tag) is missing (the message has keys 'from')"),
    ({"formatting": "sharegpt"}, {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "a"}]},
     "message 0 (human): its 'value' (content_tag) is null"),
    ({"formatting": "openai"}, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
     "message 1 (assistant): its 'content' (content_tag) is null"),
    ({"formatting": "sharegpt", "ranking": True, "columns": {"chosen": "chosen", "rejected": "rejected"}},
     {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
      "rejected": {"from": "gpt", "value": None}},
     "column 'rejected' (gpt): its 'value' (content_tag) is null"),
], ids=["sharegpt-missing", "sharegpt-null", "openai-null", "ranking-answer-null"])
def test_message_with_missing_or_null_text_is_a_bad_row(entry, row, problem):
    """Before: the missing text became "" and the turn was trained as end-of-sequence only."""
    with pytest.raises(RowError) as err:
        convert_row(row, spec(**entry), "data/chat.json row 4")
    assert str(err.value) == f"data/chat.json row 4: {problem}"


def test_openai_tool_call_turn_may_have_null_content():
    row = {"messages": [{"role": "user", "content": "weather?"},
                        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "w"}}]},
                        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
    conv = convert_row(row, spec(formatting="openai"), "s")
    assert conv.messages[1] == Message("function", '[{"name": "w"}]')


@pytest.mark.parametrize("entry, row, turn", [
    ({}, {"instruction": "", "input": "", "output": ""}, ""),
    ({}, {"instruction": "  ", "input": "\n", "output": " \t"}, ""),
    ({"columns": {"prompt": "text"}}, {"text": "   "}, ""),  # pretraining text / prompt-only row, no answer
    ({"ranking": True, "columns": {"chosen": "chosen", "rejected": "rejected"}},
     {"instruction": "", "chosen": " ", "rejected": ""}, ""),
    ({"formatting": "sharegpt"}, {"conversations": sg(("human", "hi"), ("gpt", "yo"), ("human", " "), ("gpt", ""))},
     "turn 2 of 2: "),
    ({"columns": {"history": "history"}}, {"instruction": "q", "output": "a", "history": [["", " "]]}, "turn 1 of 2: "),
], ids=["alpaca-empty", "alpaca-whitespace", "text-only", "ranking", "sharegpt-second-turn", "alpaca-history"])
def test_empty_prompt_and_answer_is_a_bad_row(entry, row, turn):
    """Before: such a row was trained on its end-of-sequence token only."""
    with pytest.raises(RowError) as err:
        convert_row(row, spec(**entry), "data/f.json row 2")
    assert str(err.value) == (
        f"data/f.json row 2: {turn}the prompt and the answer are both empty or whitespace; nothing to train on")


@pytest.mark.parametrize("row", [
    {"instruction": "Say nothing.", "input": "", "output": ""},  # an empty answer alone: kept (predict, ppo)
    {"instruction": "", "input": "", "output": "An answer to no question."},
    {"instruction": "Only a prompt"},
])
def test_one_empty_side_is_kept(row):
    assert convert_row(row, spec(), "s").messages[0].role == U
