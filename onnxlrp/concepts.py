"""`onnxlrp concepts`: what a layer's channels stand for (CRP, onnxlrp.conditions).

- One input (`--top K`): the K channels of the layer with the highest concept relevance for the explained
  class, their shares, and a grid of their conditional heatmaps (OUT/<name>.concepts.png, .concepts.json,
  .concepts.npy).
- A data set (`--references N`, relevance maximisation): for every channel, the N inputs with the highest
  concept relevance, each with its conditional heatmap for that channel: OUT/channels/<c>.png and a
  self-contained page OUT/index.html (the concept atlas). The per-input concept relevance is kept in
  OUT/relevance/<name>.npy, so an interrupted job goes on where it stopped.
"""
from __future__ import annotations

import base64
import html
import io
import json
import sys
from pathlib import Path

import numpy as np

from .batch import Item
from .errors import OnnxLrpError
from .files import save_atomic
from .inputs import channels_last, load_input
from .pictures import grid, overlay, save_image


def _channel_axis(shape) -> int:
    return -1 if channels_last(shape) else 0


def _tiles(relevances, sample, shape):
    return [overlay(r, sample, _channel_axis(shape)) if np.ndim(sample) == 3 else None for r in relevances]


def top_concepts_of(explainer, item: Item, shape, layer: str, k: int, out: Path, target=None, mean=None,
                    std=None) -> dict:
    """The K most relevant channels of `layer` for one input, written as OUT/<key>.concepts.*."""
    sample = load_input(item.path, shape, mean=mean, std=std)
    x = sample[None]
    channels, shares = explainer.top_concepts(x, layer, k, target=target)
    channels, shares = channels[0], shares[0]
    conditional = explainer.explain(x, target=target, condition=[{layer: [int(c)]} for c in channels])
    relevance = conditional.relevance[0]             # [k, ...]
    plain = explainer.explain(x, target=target)
    explained = int(np.ravel(plain.target)[0]) if plain.target is not None else None
    table = {"input": str(item.path), "layer": layer, "target": explained,
             "concepts": [{"channel": int(c), "relevance_share": float(s)} for c, s in zip(channels, shares)]}
    save_atomic(out / f"{item.key}.concepts.npy", lambda tmp: np.save(open(tmp, "wb"), relevance))
    tiles = _tiles([plain.relevance[0]] + list(relevance), sample, shape)
    if tiles[0] is not None:
        labels = ["all"] + [f"ch {int(c)}: {s:+.1%}" for c, s in zip(channels, shares)]
        save_image(grid([tiles], labels), out / f"{item.key}.concepts.png")
    save_atomic(out / f"{item.key}.concepts.json", lambda tmp: Path(tmp).write_text(json.dumps(table, indent=1)))
    return table


def concept_atlas(explainer, items: list[Item], shape, layer: str, n: int, out: Path, target=None, mean=None,
                  std=None, batch_size: int = 16, show_progress: bool = True, overwrite: bool = False) -> Path:
    """Relevance maximisation over `items`: every channel's N reference inputs, a grid of their
    conditional heatmaps per channel, and OUT/index.html."""
    from tqdm import tqdm

    cache = out / "relevance"
    todo = [item for item in items if overwrite or not (cache / f"{item.key}.npy").exists()]
    bar = tqdm(total=len(todo), unit="input", desc="concept relevance", disable=not show_progress)
    for start in range(0, len(todo), batch_size):
        chunk, samples = [], []
        for item in todo[start:start + batch_size]:
            try:
                samples.append(load_input(item.path, shape, mean=mean, std=std))
                chunk.append(item)
            except OnnxLrpError as exc:   # reported and left out, as the explain job does
                print(f"error: {item.path}: {exc}", file=sys.stderr)
        bar.update(len(todo[start:start + batch_size]))
        if not chunk:
            continue
        x = np.stack(samples)
        shares = explainer.concept_relevance(x, layer, target=target)
        for item, row in zip(chunk, shares):
            save_atomic(cache / f"{item.key}.npy", lambda tmp, row=row: np.save(open(tmp, "wb"), row))
    bar.close()
    items = [item for item in items if (cache / f"{item.key}.npy").exists()]
    if not items:
        raise OnnxLrpError("none of the inputs could be read")
    table = np.stack([np.load(cache / f"{item.key}.npy") for item in items])      # [inputs, channels]
    n = min(n, len(items))
    references = np.argsort(-table, axis=0, kind="stable")[:n].T                    # [channels, n]
    pages = []
    bar = tqdm(total=len(references), unit="channel", desc="reference heatmaps", disable=not show_progress)
    for channel, chosen in enumerate(references):
        samples = [load_input(items[i].path, shape, mean=mean, std=std) for i in chosen]
        res = explainer.explain(np.stack(samples), target=target, condition={layer: [channel]})
        tiles = [overlay(r, s, _channel_axis(shape)) for r, s in zip(res.relevance, samples)] \
            if np.ndim(samples[0]) == 3 else []
        path = out / "channels" / f"{channel}.png"
        if tiles:
            save_image(grid([tiles], [f"{table[i, channel]:+.1%}" for i in chosen]), path)
        pages.append((channel, [(str(items[i].path), float(table[i, channel])) for i in chosen],
                      path if tiles else None))
        bar.update(1)
    bar.close()
    index = out / "index.html"
    save_atomic(index, lambda tmp: Path(tmp).write_text(_atlas_page(layer, pages), "utf-8"))
    save_atomic(out / "atlas.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"layer": layer, "channels": [{"channel": c, "references": [{"input": p, "relevance_share": s}
                                                                   for p, s in refs]} for c, refs, _ in pages]},
        indent=1)))
    return index


def _inline(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="references">'


def _atlas_page(layer: str, pages) -> str:
    rows = []
    for channel, refs, image in pages:
        names = "<br>".join(f"{html.escape(Path(p).name)} ({s:+.1%})" for p, s in refs)
        rows.append(f'<section id="ch{channel}"><h2>channel {channel}</h2>{_inline(image)}'
                    f"<p class='refs'>{names}</p></section>")
    links = " ".join(f'<a href="#ch{c}">{c}</a>' for c, _, _ in pages)
    buffer = io.StringIO()
    buffer.write("<!doctype html><html><head><meta charset='utf-8'><title>concept atlas: "
                 f"{html.escape(layer)}</title><style>body{{font:14px sans-serif;margin:2em}}"
                 "section{margin:1.5em 0;border-top:1px solid #ccc}img{image-rendering:pixelated;max-width:100%}"
                 ".refs{color:#555}nav a{margin-right:.4em}</style></head><body>")
    buffer.write(f"<h1>Concept atlas of layer {html.escape(layer)}</h1><p>Each channel with the inputs whose "
                 "concept relevance for it is highest (relevance maximisation), each shown with its conditional "
                 "heatmap: where that channel's relevance comes from (red for, blue against the explained class). "
                 f"The share under each is the channel's part of the layer's relevance.</p><nav>{links}</nav>")
    buffer.write("".join(rows))
    buffer.write("</body></html>")
    return buffer.getvalue()
