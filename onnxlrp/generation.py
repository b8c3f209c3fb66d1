"""Whole generated answers: greedy generation with the model itself in onnxruntime, then the relevance of
every prompt and earlier generated token for every generated token (docs/generation.md).

Generation feeds the cache forward (present -> past) where the model has one, else runs the growing
sequence again each step. The explanation feeds the whole sequence with an empty past: row t of the matrix
is the explanation of new token t at the position that predicted it, computed for several tokens per
onnxruntime run (the sequence repeated, one target and position per copy)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .errors import InputError


@dataclass
class Generation:
    prompt_ids: np.ndarray      # [P] the prompt's token ids
    new_ids: np.ndarray         # [N] the generated ones, in order (an end-of-sequence id last, if it stopped there)
    relevance: np.ndarray       # [N, P + N]: row t, the relevance of every token for new token t (zero from
                                # position P + t on: a causal model does not see them)
    logits: np.ndarray          # [N] each new token's logit when it was chosen
    probabilities: np.ndarray   # [N] and its probability (softmax over the vocabulary)
    stopped: str                # "eos" (an end-of-sequence id was generated) or "max_new_tokens"

    @property
    def ids(self) -> np.ndarray:
        """Every token: the prompt, then the answer."""
        return np.concatenate([self.prompt_ids, self.new_ids])

    @property
    def prompt_length(self) -> int:
        return len(self.prompt_ids)


def prompt_array(prompt_ids) -> np.ndarray:
    """One prompt as a 1-D int64 array (a list, a 1-D array or a [1, P] array)."""
    ids = np.asarray(prompt_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise InputError(f"prompt_ids takes one prompt: a non-empty list of token ids (or a [1, P] array); got "
                         f"{'shape ' + str(list(ids.shape)) if ids.ndim != 1 or ids.size == 0 else ids.dtype}")
    return ids.astype(np.int64)


def eos_list(eos_token_id, default: list[int]) -> set[int]:
    if eos_token_id is None:
        return set(default)
    return {int(i) for i in np.atleast_1d(np.asarray(eos_token_id, dtype=np.int64))}


def generate(session: ort.InferenceSession, spec, prompt: np.ndarray, max_new_tokens: int, eos: set[int],
             use_cache: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Greedy decoding: (new ids, their logits, their probabilities, why it stopped)."""
    names = [o.name for o in session.get_outputs()]
    wanted = [i.name for i in session.get_inputs()]
    cache = use_cache and spec.has_cache
    ids, new, logits, probabilities = prompt[None], [], [], []
    feeds = spec.fill({spec.tokens: ids}, wanted, past_length=0)
    stopped = "max_new_tokens"
    for _ in range(max_new_tokens):
        outputs = dict(zip(names, _run(session, feeds), strict=True))
        scores = outputs[spec.logits][0, -1].astype(np.float64)
        token = int(np.argmax(scores))
        new.append(token)
        logits.append(scores[token])
        probabilities.append(1.0 / np.exp(scores - scores[token]).sum())
        ids = np.concatenate([ids, [[token]]], axis=1)
        if token in eos:
            stopped = "eos"
            break
        if cache:   # the next step: the new token alone, after a past of every token before it
            pasts = {name: outputs[past.present] for name, past in spec.pasts.items()}
            feeds = spec.fill({spec.tokens: ids[:, -1:], **pasts}, wanted, past_length=ids.shape[1] - 1)
        else:
            feeds = spec.fill({spec.tokens: ids}, wanted, past_length=0)
    return (np.asarray(new, np.int64), np.asarray(logits, np.float32), np.asarray(probabilities, np.float32),
            stopped)


def _run(session, feeds):
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors: a sequence longer than the model takes, ...
        text = str(exc).strip().splitlines()
        raise InputError(f"onnxruntime failed to run the model while generating ({text[0][:300] if text else exc}); "
                         "a sequence longer than the model's context fails so") from None


def relevance_matrix(explainer, spec, ids: np.ndarray, prompt_length: int, mode: str = "logit",
                     batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Row t: the explanation of token ids[P + t] at position P + t - 1, over every token ([N, P + N]), and
    the explained logits [N]. `batch_size` tokens per onnxruntime run, each run fed the sequence as far as
    its last token needs (gradient-form composites; the others compile once per input size, so they get the
    whole sequence every run)."""
    P, total = prompt_length, len(ids)
    N = total - P
    matrix = np.zeros((N, total), np.float32)
    scores = np.zeros(N, np.float32)
    trims = explainer.composite.form == "gradient"
    outputs = [o.name for o in explainer.model.graph.output]
    for start in range(0, N, batch_size):
        rows = np.arange(start, min(start + batch_size, N))
        length = P + int(rows[-1]) if trims else total - 1   # the last row's prediction sees tokens 0..P+t-1
        sequence = np.repeat(ids[None, :length], len(rows), axis=0)
        result = explainer.explain({spec.tokens: sequence}, target=ids[P + rows], position=P + rows - 1, mode=mode)
        matrix[rows, :length] = result.relevances[spec.tokens]
        logits = result.outputs[outputs.index(spec.logits)]
        scores[rows] = logits[np.arange(len(rows)), P + rows - 1, ids[P + rows]]
    return matrix, scores
