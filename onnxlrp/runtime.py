"""Explainer: compiles the explainer model once per output-relevance mode and runs it with onnxruntime."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from . import composites as composites_module
from .compiler import CompiledExplainer, abs_sum_name, compile_explainer
from .errors import InputError
from .model import load_model
from .output_relevance import MODES

# The CUDA provider with full float32 convolutions and matrix products: onnxruntime's default TF32 keeps 10
# bits of mantissa (a relative error near 5e-4 per product), above RULES.md's 1e-4 agreement with Zennit.
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

    # With several targets per sample (top_k, or a [batch, k] target) every per-sample array above has
    # a second axis of length k after the batch axis: relevance[i, j] explains target[i, j].


class Explainer:
    """Explain a model's predictions with LRP. One explainer may be used from several threads at once
    (onnxruntime sessions run concurrently).

    >>> ex = Explainer("model.onnx", composite=composites.EpsilonPlusFlat())
    >>> res = ex.explain(x, target=None)     # None: the predicted class
    >>> res.relevance.shape == x.shape
    """

    def __init__(self, model, composite=None, providers=None, output=None, inputs=None,
                 session_options: ort.SessionOptions | None = None, layer_sums: bool = False,
                 threads: int | None = None, layer_relevances: bool = False):
        self.model = load_model(model)
        self.composite = composites_module.get(composite)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        _check_providers(self.providers)
        self.output = output
        self.explained_inputs = inputs
        self.layer_sums = layer_sums
        self.layer_relevances = layer_relevances
        self.session_options = session_options or default_session_options(threads)
        self._compiled: dict[str, CompiledExplainer] = {}
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._forward: ort.InferenceSession | None = None
        self._lock = threading.Lock()   # sessions are built once, even when threads share this explainer

    def replace(self, **changes) -> "Explainer":
        """A new Explainer (compiled anew) with this one's settings except `changes`, which take the
        constructor's names: model (a randomised copy, a model with an inner tensor exposed), composite,
        output, layer_sums, layer_relevances, ..."""
        settings = dict(model=self.model, composite=self.composite, providers=self.providers, output=self.output,
                        inputs=self.explained_inputs, session_options=self.session_options,
                        layer_sums=self.layer_sums, layer_relevances=self.layer_relevances)
        unknown = set(changes) - set(settings)
        if unknown:
            raise TypeError(f"Explainer.replace() got unknown settings {sorted(unknown)}")
        return Explainer(**{**settings, **changes})

    def compiled(self, mode: str = "logit") -> CompiledExplainer:
        """The explainer model for `mode`, compiled once (no session is built for it until one is run)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        with self._lock:
            if mode not in self._compiled:
                self._compiled[mode] = compile_explainer(
                    self.model, composite=self.composite, mode=mode, output=self.output,
                    inputs=self.explained_inputs, layer_sums=self.layer_sums, layer_relevances=self.layer_relevances)
                release_freed_memory()
            return self._compiled[mode]

    def _session(self, mode: str):
        compiled = self.compiled(mode)
        with self._lock:
            if mode not in self._sessions:
                self._sessions[mode] = new_session(compiled.model.SerializeToString(), self.session_options,
                                                   self.providers)
            return compiled, self._sessions[mode]

    def logits(self, x, batch_size: int | None = None) -> np.ndarray:
        """The explained output (the logits) for a batch, from the plain forward model: the explainer's own
        forward nodes alone, without any relevance node."""
        compiled, session = self._session("logit")
        with self._lock:
            if self._forward is None:
                self._forward = new_session(forward_model(compiled).SerializeToString(), self.session_options,
                                            self.providers)
        feeds = self._feeds(compiled, session, x)
        n = next(iter(feeds.values())).shape[0]
        step = batch_size or n
        return np.concatenate([self._forward.run(None, {k: v[i:i + step] for k, v in feeds.items()})[0]
                               for i in range(0, n, step)], axis=0)

    def explain(self, x, target=None, mode: str = "logit", output_relevance=None,
                batch_size: int | None = None, top_k: int | None = None, position=None) -> Explanation:
        """Explain a batch. `x`: an array (single-input models) or a dict input name -> array.

        target: None (the predicted class), an int for every sample, one int per sample (-1: that sample's
            predicted class), or a
            [batch, k] array of ints: k explanations per sample in one call.
        top_k: explain each sample's k highest-scoring classes, best first (instead of target).
        mode: "logit" (default), "one", "prob", "contrastive", or "custom" with `output_relevance`
            shaped like the logits.
        position: for sequence outputs [batch, seq, vocab] (transformer composites): the position whose
            token is explained, an int or one per sample (default -1, the last).
        """
        if top_k is not None:
            if target is not None:
                raise InputError("give either target or top_k, not both")
            scores = self.logits(x, batch_size)
            if scores.ndim == 3:   # a sequence output: the scores at the explained position
                positions = _positions(position, scores.shape[0], scores.shape[1])
                scores = scores[np.arange(scores.shape[0]), positions]
            if not 1 <= top_k <= scores.shape[1]:
                raise InputError(f"top_k must be between 1 and the number of classes ({scores.shape[1]}); got {top_k}")
            target = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        if target is not None and np.ndim(target) == 2:
            return self._explain_several(x, np.asarray(target), mode, batch_size, position)
        compiled, session = self._session(mode)
        feeds = self._feeds(compiled, session, x)
        n = next(iter(feeds.values())).shape[0]
        n_classes = compiled.n_classes
        if mode == "custom":
            if output_relevance is None:
                raise InputError("mode='custom' needs output_relevance, an array shaped [batch, classes]")
            start = np.asarray(output_relevance, dtype=np.float32)
            if start.shape != (n,) + tuple(compiled.start_shape):
                raise InputError(f"output_relevance has shape {start.shape}; expected {(n,) + tuple(compiled.start_shape)}")
            feeds[compiled.custom_input] = start
        else:
            feeds[compiled.target_input] = _targets(target, n, n_classes)
        if compiled.position_input:
            length = feeds[next(iter(compiled.relevance_outputs))].shape[1]   # the token ids' sequence
            feeds[compiled.position_input] = _positions(position, n, length)
        elif position is not None:
            raise InputError("position= is for sequence outputs [batch, seq, vocab]; this model's explained output "
                             f"has shape [batch, {', '.join(str(d) for d in compiled.start_shape)}]")
        step = batch_size or n
        chunks = [session.run(None, {k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
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
        )

    __call__ = explain

    def _explain_several(self, x, targets: np.ndarray, mode: str, batch_size: int | None,
                         position=None) -> Explanation:
        """k targets per sample: every sample repeated k times in one batch, then split back to [n, k, ...]."""
        arrays = x if isinstance(x, dict) else {None: x}
        n = len(next(iter(arrays.values())))
        if targets.shape[0] != n or targets.dtype.kind not in "iu":
            raise InputError(f"a 2-D target must be ints shaped [batch={n}, k]; got {targets.shape} {targets.dtype}")
        k = targets.shape[1]
        repeated = {name: np.repeat(np.asarray(value), k, axis=0) for name, value in arrays.items()}
        if position is not None and np.ndim(position) == 1:
            position = np.repeat(np.asarray(position), k)
        flat = self.explain(repeated if isinstance(x, dict) else repeated[None], target=targets.reshape(-1),
                            mode=mode, batch_size=batch_size, position=position)

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
        )

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


def new_session(model_bytes, options, providers: list) -> ort.InferenceSession:
    """An onnxruntime session on `providers`, with the heap its build freed handed back. onnxruntime falls
    back to the CPU, with a log line only, when a provider it was built with cannot load (CUDA or cuDNN
    libraries missing): that is an error here."""
    session = ort.InferenceSession(model_bytes, options, providers=providers)
    release_freed_memory()
    wanted = provider_name(providers[0])
    if wanted not in session.get_providers():
        hint = (" (onnxruntime-gpu needs the CUDA and cuDNN libraries of its version on the library path: "
                "pip install onnxruntime-gpu[cuda,cudnn])" if "CUDA" in wanted else "")
        raise InputError(f"onnxruntime could not start {wanted}; the session runs on {session.get_providers()}"
                         f"{hint}")
    return session


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
