"""Explainer: compiles the explainer model once per output-relevance mode and runs it with onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from . import composites as composites_module
from .compiler import CompiledExplainer, abs_sum_name, compile_explainer
from .errors import InputError
from .model import load_model
from .output_relevance import MODES


@dataclass
class Explanation:
    relevance: np.ndarray                 # relevance of the (first) explained input, shaped like it
    outputs: list[np.ndarray]             # the original model's outputs, in order
    target: np.ndarray | None             # the class explained, per sample (None in custom mode)
    relevances: dict[str, np.ndarray] = field(default_factory=dict)  # every explained input
    layer_sums: dict[str, np.ndarray] = field(default_factory=dict)  # per layer, when asked for
    layer_abs_sums: dict[str, np.ndarray] = field(default_factory=dict)  # sum of |R|, same keys


class Explainer:
    """Explain a model's predictions with LRP.

    >>> ex = Explainer("model.onnx", composite=composites.EpsilonPlusFlat())
    >>> res = ex.explain(x, target=None)     # None: the predicted class
    >>> res.relevance.shape == x.shape
    """

    def __init__(self, model, composite=None, providers=None, output=None, inputs=None,
                 session_options: ort.SessionOptions | None = None, layer_sums: bool = False,
                 threads: int | None = None):
        self.model = load_model(model)
        self.composite = composites_module.get(composite)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.output = output
        self.explained_inputs = inputs
        self.layer_sums = layer_sums
        self.session_options = session_options or _default_session_options(threads)
        self._compiled: dict[str, tuple[CompiledExplainer, ort.InferenceSession]] = {}

    def compiled(self, mode: str = "logit") -> CompiledExplainer:
        return self._session(mode)[0]

    def _session(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        if mode not in self._compiled:
            compiled = compile_explainer(self.model, composite=self.composite, mode=mode, output=self.output,
                                         inputs=self.explained_inputs, layer_sums=self.layer_sums)
            session = ort.InferenceSession(compiled.model.SerializeToString(), self.session_options,
                                           providers=self.providers)
            self._compiled[mode] = (compiled, session)
        return self._compiled[mode]

    def explain(self, x, target=None, mode: str = "logit", output_relevance=None,
                batch_size: int | None = None) -> Explanation:
        """Explain a batch. `x`: an array (single-input models) or a dict input name -> array.

        target: None (the predicted class), an int for every sample, or one int per sample.
        mode: "logit" (default), "one", "prob", or "custom" with `output_relevance` shaped like the logits.
        """
        compiled, session = self._session(mode)
        feeds = self._feeds(compiled, session, x)
        n = next(iter(feeds.values())).shape[0]
        n_classes = compiled.n_classes
        if mode == "custom":
            if output_relevance is None:
                raise InputError("mode='custom' needs output_relevance, an array shaped [batch, classes]")
            start = np.asarray(output_relevance, dtype=np.float32)
            if start.shape != (n, n_classes):
                raise InputError(f"output_relevance has shape {start.shape}; expected {(n, n_classes)}")
            feeds[compiled.custom_input] = start
        else:
            feeds[compiled.target_input] = _targets(target, n, n_classes)
        step = batch_size or n
        chunks = [session.run(None, {k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
        names = [o.name for o in session.get_outputs()]
        merged = {name: np.concatenate([c[k] for c in chunks], axis=0) if chunks[0][k].ndim else chunks[0][k]
                  for k, name in enumerate(names)}
        relevances = {inp: merged[out] for inp, out in compiled.relevance_outputs.items()}
        return Explanation(
            relevance=next(iter(relevances.values())),
            outputs=[merged[name] for name in compiled.output_names],
            target=merged[compiled.target_output] if compiled.target_output else None,
            relevances=relevances,
            layer_sums={name: merged[name] for name in compiled.layer_sum_outputs},
            layer_abs_sums={name: merged[abs_sum_name(name)] for name in compiled.layer_sum_outputs},
        )

    __call__ = explain

    def _feeds(self, compiled: CompiledExplainer, session, x) -> dict[str, np.ndarray]:
        declared = {i.name: i for i in session.get_inputs()}
        model_inputs = compiled.inputs
        if isinstance(x, dict):
            missing = [name for name in model_inputs if name not in x]
            unknown = [name for name in x if name not in model_inputs]
            if missing or unknown:
                raise InputError(f"inputs given {sorted(x)}, but the model takes {model_inputs}")
            arrays = dict(x)
        else:
            if len(model_inputs) != 1:
                raise InputError(f"the model has inputs {model_inputs}: pass a dict name -> array")
            arrays = {model_inputs[0]: x}
        feeds, batch = {}, None
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.kind not in "fiub":
                raise InputError(f"input '{name}' has dtype {array.dtype}; give numbers")
            array = np.ascontiguousarray(array, dtype=np.float32) if array.dtype != np.float32 else array
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


def _default_session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _targets(target, n: int, n_classes: int) -> np.ndarray:
    if target is None:
        return np.full(n, -1, dtype=np.int64)
    array = np.asarray(target)
    if array.ndim == 0:
        array = np.full(n, int(array), dtype=np.int64)
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise InputError(f"target must be None, an int, or {n} ints (one per sample); got {target!r}")
    if np.any(array < 0) or np.any(array >= n_classes):
        raise InputError(f"target {array.tolist()} out of range: the model has {n_classes} classes (0..{n_classes - 1})")
    return array.astype(np.int64)
