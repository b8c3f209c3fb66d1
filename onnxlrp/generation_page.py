"""An explained generation as files: OUT/generation.html (one self-contained page: the prompt and the answer
as tokens; hovering, focusing or clicking a token of the answer colours every token before it by its
relevance for it, red for and blue against as the tokens.html of text models), OUT/generation.json (tokens,
ids, the prompt's length, the matrix) and OUT/generation.relevance.npy (the matrix [new tokens, all tokens])."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from .files import save_atomic
from .generation import Generation
from .llm import token_texts

def generation_table(generation: Generation, tokenizer, prompt: str | None = None, model: str = "",
                     composite: str = "") -> dict:
    """The JSON of an explained generation (what the page and the API show)."""
    ids = generation.ids
    texts = token_texts(tokenizer, ids)
    P = generation.prompt_length
    matrix = generation.relevance
    return {
        "model": model, "composite": composite, "prompt": prompt,
        "answer": tokenizer.decode([int(i) for i in generation.new_ids], skip_special_tokens=True),
        "stopped": generation.stopped, "prompt_length": P, "ids": [int(i) for i in ids],
        "tokens": [{"text": text, "token": tokenizer.id_to_token(int(i)), "id": int(i)} for text, i in zip(texts, ids)],
        "generated": [{"position": P + t, "id": int(generation.new_ids[t]), "logit": float(generation.logits[t]),
                       "probability": float(generation.probabilities[t]), "relevance_sum": float(matrix[t].sum())}
                      for t in range(len(generation.new_ids))],
        "relevance": [[float(v) for v in row] for row in matrix],
    }


def write_generation(out: Path, table: dict, matrix: np.ndarray) -> list[Path]:
    """OUT/generation.html, .json and .relevance.npy, each written atomically."""
    out = Path(out)
    return [save_atomic(out / "generation.relevance.npy", lambda p: np.save(open(p, "wb"), matrix)),
            save_atomic(out / "generation.json", lambda p: Path(p).write_text(json.dumps(table, indent=1), "utf-8")),
            save_atomic(out / "generation.html", lambda p: Path(p).write_text(generation_html(table), "utf-8"))]


STATIC = Path(__file__).resolve().parent / "serve" / "static"   # answer.js and answer.css: shared with onnxlrp serve


def generation_html(table: dict) -> str:
    """The page: one file, its style, data (JSON) and script (serve/static/answer.js) inline."""
    P, N = table["prompt_length"], len(table["generated"])
    stopped = ("it stopped at an end-of-sequence token" if table["stopped"] == "eos"
               else f"it stopped after {N} new tokens (max_new_tokens)")
    data = json.dumps({key: table[key] for key in ("prompt_length", "tokens", "generated", "relevance")})
    data = data.replace("</", "<\\/")     # no "</script>" inside the script element
    title = "What the answer rests on" + (f": {table['model']}" if table.get("model") else "")
    meta = " · ".join(x for x in (table.get("model"), table.get("composite") and f"composite {table['composite']}",
                                  f"{P} prompt tokens, {N} new tokens; {stopped}") if x)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}{(STATIC / "answer.css").read_text(encoding="utf-8")}</style></head>
<body>
<header><h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p></header>
<main>
<p class="how">Hover, focus or click a token of the answer: every token before it takes the colour of its relevance for
that token, <span class="pos">red</span> for it, <span class="neg">blue</span> against it, as strong as the largest
|relevance| of that row (hover a token for its number). Click or press Enter to keep one chosen;
<kbd>←</kbd> <kbd>→</kbd> move along the answer.</p>
<noscript><p>This page needs JavaScript to show the tokens; generation.json holds the same numbers.</p></noscript>
<section aria-label="the prompt and the answer">
<h2>Prompt</h2><p id="prompt" class="text"></p>
<h2>Answer</h2><p id="answer" class="text"></p>
</section>
<section id="detail" class="detail" aria-live="polite"></section>
</main>
<script type="application/json" id="data">{data}</script>
<script>{(STATIC / "answer.js").read_text(encoding="utf-8")}
renderAnswer(JSON.parse(document.getElementById("data").textContent), document.getElementById("prompt"),
             document.getElementById("answer"), document.getElementById("detail"));
</script>
</body></html>
"""


_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #223; color: #fff; padding: 0.8em 1.5em; }
header h1 { margin: 0; font-size: 1.35em; } header .meta { margin: 0.2em 0 0; opacity: 0.85; }
main { padding: 1em 1.5em; max-width: 60em; }
h2 { font-size: 1em; margin: 1em 0 0.3em; color: #555; }
.pos { color: #c00; font-weight: bold; } .neg { color: #24c; font-weight: bold; }
kbd { border: 1px solid #bbb; border-radius: 3px; padding: 0 4px; background: #fff; font-size: 0.9em; }
#detail { margin-top: 1em; }
"""
