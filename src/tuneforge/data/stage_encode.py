"""Per-stage row encoders of the data pipeline: a run of rows -> columns, with what happened in a report.

Every encoder has one signature, `encode(items, template, tokenizer, data, report, split) -> dict[str, list]`,
and looks at nothing but the rows it is given: `data/workers.py` runs it over contiguous shards in worker
processes (`preprocessing_num_workers`) and merges columns and reports in order, which gives exactly what
one process gives. Whatever needs the whole split (KTO's mismatched answers, pt's blocks, notes) is done by
`pipeline.build_split` before or after.

items: `(dataset name, Conversation)`; for kto `(name, Conversation, mismatched answer Message)`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from tuneforge.config.args import DataArguments
from tuneforge.data import encode as encoding
from tuneforge.data.arrow_files import WRITE_CHUNK, row_chunks
from tuneforge.data.formats import Message
from tuneforge.data.report import DataReport
from tuneforge.errors import DataError

# Columns of an encoded sample per data kind (config/stages.py; input_ids / labels first, so previews work
# for every stage).
KIND_COLUMNS = {
    "text": ("input_ids", "labels"),
    "supervised": ("input_ids", "labels"),
    "pairwise": ("input_ids", "labels", "rejected_input_ids", "rejected_labels"),  # input_ids/labels: chosen
    "feedback": ("input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tag"),
    "prompt": ("input_ids", "labels"),  # labels: the reference answer's ids, not aligned with input_ids
}


FIRST_CHUNK = 256  # rows of the first chunk `encode_sft_chunks` tokenizes (the others: WRITE_CHUNK)
_CUT_IMAGE = "longer than cutoff_len ({}) and has images (not cut: raise cutoff_len)"


def _with_image_column(columns: dict[str, list], items) -> dict[str, list]:
    """`columns` plus an `images` column when the rows are a vision-language model's (data/media.py gives each
    such row an `images` tuple; other runs' rows have None)."""
    if any(item[1].images is not None for item in items):
        columns["images"] = []
    return columns


def _keep_images(columns: dict[str, list], conv) -> None:
    if "images" in columns:
        columns["images"].append(list(conv.images or ()))


def _drop_cut_image(result, conv, data) -> None:
    """A cut sample with images is dropped: a cut image fails in LF's training (sft, pairwise, feedback)."""
    if result.truncated and conv.images and not result.dropped:
        result.dropped = _CUT_IMAGE.format(data.cutoff_len)


def features(kind: str = "supervised", images: bool = False):
    """The encoded columns of a kind; `images`: sft / pairwise / feedback / prompt samples of a vision-language
    model's run also keep their image files' paths (data/media.py)."""
    from datasets import Features, List, Value

    columns = {name: Value("bool") if name == "kto_tag" else List(Value("int32")) for name in KIND_COLUMNS[kind]}
    return Features({**columns, **({"images": List(Value("string"))} if images else {})})


def encoded_features(kind: str = "supervised", images: bool = False):
    """The columns a kind's row encoder returns: pt's are whole documents (cut into blocks afterwards)."""
    from datasets import Features, List, Value

    return Features({"documents": List(Value("int32"))}) if kind == "text" else features(kind, images)


def encode_row(report: DataReport, name: str, conv, split, encode, *args):
    """`encode(*args)`, or None when the template cannot encode the row (e.g. a role it has no format for):
    the row is reported as dropped with its source and the reason, and the others go on."""
    try:
        return encode(*args)
    except DataError as err:
        report.dropped(name, "the template cannot encode this row", f"{conv.source} ({err})", split)
        return None


def record(report: DataReport, name: str, conv, result, split) -> bool:
    """Report a dropped / truncated encoding; True when the sample is kept."""
    if result.dropped:
        detail = f" ({result.full_length} tokens)" if result.full_length else ""
        report.dropped(name, result.dropped, conv.source + detail, split)
        return False
    if result.truncated:
        report.truncated(name, f"{conv.source} ({result.full_length} tokens)", split)
    return True


def encode_sft_rows(items, template, tokenizer, data, report: DataReport, split) -> dict[str, list]:
    """All of `items` as one set of columns (see `encode_sft_chunks`)."""
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    for chunk in encode_sft_chunks(items, template, tokenizer, data, report, split):
        for key, values in chunk.items():
            columns.setdefault(key, []).extend(values)
    return columns


def encode_sft_chunks(items, template, tokenizer, data, report: DataReport, split) -> Iterator[dict[str, list]]:
    """The rows' columns, `WRITE_CHUNK` rows at a time (`items`: a list, or an iterable read as it goes). A chunk's
    rows are rendered one by one and their texts tokenized in one batch call to the fast tokenizer (the same ids as
    one call per text, tests/test_encode_batched.py).
    That call runs in a helper thread -- the Rust tokenizer releases the GIL -- so while it works on one chunk, this
    thread renders the next one and assembles (and its caller writes) the one before."""
    tokenize = texts_tokenizer(tokenizer)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-tokenize") as helper:
        pending = None  # (rows, their pieces, the future token table of their texts)
        # a small first chunk: the tokenizer starts after ~10 ms of rendering instead of ~100 ms
        for rows in row_chunks(items, WRITE_CHUNK, first=FIRST_CHUNK):
            pieces = [encode_row(report, name, conv, split, encoding.sft_pieces, conv, template, tokenizer, data)
                      for name, conv in rows]
            texts = [piece for row in pieces if isinstance(row, list) for message in row for piece in message
                     if isinstance(piece, str)]
            submitted = (rows, pieces, helper.submit(tokenize, texts))
            if pending is not None:
                yield _assemble_sft(*pending, template, tokenizer, data, report, split)
            pending = submitted
        if pending is not None:
            yield _assemble_sft(*pending, template, tokenizer, data, report, split)


encode_sft_rows.in_chunks = encode_sft_chunks  # data/workers.py writes each chunk as it comes


def _assemble_sft(rows, pieces, token_table, template, tokenizer, data, report: DataReport, split) -> dict[str, list]:
    encode = token_table.result().__getitem__
    columns = _with_image_column({"input_ids": [], "labels": []}, rows)
    for (name, conv), row in zip(rows, pieces):
        if row is None:
            continue
        result = row if isinstance(row, encoding.SftEncoding) else \
            encoding.encode_sft_pieces(row, encode, template, tokenizer, data)
        _drop_cut_image(result, conv, data)
        if not record(report, name, conv, result, split):
            continue
        report.kept(name, result.input_ids, result.labels, split, result.trained_tokens)
        columns["input_ids"].append(result.input_ids)
        columns["labels"].append(result.labels)
        _keep_images(columns, conv)
    return columns


def texts_tokenizer(tokenizer):
    """`tokenize(texts) -> {text: tokenizer.encode(text, add_special_tokens=False)}` for every distinct text, in one
    batch call; safe to call from another thread (the tokenizer's one-time settings are made here, on this one)."""
    tokenizer("", add_special_tokens=False)  # sets the backend's truncation / padding / special-token state
    backend = _plain_backend(tokenizer)

    def tokenize(texts: list[str]) -> dict[str, list[int]]:
        unique = list(dict.fromkeys(texts))
        if not unique:
            return {}
        if backend is not None:  # the Rust call the tokenizer makes, without building a BatchEncoding (~15% faster)
            return dict(zip(unique, (done.ids for done in backend.encode_batch_fast(unique, add_special_tokens=False))))
        encoded = tokenizer(unique, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        return dict(zip(unique, encoded["input_ids"]))

    return tokenize


def _plain_backend(tokenizer):
    """The `tokenizers.Tokenizer` behind a fast tokenizer whose class encodes text with the base class's own call
    (no override that changes the text or ids first), or None."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    backend, kind = getattr(tokenizer, "_tokenizer", None), type(tokenizer)
    if (not isinstance(tokenizer, TokenizersBackend) or not hasattr(backend, "encode_batch_fast")
            or kind._encode_plus is not TokenizersBackend._encode_plus or kind.__call__ is not TokenizersBackend.__call__):
        return None
    return backend


def encode_pairwise_rows(items, template, tokenizer, data, report: DataReport, split) -> dict[str, list]:
    columns = _with_image_column({name: [] for name in KIND_COLUMNS["pairwise"]}, items)
    for name, conv in items:
        result = encode_row(report, name, conv, split,
                            encoding.encode_pairwise_with_info, conv, template, tokenizer, data)
        if result is not None:
            _drop_cut_image(result, conv, data)
        if result is None or not record(report, name, conv, result, split):
            continue
        # the report counts both answers: tokens of prompt+chosen and prompt+rejected
        report.kept(name, result.input_ids + result.rejected_input_ids, result.labels + result.rejected_labels, split)
        for key in KIND_COLUMNS["pairwise"]:
            columns[key].append(getattr(result, key))
        _keep_images(columns, conv)
    return columns


def feedback_items(mixed, data: DataArguments) -> list[tuple]:
    """kto rows with their mismatched (KL) answer: every row's last message, as an assistant answer, is a
    neighbour's (LF: within each preprocessing batch, see `encode.kl_answers`)."""
    answers = [Message("assistant", conv.messages[-1].content if conv.messages else "") for _, conv in mixed]
    kl = encoding.kl_answers(answers, data.preprocessing_batch_size)
    return [(name, conv, kl_answer) for (name, conv), kl_answer in zip(mixed, kl)]


def encode_feedback_rows(items, template, tokenizer, data, report: DataReport, split) -> dict[str, list]:
    """kto samples; a vision-language model's keep their images (the KL sequence shows the same ones, as in LF)."""
    columns = _with_image_column({name: [] for name in KIND_COLUMNS["feedback"]}, items)
    for name, conv, kl_answer in items:
        result = encode_row(report, name, conv, split,
                            encoding.encode_feedback_with_info, conv, kl_answer, template, tokenizer, data)
        if result is not None:
            _drop_cut_image(result, conv, data)
        if result is None or not record(report, name, conv, result, split):
            continue
        report.kept(name, result.input_ids, result.labels, split)
        for key in KIND_COLUMNS["feedback"]:
            columns[key].append(getattr(result, key))
        _keep_images(columns, conv)
    return columns


def feedback_note(tags: list[bool], split) -> str | None:
    desirable = sum(1 for tag in tags if tag)
    undesirable = len(tags) - desirable
    if not desirable + undesirable:
        return None
    return (f"{split}: kto samples: {desirable} desirable, {undesirable} undesirable"
            + ("" if desirable and undesirable else " (only one kind: KTO needs both to learn well)"))


def encode_prompt_rows(items, template, tokenizer, data, report: DataReport, split) -> dict[str, list]:
    columns = _with_image_column({"input_ids": [], "labels": []}, items)
    for name, conv in items:
        result = encode_row(report, name, conv, split, encoding.encode_prompt_only, conv, template, tokenizer, data)
        if result is None:
            continue
        if not result["input_ids"]:
            report.dropped(name, "no prompt", conv.source, split)
            continue
        if result["prompt_cut"] and conv.images:
            report.dropped(name, _CUT_IMAGE.format(data.cutoff_len), conv.source, split)
            continue
        stats = report.stats(name, split)
        stats.kept += 1
        stats.tokens += len(result["input_ids"])
        columns["input_ids"].append(result["input_ids"])
        columns["labels"].append(result["labels"])
        _keep_images(columns, conv)
    return columns


def tokenize_pt_rows(items, template, tokenizer, data, report: DataReport, split) -> dict[str, list]:
    """Stage pt: each document's ids (+ bos / eos); `pt_block_chunks` cuts them into blocks once all shards are in."""
    names, texts = [], []
    for name, conv in items:
        text = conv.messages[0].content if conv.messages else ""
        if not text.strip():
            report.dropped(name, "empty text", conv.source, split)
            continue
        report.stats(name, split).kept += 1
        names.append(name)
        texts.append(text)
    documents = encoding.tokenize_documents(texts, tokenizer)
    for name, document in zip(names, documents):
        report.stats(name, split).tokens += len(document)
        report.stats(name, split).trained_tokens += len(document)
    return {"documents": documents}


def pt_blocks(documents: list[list[int]], data: DataArguments) -> dict[str, list]:
    blocks = encoding.pack_blocks(documents, data.cutoff_len, data.packing is not False)
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


def pt_block_chunks(document_batches, data: DataArguments):
    """`pt_blocks` of all the documents, fed a batch of documents at a time and yielded a chunk of blocks at a time
    (the tokens that do not fill a block yet wait for the next batch): the same blocks in bounded memory."""
    if data.packing is False:
        for documents in document_batches:
            yield pt_blocks(documents, data)
        return
    cutoff_len, waiting = data.cutoff_len, []
    for documents in document_batches:
        stream = waiting + [token for document in documents for token in document]
        full = len(stream) - len(stream) % cutoff_len
        waiting = stream[full:]
        yield pt_blocks([stream[:full]], data)
    if waiting:
        yield pt_blocks([waiting], data)


ROW_ENCODERS = {  # data kind -> encoder
    "text": tokenize_pt_rows,
    "supervised": encode_sft_rows,
    "pairwise": encode_pairwise_rows,
    "feedback": encode_feedback_rows,
    "prompt": encode_prompt_rows,
}
