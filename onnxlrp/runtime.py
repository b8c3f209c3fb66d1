"""Explainer: compiles the explainer model once per output-relevance mode and runs it with onnxruntime."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from . import composites as composites_module
from .compiler import MEMORY_FORMS, CompiledExplainer, abs_sum_name, compile_explainer, rejected_explainer
from .errors import InputError, OnnxLrpError, UnsupportedModelError
from .generation import Generation
from .llm import DecoderInputs, decoder_inputs, model_file
from .model import free_input_dims, load_model, with_input_shapes, write_with_external_data
from .validate import byte_size
from .compiler.start import MODES

# The CUDA provider with full float32 convolutions and matrix products: onnxruntime's default TF32 keeps 10
# bits of mantissa (a relative error near 5e-4 per product), above docs/rules.md's 1e-4 agreement with Zennit.
# Pass ["CUDAExecutionProvider", "CPUExecutionProvider"] for TF32's speed where that agreement can go.
CUDA_PROVIDERS = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]


@dataclass
class Explanation:
    relevance: np.ndarray                 # relevance of the (first) explained input, shaped like it
    outputs: list[np.ndarray]             # the original model's outputs, in order
    target: np.ndarray | None             # the class explained, per sample (None in custom mode)
    relevances: dict[str, np.ndarray] = field(default_factory=dict)  # every explained input
    layer_sums: dict[str, np.ndarray] = field(default_factory=dict)  # per layer, when asked for
    layer_abs_sums: dict[str, np.ndarray] = field(default_factory=dict)  # sum of |R|, same keys
    layer_relevances: dict[str, np.ndarray] = field(default_factory=dict)  # whole tensors, when asked for
    position: np.ndarray | None = None    # sequence outputs: the position explained, per sample
    concept_relevance: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> [batch, channels], CRP
    score: np.ndarray | None = None       # the explained value per sample where there are no classes (OC-SVM)

    # With several targets per sample (top_k, or a [batch, k] target) every per-sample array above has
    # a second axis of length k after the batch axis: relevance[i, j] explains target[i, j].


class Explainer:
    """Explain a model's predictions with LRP. One explainer may be used from several threads at once
    (onnxruntime sessions run concurrently).

    >>> ex = Explainer("model.onnx", composite=composites.EpsilonPlusFlat())
    >>> res = ex.explain(x, target=None)     # None: the predicted class
    >>> res.relevance.shape == x.shape

    memory="low": the relevance pass recomputes what it reads of the forward pass from checkpoints at the
    residual joins, so a transformer's memory grows linearly with the sequence instead of with layers x seq^2
    (the same relevance; docs/performance.md, "Long prompts").
    """

    def __init__(self, model, composite=None, providers=None, output=None, inputs=None,
                 session_options: ort.SessionOptions | None = None, layer_sums: bool = False,
                 threads: int | None = None, layer_relevances: bool = False, memory: str = "default"):
        if isinstance(model, (str, os.PathLike)):
            model = model_file(model)      # a folder (onnxruntime-genai's, optimum's): its model.onnx
        self.source = Path(model) if isinstance(model, (str, os.PathLike)) else None   # its folder has its configs
        self.model = load_model(model)
        self.composite = composites_module.get(composite)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        _check_providers(self.providers)
        self.output = output
        self.explained_inputs = inputs
        self.layer_sums = layer_sums
        self.layer_relevances = layer_relevances
        if memory not in MEMORY_FORMS:
            raise ValueError(f"unknown memory form '{memory}'; choose one of {', '.join(MEMORY_FORMS)}")
        self.memory = memory   # "low": forward tensors recomputed in the relevance pass (compiler/recompute.py)
        self.session_options = session_options or default_session_options(threads)
        self._compiled: dict[tuple, CompiledExplainer] = {}
        self._sessions: dict[tuple, ort.InferenceSession] = {}
        self._forwards: dict[object, ort.InferenceSession] = {}   # the plain forward model, per input size
        self._forward_mode_name: str | None = None
        self._canonical = None   # (canonical model, explained output's shape): for selections
        self._decoder: DecoderInputs | None = None
        self._generator: ort.InferenceSession | None = None   # the model itself, for generation
        self._lock = threading.Lock()   # sessions are built once, even when threads share this explainer

    def replace(self, **changes) -> "Explainer":
        """A new Explainer (compiled anew) with this one's settings except `changes`, which take the
        constructor's names: model (a randomised copy, a model with an inner tensor exposed), composite,
        output, layer_sums, layer_relevances, ..."""
        settings = dict(model=self.model, composite=self.composite, providers=self.providers, output=self.output,
                        inputs=self.explained_inputs, session_options=self.session_options,
                        layer_sums=self.layer_sums, layer_relevances=self.layer_relevances, memory=self.memory)
        unknown = set(changes) - set(settings)
        if unknown:
            raise TypeError(f"Explainer.replace() got unknown settings {sorted(unknown)}")
        replaced = Explainer(**{**settings, **changes})
        if "model" not in changes:
            replaced.source = self.source
        return replaced

    @property
    def decoder(self) -> DecoderInputs:
        """The model's decoder conventions (onnxlrp.llm): its token input, past inputs, head size, end ids."""
        with self._lock:
            if self._decoder is None:
                self._decoder = decoder_inputs(self.model, self.source.parent if self.source else None, self.output)
            return self._decoder

    def generate(self, prompt_ids, max_new_tokens: int = 20, eos_token_id=None, use_cache: bool = True) -> np.ndarray:
        """Greedy generation with the model itself in onnxruntime: the new token ids (1-D). The cache is fed
        forward where the model has one (use_cache=False: the growing sequence is run again each step).
        eos_token_id: an id or ids that stop it (kept as the last new token); None: those of the model's
        folder (generation_config.json, config.json, genai_config.json), if any; []: never stop early."""
        return self._generate(prompt_ids, max_new_tokens, eos_token_id, use_cache)[0]

    def explain_generation(self, prompt_ids, max_new_tokens: int = 20, eos_token_id=None, use_cache: bool = True,
                           mode: str = "logit", batch_size: int = 8) -> Generation:
        """Generate greedily (as `generate`), then explain every new token: `.relevance` [N, P + N], row t the
        relevance of every prompt and earlier new token for new token t, as `explain` gives it for that token at
        the position that predicted it. `batch_size` new tokens are explained per onnxruntime run."""
        from .generation import relevance_matrix
        new, logits, probabilities, stopped, prompt = self._generate(prompt_ids, max_new_tokens, eos_token_id,
                                                                     use_cache)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1; got {batch_size}")
        ids = np.concatenate([prompt, new])
        matrix, _ = relevance_matrix(self, self.decoder, ids, len(prompt), mode=mode, batch_size=batch_size)
        return Generation(prompt_ids=prompt, new_ids=new, relevance=matrix, logits=logits,
                          probabilities=probabilities, stopped=stopped)

    def _generate(self, prompt_ids, max_new_tokens, eos_token_id, use_cache):
        from .generation import eos_list, generate, prompt_array
        prompt = prompt_array(prompt_ids)
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer; got {max_new_tokens!r}")
        spec = self.decoder
        if spec.tokens is None or spec.logits is None:
            raise InputError("generation needs a language model: token ids [batch, sequence] in, logits [batch, "
                             "sequence, vocabulary] out; this model takes "
                             f"{list(spec.inputs)} and gives {[o.name for o in self.model.graph.output]}")
        if spec.fixed_length is not None:
            raise InputError(f"the model takes exactly {spec.fixed_length} tokens (its sequence length was fixed at "
                             "export); generation needs a dynamic sequence axis (torch.onnx: dynamic_axes / "
                             "dynamic_shapes on the sequence)")
        with self._lock:
            if self._generator is None:
                source = str(self.source) if self.source else self.model.SerializeToString()
                try:
                    self._generator = ort.InferenceSession(source, self.session_options, providers=self.providers)
                except Exception as exc:  # noqa: BLE001 - onnxruntime refusing the model itself
                    text = str(exc).strip().splitlines()
                    raise UnsupportedModelError(f"onnxruntime cannot load the model to generate with it: "
                                                f"{text[0][:300] if text else exc}") from None
        new, logits, probabilities, stopped = generate(self._generator, spec, prompt, int(max_new_tokens),
                                                       eos_list(eos_token_id, spec.eos_token_ids), use_cache)
        return new, logits, probabilities, stopped, prompt

    def compiled(self, mode: str = "logit", conditions=(), concepts=(), shapes=None, support=None) -> CompiledExplainer:
        """The explainer model for `mode`, compiled once (no session is built for it until one is run).
        conditions / concepts: layers whose relevance is masked to channels / whose concept relevance is
        output (CRP). shapes: input name -> shape, for models whose inputs have free non-batch dims (a
        segmenter's H x W): the relevance rules need static shapes, so each input size is compiled once.
        support: (axis, start, stop), where a select mode's mask can be non-zero (a detection's class scores)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        key = (mode, tuple(conditions), tuple(concepts), shapes and tuple(sorted(shapes.items())), support)
        with self._lock:
            if key not in self._compiled:
                model = with_input_shapes(self.model, shapes) if shapes else self.model
                self._compiled[key] = compile_explainer(
                    model, composite=self.composite, mode=mode, output=self.output,
                    inputs=self.explained_inputs, layer_sums=self.layer_sums, layer_relevances=self.layer_relevances,
                    conditions=list(conditions) or None, concepts=list(concepts) or None, support=support,
                    memory=self.memory)
                release_freed_memory()
            return self._compiled[key]

    def _session(self, mode: str, conditions=(), concepts=(), x=None, support=None):
        shapes = self._free_shapes(x)
        compiled = self.compiled(mode, conditions, concepts, shapes, support)
        key = (mode, tuple(conditions), tuple(concepts), shapes and tuple(sorted(shapes.items())), support)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = new_session(compiled.model, self.session_options,
                                                  self.providers)
            return compiled, self._sessions[key]

    def _free_shapes(self, x) -> dict | None:
        """For a relevance-form composite on a model with free non-batch input dims: the shapes of `x`."""
        if x is None or self.composite.form == "gradient":
            return None
        free = free_input_dims(self.model)
        if not free:
            return None
        arrays = x if isinstance(x, dict) else {free[0]: x}
        return {name: tuple(int(d) for d in np.shape(arrays[name])[1:]) for name in free if name in arrays}

    def _forward_mode(self, x) -> str:
        """A mode whose explainer holds the plain forward model: logit for classifiers, else select."""
        if self._forward_mode_name is None:
            try:
                self._session("logit", x=x)
                self._forward_mode_name = "logit"
            except UnsupportedModelError:
                self._forward_mode_name = "select"
        return self._forward_mode_name

    def logits(self, x, batch_size: int | None = None) -> np.ndarray:
        """The explained output (the logits) for a batch, from the plain forward model: the explainer's own
        forward nodes alone, without any relevance node."""
        compiled, session = self._session(self._forward_mode(x), x=x)
        shapes = self._free_shapes(x)
        key = shapes and tuple(sorted(shapes.items()))
        with self._lock:
            if key not in self._forwards:
                self._forwards[key] = new_session(forward_model(compiled), self.session_options,
                                                  self.providers)
            forward = self._forwards[key]
        feeds = self._feeds(compiled, session, x)
        chunks = run_in_chunks(forward, feeds, batch_size, compiled.batch)
        return np.concatenate([chunk[0] for chunk in chunks], axis=0)

    def explain(self, x, target=None, mode: str = "logit", output_relevance=None,
                batch_size: int | None = None, top_k: int | None = None, position=None, region=None, mask=None,
                box=None, direction=None, layout: str | None = None, condition=None, concepts=None) -> Explanation:
        """Explain a batch. `x`: an array (single-input models) or a dict input name -> array.

        target: None (the predicted class), an int for every sample, one int per sample (-1: that sample's
            predicted class), or a
            [batch, k] array of ints: k explanations per sample in one call.
        top_k: explain each sample's k highest-scoring classes, best first (instead of target).
        mode: "logit" (default), "one", "prob", "contrastive", or "custom" with `output_relevance`
            shaped like the logits (or any output).
        position: for sequence outputs [batch, seq, vocab] (transformer composites): the position whose
            token is explained, an int or one per sample (default -1, the last).
        region / mask / box / direction: what to explain on outputs that are not [batch, classes]
            (onnxlrp.selections; R = z * M): class `target` within a region (y0, x0, y1, x1) or a mask
            (array or PNG) of a segmentation, the class-`target` score of detection `box`, a direction r
            of a regression or embedding output. layout: NCHW / NHWC (regions), boxes_first /
            attributes_first (detections); by default from the shape.
        condition: {layer: [channels]} (CRP: relevance only through those channels of that layer; layer
            an ONNX node or tensor name; several layers apply from the top), or a list of such dicts:
            several concepts per input in one batched run (every per-sample array gets a concept axis).
        concepts: layers whose concept relevance per channel goes into `concept_relevance`.
        """
        support = None
        if any(v is not None for v in (region, mask, box, direction)):
            if mode not in ("logit", "select") or output_relevance is not None or top_k is not None:
                raise InputError("region/mask/box/direction choose the start relevance (R = z * mask): give no mode, "
                                 "output_relevance or top_k with them")
            output_relevance = self.output_mask(x, target=target, region=region, mask=mask, box=box,
                                                direction=direction, layout=layout)
            if box is not None:   # only the class scores can be non-zero: the box branch carries nothing
                from .selections import detection_support
                support = detection_support(output_relevance.shape, layout)
            mode, target = "select", None
        if isinstance(condition, (list, tuple)):
            return self._explain_concepts(x, list(condition), target, mode, output_relevance, batch_size, position,
                                          concepts, support)
        masks = None
        if condition:
            n = len(next(iter(x.values())) if isinstance(x, dict) else x)
            masks = {layer: [channels] * n for layer, channels in condition.items()}
        return self._run(x, target, mode, output_relevance, batch_size, top_k, position, masks, concepts, support)

    def output_mask(self, x, target=None, region=None, mask=None, box=None, direction=None,
                    layout: str | None = None) -> np.ndarray:
        """The M of a selection (onnxlrp.selections), shaped like the explained output for this batch (a
        dynamic output shape is read off one forward run)."""
        from .selections import output_mask
        return output_mask(self._explained_shape(x), target=target, region=region, mask=mask, box=box,
                           direction=direction, layout=layout)

    def _explained_shape(self, x) -> tuple:
        """The explained output's shape for this batch, from the canonical graph (no relevance compiled: a
        selection may leave parts of the graph without a rule); a free dim read off one forward run."""
        from .canonical import canonicalize
        from .graph import ForwardGraph
        with self._lock:
            if self._canonical is None:
                canonical = canonicalize(load_model(self.model, check=False), self.output)
                self._canonical = (canonical, ForwardGraph(canonical.model).shape(canonical.logits))
        canonical, shape = self._canonical
        n = len(next(iter(x.values())) if isinstance(x, dict) else x)
        if shape is not None and all(d is not None for d in shape[1:]):
            return (n,) + tuple(shape[1:])
        model = onnx.ModelProto()
        model.CopyFrom(canonical.model)
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(canonical.logits, TensorProto.FLOAT, None))
        session = new_session(model, self.session_options, self.providers)
        feeds = {i.name: np.asarray(x[i.name] if isinstance(x, dict) else x) for i in session.get_inputs()}
        return session.run(None, feeds)[0].shape

    def concept_relevance(self, x, layer: str, target=None, mode: str = "logit", condition=None,
                          **selection) -> np.ndarray:
        """Per channel of `layer`: the sum over positions of its relevance, divided by the sum over channels of
        those sums' absolute values ([batch, channels]; zennit-crp's ChannelConcept.attribute, abs_norm)."""
        return self.explain(x, target=target, mode=mode, condition=condition, concepts=[layer],
                            **selection).concept_relevance[layer]

    def top_concepts(self, x, layer: str, k: int, target=None, **options) -> tuple[np.ndarray, np.ndarray]:
        """The k channels of `layer` with the highest concept relevance per sample: (channels, shares),
        each [batch, k], best first."""
        shares = self.concept_relevance(x, layer, target=target, **options)
        if not 1 <= k <= shares.shape[1]:
            raise InputError(f"k must be between 1 and the {shares.shape[1]} channels of '{layer}'; got {k}")
        channels = np.argsort(-shares, axis=1, kind="stable")[:, :k]
        return channels, np.take_along_axis(shares, channels, axis=1)

    def _run(self, x, target, mode, output_relevance, batch_size, top_k, position, masks, concepts,
             support=None) -> Explanation:
        if top_k is not None:
            if target is not None:
                raise InputError("give either target or top_k, not both")
            scores = self.logits(x, batch_size)
            if scores.ndim == 3:   # a sequence output: the scores at the explained position
                positions = _positions(position, scores.shape[0], scores.shape[1])
                scores = scores[np.arange(scores.shape[0]), positions]
            scores = scores.reshape(len(scores), -1)
            if not 1 <= top_k <= scores.shape[1]:
                raise InputError(f"top_k must be between 1 and the number of classes ({scores.shape[1]}); got {top_k}")
            target = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        if target is not None and np.ndim(target) == 2:
            return self._explain_several(x, np.asarray(target), mode, batch_size, position, masks, concepts, support)
        conditions = tuple(sorted(masks)) if masks else ()
        compiled, session = self._session(mode, conditions, tuple(concepts or ()), x, support)
        feeds = self._feeds(compiled, session, x)
        n = next(iter(feeds.values())).shape[0]
        if mode in ("custom", "select"):
            if output_relevance is None:
                raise InputError(f"mode='{mode}' needs output_relevance, an array shaped like the explained output "
                                 f"[batch, {', '.join(str(d) for d in compiled.start_shape)}]")
            start = np.asarray(output_relevance, dtype=np.float32)
            expected = (n,) + tuple(compiled.start_shape)
            if start.ndim != len(expected) or any(e is not None and e != a for e, a in zip(expected, start.shape)):
                raise InputError(f"output_relevance has shape {start.shape}; expected "
                                 f"{tuple('any' if e is None else e for e in expected)}")
            feeds[compiled.custom_input] = start
        elif compiled.target_input is not None:
            feeds[compiled.target_input] = _targets(target, n, compiled.n_classes)
        elif target is not None:
            raise InputError("this model explains one score (a one-class SVM's outlier score): give no target")
        if compiled.position_input:
            length = feeds[next(iter(compiled.relevance_outputs))].shape[1]   # the token ids' sequence
            feeds[compiled.position_input] = _positions(position, n, length)
        elif position is not None:
            raise InputError("position= is for sequence outputs [batch, seq, vocab]; this model's explained output "
                             f"has shape [batch, {', '.join(str(d) for d in compiled.start_shape)}]")
        declared = {i.name: i.shape for i in session.get_inputs()}
        for layer in conditions:
            name = compiled.condition_inputs[layer]
            feeds[name] = _channel_masks(masks[layer], n, declared[name][1], layer)
        chunks = run_in_chunks(session, feeds, batch_size, compiled.batch)
        names = [o.name for o in session.get_outputs()]
        # one chunk (the usual case): its arrays as they are, without a copy
        merged = {name: np.concatenate([c[k] for c in chunks], axis=0) if len(chunks) > 1 and chunks[0][k].ndim
                  else chunks[0][k] for k, name in enumerate(names)}
        relevances = {inp: merged[out] for inp, out in compiled.relevance_outputs.items()}
        return Explanation(
            relevance=next(iter(relevances.values())),
            outputs=[merged[name] for name in compiled.output_names],
            target=merged[compiled.target_output] if compiled.target_output else None,
            relevances=relevances,
            layer_sums={name: merged[name] for name in compiled.layer_sum_outputs},
            layer_abs_sums={name: merged[abs_sum_name(name)] for name in compiled.layer_sum_outputs},
            layer_relevances={name: merged[name] for name in compiled.layer_relevance_outputs},
            position=merged[compiled.position_output] if compiled.position_output else None,
            concept_relevance={layer: merged[sums] / (merged[absolute][:, None] + 1e-10)   # zennit-crp's abs_norm
                               for layer, (sums, absolute) in compiled.concept_outputs.items()},
            score=merged[compiled.score_output] if compiled.score_output else None,
        )

    def _explain_concepts(self, x, conditions: list[dict], target, mode, output_relevance, batch_size, position,
                          concepts, support=None) -> Explanation:
        """k conditions per sample: every sample repeated k times in one batch, one condition per copy."""
        if not conditions or any(not isinstance(c, dict) or not c for c in conditions):
            raise InputError("condition= takes {layer: [channels]} or a list of such dicts")
        layers = set(conditions[0])
        if any(set(c) != layers for c in conditions):
            raise InputError("every condition of a list must name the same layers (mask a layer's every channel "
                             "to leave it open)")
        arrays = x if isinstance(x, dict) else {None: x}
        n, k = len(next(iter(arrays.values()))), len(conditions)
        repeated = {name: np.repeat(np.asarray(v), k, axis=0) for name, v in arrays.items()}
        masks = {layer: [c[layer] for _ in range(n) for c in conditions] for layer in layers}
        if target is not None and np.ndim(target) == 1:
            target = np.repeat(np.asarray(target), k)
        if output_relevance is not None:
            output_relevance = np.repeat(np.asarray(output_relevance), k, axis=0)
        if position is not None and np.ndim(position) == 1:
            position = np.repeat(np.asarray(position), k)
        flat = self._run(repeated if isinstance(x, dict) else repeated[None], target, mode, output_relevance,
                         batch_size, None, position, masks, concepts, support)
        return _split(flat, n, k)

    __call__ = explain

    def _explain_several(self, x, targets: np.ndarray, mode: str, batch_size: int | None,
                         position=None, masks=None, concepts=None, support=None) -> Explanation:
        """k targets per sample: every sample repeated k times in one batch, then split back to [n, k, ...]."""
        arrays = x if isinstance(x, dict) else {None: x}
        n = len(next(iter(arrays.values())))
        if targets.shape[0] != n or targets.dtype.kind not in "iu":
            raise InputError(f"a 2-D target must be ints shaped [batch={n}, k]; got {targets.shape} {targets.dtype}")
        k = targets.shape[1]
        repeated = {name: np.repeat(np.asarray(value), k, axis=0) for name, value in arrays.items()}
        if position is not None and np.ndim(position) == 1:
            position = np.repeat(np.asarray(position), k)
        if masks:
            masks = {layer: [m for m in rows for _ in range(k)] for layer, rows in masks.items()}
        flat = self._run(repeated if isinstance(x, dict) else repeated[None], targets.reshape(-1), mode, None,
                         batch_size, None, position, masks, concepts, support)
        return _split(flat, n, k)


    def _feeds(self, compiled: CompiledExplainer, session, x) -> dict[str, np.ndarray]:
        declared = {i.name: i for i in session.get_inputs()}
        model_inputs = compiled.inputs
        if not isinstance(x, dict):
            others = [name for name in model_inputs if name != self.decoder.tokens]
            if len(model_inputs) == 1:
                x = {model_inputs[0]: x}
            elif self.decoder.tokens in model_inputs and all(self.decoder.fillable(name) for name in others):
                x = {self.decoder.tokens: x}     # a decoder's token ids: the other inputs are filled in
            else:
                raise InputError(f"the model has inputs {model_inputs}: pass a dict name -> array")
        unknown = [name for name in x if name not in model_inputs]
        if unknown:
            raise InputError(f"inputs given {sorted(x)}, but the model takes {model_inputs}")
        arrays = self.decoder.fill(x, model_inputs)   # inputs left out: a decoder's mask, positions, empty pasts
        feeds, batch = {}, None
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.kind not in "fiub":
                raise InputError(f"input '{name}' has dtype {array.dtype}; give numbers")
            wanted = _ORT_TYPES.get(declared[name].type, np.float32)
            if np.dtype(wanted).kind in "iu" and array.dtype.kind == "f":
                if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                    raise InputError(f"input '{name}' takes integers ({declared[name].type}); got fractions")
            array = np.ascontiguousarray(array, dtype=wanted) if array.dtype != wanted else array
            expected = declared[name].shape
            if array.ndim != len(expected) or any(isinstance(e, int) and e != a
                                                   for e, a in zip(expected[1:], array.shape[1:])):
                pretty = ["batch" if not isinstance(e, int) else e for e in expected]
                raise InputError(f"input '{name}' has shape {list(array.shape)}; the model expects {pretty}")
            if not np.all(np.isfinite(array)):
                raise InputError(f"input '{name}' contains NaN or infinite values")
            if batch is not None and array.shape[0] != batch:
                raise InputError("all inputs must have the same batch size")
            batch = array.shape[0]
            feeds[name] = array
        if batch == 0:
            raise InputError("the batch is empty")
        return feeds


def run_in_chunks(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch_size: int | None,
                  fixed: int | None) -> list[list[np.ndarray]]:
    """Run `feeds` in chunks of `batch_size` samples (default all at once). A model fixed to its exported batch
    (`fixed`) takes exactly that many: the last chunk is filled up with copies of its last sample, and their
    results are dropped."""
    n = len(next(iter(feeds.values())))
    step = fixed or batch_size or n
    chunks = []
    for i in range(0, n, step):
        chunk = {k: v[i:i + step] for k, v in feeds.items()}
        m = min(step, n - i)
        if fixed and m < fixed:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], fixed - m, axis=0)]) for k, v in chunk.items()}
            chunks.append([r[:m] for r in session.run(None, chunk)])
        else:
            chunks.append(session.run(None, chunk))
    return chunks


def sample_feeds(session: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch for any session: normal noise for float inputs, -1 (the predicted class) for int64 ones
    (the target); dims other than the batch that the model leaves free are 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in session.get_inputs():
        shape = [batch] + [d if isinstance(d, int) else 1 for d in value.shape[1:]]
        feeds[value.name] = (np.full(shape, -1, np.int64) if "int64" in value.type
                             else rng.normal(size=shape).astype(np.float32))
    return feeds


def forward_model(compiled: CompiledExplainer) -> onnx.ModelProto:
    """The compiled explainer cut down to the nodes the logits need: the plain (canonical) forward model,
    with the model's inputs and the logits as its one output."""
    graph = compiled.model.graph
    producers = {out: node for node in graph.node for out in node.output}
    needed, stack, keep = set(), [compiled.logits], []
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if name in needed or node is None:
            continue
        needed.add(name)
        keep.append(node)
        stack.extend(i for i in node.input if i)
    order = {id(node): k for k, node in enumerate(graph.node)}
    nodes = sorted({id(n): n for n in keep}.values(), key=lambda n: order[id(n)])
    used = {i for node in nodes for i in node.input}
    inputs = [v for v in graph.input if v.name in compiled.inputs]
    dims = ["batch"] + [d if d is not None else f"dim{k + 1}" for k, d in enumerate(compiled.start_shape)]
    logits = helper.make_tensor_value_info(compiled.logits, TensorProto.FLOAT, dims)
    forward = helper.make_graph(nodes, "onnxlrp_forward", inputs, [logits],
                                initializer=[t for t in graph.initializer if t.name in used])
    model = helper.make_model(forward, opset_imports=list(compiled.model.opset_import))
    model.ir_version = compiled.model.ir_version
    return model


def default_session_options(threads: int | None) -> ort.SessionOptions:
    """All graph optimisations (layout transforms: NCHWc convolutions on CPU), sequential execution (the
    relevance graph is one long chain; inter-op parallelism only adds contention), the CPU arena, and
    `threads` intra-op threads (default: all cores).

    The memory-pattern planner is off: from the second call on it allocates one block for the whole
    pattern beside the arena chunks of the first call, which the arena keeps, so a session's resident
    memory doubles (ResNet-50's explainer at batch 8: 1631 -> 2761 MB) for no speed-up (0.99-1.01x,
    `tools/bench_passes.py MODEL pattern`; docs/performance.md)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = True
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def new_session(model, options, providers: list) -> ort.InferenceSession:
    """An onnxruntime session on `providers`, with the heap its build freed handed back. `model`: a path, bytes
    or a ModelProto (one over FILE_SESSION_BYTES runs from a temporary file with its weights beside it).
    onnxruntime falls back to the CPU, with a log line only, when a provider it was built with cannot load (CUDA
    or cuDNN libraries missing): that is an error here."""
    try:
        if isinstance(model, onnx.ModelProto) and byte_size(model) > FILE_SESSION_BYTES:
            session = _session_from_a_file(model, options, providers)
        else:
            source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
            session = ort.InferenceSession(source, options, providers=providers)
    except OnnxLrpError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime refusing a model onnxlrp built is onnxlrp's bug
        raise rejected_explainer(exc) from None
    release_freed_memory()
    wanted = provider_name(providers[0])
    if wanted not in session.get_providers():
        hint = (" (onnxruntime-gpu needs the CUDA and cuDNN libraries of its version on the library path: "
                "pip install onnxruntime-gpu[cuda,cudnn])" if "CUDA" in wanted else "")
        raise InputError(f"onnxruntime could not start {wanted}; the session runs on {session.get_providers()}"
                         f"{hint}")
    return session


def _session_from_a_file(model: onnx.ModelProto, options, providers: list) -> ort.InferenceSession:
    """The session of a large model, loaded from a temporary file with its weights beside it, which onnxruntime
    maps into memory (the proto is left as it is)."""
    folder = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="onnxlrp-session-"))
        write_with_external_data(model, folder / "model.onnx", folder / "model.onnx.data", location="model.onnx.data")
        return ort.InferenceSession(str(folder / "model.onnx"), options, providers=providers)
    except OSError as exc:
        raise OnnxLrpError(f"onnxruntime loads a model of {byte_size(model) / 1e6:.0f} MB from a temporary file, "
                           f"which could not be written in {tempfile.gettempdir()} ({exc.strerror or exc}); free "
                           "that much space there, or set TMPDIR to a folder with room") from None
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


# A model above this many bytes makes its session from a file: serialised to bytes it would be held twice more
# (the bytes, onnxruntime's parse of them), and protobuf encodes a model of GBs at about 0.2 GB/s; over 2 GiB
# it cannot be serialised at all.
FILE_SESSION_BYTES = 512 * 1024**2


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; nothing where there is none).
    Compiling and building a session free hundreds of MB of temporaries (weights transformed, serialised,
    parsed) that glibc otherwise keeps for the process: an Explainer of ResNet-50 held 1232 MB after
    building its session, 935 MB after a trim (docs/performance.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):   # not glibc (macOS, Windows, musl)
        return None


def provider_name(provider) -> str:
    """A providers-list entry's name: the entry itself, or the first of a (name, options) pair."""
    return provider if isinstance(provider, str) else provider[0]


def _check_providers(providers: list) -> None:
    """A provider this onnxruntime build lacks is an error here, not a silent fall back to the CPU."""
    available = ort.get_available_providers()
    missing = [provider_name(p) for p in providers if provider_name(p) not in available]
    if missing:
        hint = " (install onnxruntime-gpu instead of onnxruntime)" if any("CUDA" in m for m in missing) else ""
        raise InputError(f"execution provider(s) {missing} are not available in this onnxruntime build; it has "
                         f"{available}{hint}")


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(float16)": np.float16}


def _split(flat: Explanation, n: int, k: int) -> Explanation:
    """A batch of n * k explanations (each sample repeated k times) as [n, k, ...] arrays."""
    def split(array):
        return array.reshape((n, k) + array.shape[1:])

    return Explanation(
        relevance=split(flat.relevance), outputs=[split(o)[:, 0] for o in flat.outputs],
        target=split(flat.target) if flat.target is not None else None,
        relevances={name: split(v) for name, v in flat.relevances.items()},
        layer_sums={name: split(v) for name, v in flat.layer_sums.items()},
        layer_abs_sums={name: split(v) for name, v in flat.layer_abs_sums.items()},
        layer_relevances={name: split(v) for name, v in flat.layer_relevances.items()},
        position=split(flat.position) if flat.position is not None else None,
        concept_relevance={name: split(v) for name, v in flat.concept_relevance.items()},
    )


def _channel_masks(rows: list, n: int, channels, layer: str) -> np.ndarray:
    """0/1 masks [n, channels] from each sample's list of kept channels."""
    masks = np.zeros((n, channels), np.float32)
    for i, kept in enumerate(rows):
        kept = np.atleast_1d(np.asarray(kept))
        if kept.size == 0 or kept.dtype.kind not in "iu" or np.any(kept < 0) or np.any(kept >= channels):
            raise InputError(f"condition on '{layer}': channels {np.asarray(kept).tolist()} must be ints in "
                             f"0..{channels - 1}")
        masks[i, kept] = 1
    return masks


def _positions(position, n: int, length: int) -> np.ndarray:
    """One position per sample for sequence outputs; -1 (default) the last, negatives count from the end."""
    array = np.full(n, -1, np.int64) if position is None else np.asarray(position)
    if array.ndim == 0:
        array = np.full(n, int(array), dtype=np.int64)
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise InputError(f"position must be None, an int, or {n} ints (one per sample); got {position!r}")
    if np.any(array < -length) or np.any(array >= length):
        raise InputError(f"position {array.tolist()} out of range for a sequence of {length}")
    return array.astype(np.int64)


def _targets(target, n: int, n_classes: int) -> np.ndarray:
    if target is None:
        return np.full(n, -1, dtype=np.int64)
    array = np.asarray(target)
    if array.ndim == 0:
        array = np.full(n, int(array), dtype=np.int64)
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise InputError(f"target must be None, an int, or {n} ints (one per sample); got {target!r}")
    if np.any(array < -1) or np.any(array >= n_classes):
        raise InputError(f"target {array.tolist()} out of range: the model has {n_classes} classes (0..{n_classes - 1}; "
                         "-1: the predicted class)")
    return array.astype(np.int64)
