"""Text models on the command line: tokenise with a HuggingFace tokenizer.json (optional extra `[text]`,
the `tokenizers` library), explain, and write per text OUT/<name>.tokens.html (tokens coloured by
relevance, self-contained), OUT/<name>.tokens.json (token, id, relevance) and OUT/<name>.relevance.npy.
A file of texts (one a line) is a resumable job: a text whose .tokens.json exists is skipped."""
from __future__ import annotations

import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import extras
from .errors import InputError, OnnxLrpError
from .files import save_atomic

TOKENIZER_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def load_tokenizer(path: str):
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise extras.missing("text", "--text", exc) from None
    if not Path(path).is_file():
        raise OnnxLrpError(f"tokenizer file '{path}' does not exist (a HuggingFace tokenizer.json)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exceptions
        raise OnnxLrpError(f"cannot read '{path}' as a HuggingFace tokenizer.json ({str(exc).splitlines()[0]})") from None


@dataclass
class Encoded:
    tokens: list[str]
    feeds: dict[str, np.ndarray]   # by the model's input names, batch of one


def encode(tokenizer, text: str, model_inputs: list[str], filled=None) -> Encoded:
    """The tokenizer's ids, mask and type ids for the model's inputs of those names; `filled(name)` says which
    other inputs the Explainer fills in itself (a decoder's positions and past: Explainer.decoder.fillable)."""
    encoding = tokenizer.encode(text)
    if not encoding.ids:
        raise InputError(f"the tokenizer made no tokens of {text!r}")
    if filled is not None:
        model_inputs = [name for name in model_inputs if name in TOKENIZER_INPUTS or not filled(name)]
    unknown = [name for name in model_inputs if name not in TOKENIZER_INPUTS]
    if unknown:
        raise InputError(f"the model also takes {unknown}; --text feeds only {sorted(TOKENIZER_INPUTS)}")
    feeds = {name: np.asarray([getattr(encoding, TOKENIZER_INPUTS[name])], np.int64) for name in model_inputs}
    return Encoded(tokens=list(encoding.tokens), feeds=feeds)


POSITIVE, NEGATIVE = "220, 40, 40", "40, 90, 220"   # red for the target, blue against it


def _colour(value: float, scale: float) -> str:
    strength = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    rgb = POSITIVE if value >= 0 else NEGATIVE
    return f"rgba({rgb}, {strength:.3f})"


def tokens_html(tokens: list[str], relevance: np.ndarray, title: str) -> str:
    scale = float(np.max(np.abs(relevance))) if relevance.size else 0.0
    spans = "".join(f'<span style="background:{_colour(float(r), scale)}" title="{float(r):.4g}">'
                    f"{html.escape(token)}</span> " for token, r in zip(tokens, relevance))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font:16px/2 sans-serif;margin:2em}span{padding:2px 3px;border-radius:3px}"
            ".key span{margin-right:1em}</style></head><body>"
            f"<h3>{html.escape(title)}</h3><p>{spans}</p>"
            "<p class='key'><span style='background:rgba(220,40,40,.8)'>for the target</span>"
            "<span style='background:rgba(40,90,220,.8)'>against it</span> (hover a token for its relevance)</p>"
            "</body></html>")


def ansi(tokens: list[str], relevance: np.ndarray) -> str:
    scale = float(np.max(np.abs(relevance))) or 1.0
    parts = []
    for token, r in zip(tokens, relevance):
        level = int(min(abs(float(r)) / scale, 1.0) * 4)
        colour = (196, 203, 210, 217, 224)[4 - level] if r >= 0 else (21, 27, 33, 39, 45)[4 - level]
        parts.append(f"\x1b[48;5;{colour}m{token}\x1b[0m" if level else token)
    return " ".join(parts)


def explain_texts(explainer, texts: list[tuple[str, str]], tokenizer, out: Path, target=None,
                  overwrite: bool = False, show: bool = True) -> tuple[int, int]:
    """Explain (name, text) pairs one by one; returns (done, skipped)."""
    compiled = explainer.compiled("logit")
    primary = next(iter(compiled.relevance_outputs))
    done = skipped = 0
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    iterator = tqdm(texts, unit="text", disable=len(texts) < 5 or not show) if tqdm else texts
    for name, text in iterator:
        if not overwrite and (out / f"{name}.tokens.json").exists():
            skipped += 1
            continue
        encoded = encode(tokenizer, text, compiled.inputs, explainer.decoder.fillable)
        res = explainer.explain(encoded.feeds, target=target)
        relevance = res.relevance[0]
        table = {"text": text, "target": int(np.ravel(res.target)[0]),
                 "position": None if res.position is None else int(res.position[0]),
                 "relevance_sum": float(relevance.sum()),
                 "tokens": [{"token": t, "id": int(i), "relevance": float(r)}
                            for t, i, r in zip(encoded.tokens, encoded.feeds[primary][0], relevance)]}
        save_atomic(out / f"{name}.relevance.npy", lambda p: np.save(open(p, "wb"), relevance))
        save_atomic(out / f"{name}.tokens.html",
                    lambda p: Path(p).write_text(tokens_html(encoded.tokens, relevance,
                                                             f"{name}: target {table['target']}"), "utf-8"))
        save_atomic(out / f"{name}.tokens.json", lambda p: Path(p).write_text(json.dumps(table, indent=1), "utf-8"))
        if show and sys.stdout.isatty():
            print(f"{name} (target {table['target']}): {ansi(encoded.tokens, relevance)}")
        done += 1
    return done, skipped


def read_texts(single: str | None, path: str | None) -> list[tuple[str, str]]:
    if single is not None:
        return [("text", single)]
    file = Path(path)
    if not file.is_file():
        raise OnnxLrpError(f"--texts file '{path}' does not exist")
    lines = [line.strip() for line in file.read_text("utf-8").splitlines()]
    return [(f"{file.stem}-{k:04d}", line) for k, line in enumerate(lines, 1) if line]
