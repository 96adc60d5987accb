"""One module per part of the page: model bar, Train, Evaluate, Chat, Export.

Each `create_*(ui, ctx)` adds its components to the `UI` registry (so the language switch can relabel
them) and wires its events; handlers are plain functions over values, reading the shared `AppContext`.
"""

from __future__ import annotations

import gradio as gr

from tuneforge.webui.i18n import text


class UI:
    """Components by key; `relabel(lang)` gives the updates that switch the interface language."""

    def __init__(self, lang: str, **params: str) -> None:
        self.lang = lang
        self.params = params  # filled into labels with `{placeholders}` (the output root)
        self.elems: dict[str, gr.components.Component | gr.Tab | gr.Accordion] = {}
        self.fields: dict[str, gr.components.Component] = {}  # keys of args.DEFAULTS -> input component
        self.choices: dict[str, list[tuple[str, str]]] = {}  # key -> [(label key, value)] of a relabelled choice

    def add(self, key: str, component, *, field: bool = False):
        self.elems[key] = component
        if field:
            self.fields[key] = component
        return component

    def choice_list(self, key: str, choices: list[tuple[str, str]], lang: str | None = None) -> list[tuple[str, str]]:
        """`[(label, value)]` for a Radio whose option labels follow the language (`[(label key, value)]`)."""
        self.choices[key] = choices
        return [(self.label(label_key, lang), value) for label_key, value in choices]

    def label(self, key: str, lang: str | None = None) -> str:
        label = text(key, lang or self.lang)
        return label.format(**self.params) if "{" in label else label

    def relabel(self, lang: str) -> list:
        updates = []
        for key, comp in self.elems.items():
            if isinstance(comp, (gr.Button, gr.Markdown)):
                updates.append(gr.update(value=self.label(key, lang)))
            elif key in self.choices:
                choices = self.choice_list(key, self.choices[key], lang)
                updates.append(gr.update(label=self.label(key, lang), choices=choices))
            else:
                updates.append(gr.update(label=self.label(key, lang)))
        return updates

    def values(self, data: dict) -> dict:
        """`{component: value}` (gradio's set-of-inputs form) -> `{field key: value}`."""
        return {key: data[comp] for key, comp in self.fields.items() if comp in data}


def error_text(err: BaseException, lang: str) -> str:
    """What a handler shows instead of a stuck spinner: a refusal in `lang`, the TuneforgeError message, or
    the exception."""
    from tuneforge.errors import TuneforgeError
    from tuneforge.webui.i18n import message
    from tuneforge.webui.safety import Refusal

    if isinstance(err, Refusal):
        detail = err.text(lang)
    else:
        detail = str(err) if isinstance(err, TuneforgeError) else f"{type(err).__name__}: {err}"
    return message("error", lang, message=detail)


def dataset_choices(folder: str, stage: str, selected: list[str] | None, lang: str):
    """(dropdown update, message) for the datasets of `folder` that fit `stage`, keeping the chosen ones
    that are still there; a broken dataset_info.json is reported and offers nothing."""
    from tuneforge.webui import args

    try:
        names = args.list_datasets(folder, stage)
    except Exception as err:
        return gr.update(choices=[], value=[]), error_text(err, lang)
    return gr.update(choices=names, value=[n for n in (selected or []) if n in names]), ""
