"""The bounded-memory explainer (`memory="low"`): the relevance pass recomputes the forward tensors it reads
instead of keeping them alive from the forward pass, as gradient checkpointing does for a backward pass.

By default an explainer keeps every forward tensor its relevance nodes read until the reverse walk reaches
them: for a decoder, every layer's attention scores and probabilities ([heads, seq, seq] each), so memory
grows with layers x seq^2. Here the forward keeps only checkpoints:
  - the explained tensors (token embeddings, images) and the model's outputs;
  - what does not depend on their values and reaches more than one block (attention masks and rotary tables,
    even where they are computed from the explained tensor's shape): computed once, shared; what reaches one
    block only (a layer's slice of the mask) is recomputed there;
  - the outputs of residual joins (kind "join", on the stream: read by the next join): one or two per
    transformer block, [seq, hidden] each.
Every other forward tensor a relevance node reads is computed again inside the relevance graph, from the
nearest checkpoints, by copies of the forward nodes placed right before the first relevance node that reads
it. Where a relevance node reads only the shape (a Reshape or a Concat sent back), the dims are read off kept
tensors instead, one of the same shape or one per dim that has it (the dims named by onnxruntime's symbolic
shape inference): a copy made early for a shape would make onnxruntime compute, and hold, what it reads (an
attention's output: every head's probabilities) long before the relevance pass needs them. The forward then
frees a block's internals as soon as the next block has read them, and the relevance pass holds one block's
recomputed internals at a time (one head's, with the attention split per head and each head's signals tied:
canonical/heads.py, walk.Walk._tie_heads; of that head, one chunk of queries at a time: query_chunks.py).

onnxruntime must run each copy late, when the relevance pass reaches it: its default order runs a node as
soon as its inputs exist (the copies would run during the forward and be held all the same), and
common-subexpression elimination would merge a copy back into the forward node it copies. So each
checkpoint read by a copy that reads no other copy is first made to depend on the relevance signal that
triggers the copy: c + 0 * (one element of the signal), exact, one pass over c (a copy that reads another
copy waits and differs already). The explainer then needs no session settings (a server runs it as it is).
A float cast to float of a checkpoint (torch's exports cast each layer's mask so) is read as the checkpoint.

Both forms recompute the statistics of decomposed norms (RMSNorm's and LayerNorm's mean of squares, its
root and reciprocal: one reduction over a [seq, hidden] tensor) and the insides of decomposed erf GELUs
instead of reading the forward's: a read inside the pattern stops onnxruntime fusing the norm (the GELU)
into one kernel, which rounds differently, and the two forms would then explain slightly different forwards
(4e-5 relative on a 12-layer Llama, 3.4e-5 on a ViT-L/16 at 224 px). Both forwards are then fused as the
model's inference is.

A network without joins (VGG) has no checkpoint between its input and its output: the copies would be one
whole forward, held as before, so nothing is saved there.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..canonical.shapes import outer_reads, rename_outer_reads, symbolic_dims
from ..ops.context import Builder

RECOMPUTED = "/recomputed"
SHAPE_READS = ("Shape", "Size")   # relevance nodes that read a forward tensor's shape, not its values
STREAM_OPS = ("Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Dropout")


def dims_signature(fwd, name: str) -> tuple | None:
    """The tensor's dims as ints and symbolic names (one name, one size, in an inferred graph), or None."""
    value = fwd.value_infos.get(name)
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.dim_param:
            dims.append(d.dim_param)
        else:
            return None
    return tuple(dims)


def dims_signatures(fwd, model: onnx.ModelProto, memory: str):
    """name -> the tensor's dims, ints and symbolic names, or None: for the low form from onnxruntime's symbolic
    shape inference, which knows the dims of an export's computed reshapes (the recomputation reads more
    shapes off kept tensors then), where it succeeds; else from the model's value_info."""
    symbolic = symbolic_dims(model) if memory == "low" else {}
    if not symbolic:
        return lambda name: dims_signature(fwd, name)
    return lambda name: (tuple(symbolic[name]) if name in symbolic and all(isinstance(d, int) or d
                                                                           for d in symbolic[name]) else None)


def checkpoints(fwd, analysis, kept_outputs: set[str]) -> set[str]:
    """The forward tensors the low-memory explainer keeps (the module's docstring)."""
    sources = set(analysis.all_sources)
    # on their values: a causal mask built from their shape alone is computed once
    depends = fwd.descendants(list(sources), skip_ops=SHAPE_READS)
    joins = _residual_joins(fwd, analysis)
    return _shared_between_blocks(fwd, depends, joins) | sources | joins | kept_outputs


def _residual_joins(fwd, analysis) -> set[str]:
    """The outputs of the joins on the residual stream: those another join reads (through ops that only move
    or cast elements, as torch's exports cast the stream in each norm), and the last ones, that no join comes
    after. A join inside a block (the rotary embedding's q * cos + rotate(q) * sin, which the attention reads)
    is recomputed with the block."""
    joins = {node.output[0] for node in fwd.nodes if analysis.kinds.get(node.name) == "join"}
    before_a_join: set[str] = set()   # tensors from which a join can be reached
    for node in reversed(fwd.nodes):
        if node.output[0] in joins or any(o in before_a_join for o in node.output):
            before_a_join.update(i for i in node.input if i)

    def read_by_a_join(tensor: str) -> bool:
        for consumer in fwd.consumers.get(tensor, []):
            if consumer.output[0] in joins or (consumer.op_type in STREAM_OPS
                                               and read_by_a_join(consumer.output[0])):
                return True
        return False
    return {join for join in joins if join not in before_a_join or read_by_a_join(join)}


def _shared_between_blocks(fwd, depends: set[str], joins: set[str]) -> set[str]:
    """Of the tensors that do not depend on the sources' values, those that reach the computation of more than
    one block (between residual joins): a mask that every layer slices. A tensor that reaches one block only
    (that layer's slice of the mask) is recomputed in it from the shared one."""
    block: dict[str, int] = {}   # dependent tensor -> how many joins precede it
    for node in fwd.nodes:
        if any(o in depends for o in node.output if o):
            depth = max((block.get(i, 0) for i in node.input if i in depends), default=0)
            depth += any(o in joins for o in node.output)
            block.update((o, depth) for o in node.output if o)
    reaches: dict[str, set[int]] = {}   # independent tensor -> the blocks whose computation reads it
    for node in reversed(fwd.nodes):
        if any(o in depends for o in node.output if o):
            found = {max(block[o] for o in node.output if o in block)}
        else:
            found = set().union(*(reaches.get(o, set()) for o in node.output if o))
        for name in node.input:
            if name and name not in depends:
                reaches.setdefault(name, set()).update(found)
    return {name for name, blocks in reaches.items() if len(blocks) > 1 and fwd.producer.get(name) is not None}


def everything_but_norm_statistics(fwd, analysis, forward_nodes: list[onnx.NodeProto]) -> set[str]:
    """What the default form keeps: the inputs and every tensor of the forward nodes (with the outputs the walk
    asked of them, such as MaxPool's indices) but the statistics of decomposed norms (the square, its mean,
    + eps, the root and its reciprocal) and the insides of decomposed erf GELUs, which the relevance pass
    recomputes (the module's docstring)."""
    statistics = _erf_gelu_insides(fwd)
    for sigma in analysis.sigmas:
        statistics.update(_statistics(fwd, sigma))
        for consumer in fwd.consumers.get(sigma, []):
            if consumer.op_type == "Reciprocal" or (consumer.op_type == "Div" and consumer.input[1] == sigma
                                                    and fwd.const(consumer.input[0]) is not None):
                statistics.add(consumer.output[0])
    return ({o for node in forward_nodes for o in node.output if o} | set(fwd.input_names)) - statistics


def _statistics(fwd, sigma: str) -> list[str]:
    """sigma = Sqrt(ReduceMean(square) [+ eps]) (as analysis.normalisers found it) and the tensors it is
    computed from, back to the square."""
    chain, tensor = [sigma], sigma
    while (node := fwd.producer.get(tensor)) is not None and node.op_type in ("Sqrt", "Add", "ReduceMean"):
        computed = [i for i in node.input if i and fwd.const(i) is None]
        if len(computed) != 1:
            break
        tensor = computed[0]
        chain.append(tensor)
        if node.op_type == "ReduceMean":   # reached the square, whose input is the norm's own
            break
    return chain


def norm_inputs_after_heads(fwd, analysis, keep: set[str], head_outputs: set[str]) -> set[str]:
    """The inputs of decomposed norms that the relevance pass would recompute from whole attention heads: a
    norm after the attention, before its residual join (Gemma's), whose statistics the relevance pass needs
    before it reaches the heads. Where the heads' relevance goes over query chunks (query_chunks.py), nothing
    else in the relevance pass reads a whole head, and recomputing them for the statistics alone would
    compute every head's scores twice: kept instead, [seq, hidden] per norm."""
    found = set()
    for sigma in analysis.sigmas:
        square = fwd.producer.get(_statistics(fwd, sigma)[-1])
        if square is None or square.op_type not in ("Pow", "Mul") or (square.op_type == "Mul"
                                                                      and square.input[0] != square.input[1]):
            continue
        norm_input = square.input[0]
        stack, seen = [norm_input], set()
        while stack:   # back from the norm's input to the checkpoints: is a head's output on the way?
            tensor = stack.pop()
            if tensor in head_outputs:
                found.add(norm_input)
                break
            if tensor in keep or tensor in seen or tensor not in fwd.producer:
                continue
            seen.add(tensor)
            stack.extend(i for i in fwd.producer[tensor].input if i)
    return found


def _erf_gelu_insides(fwd) -> set[str]:
    """The tensors inside each decomposed GELU, x * (1 + erf(x / sqrt 2)) * 0.5 in any order of its products:
    the erf's scaled input, the erf, 1 + erf and any product before the last. onnxruntime fuses the pattern
    into one Gelu kernel (BiasGelu with the dense layer's bias) only where nothing else reads these; its erf
    rounds differently from the Erf op's."""
    insides = set()
    for erf in (node for node in fwd.nodes if node.op_type == "Erf"):
        scaled = fwd.producer.get(erf.input[0])
        chain = [scaled] if scaled is not None and scaled.op_type in ("Div", "Mul") else []
        node = erf
        for _ in range(4):   # erf, + 1, and the two products: no further, whatever reads the GELU
            chain.append(node)
            readers = fwd.consumers.get(node.output[0], [])
            if len(readers) != 1 or readers[0].op_type not in ("Add", "Mul"):
                break
            node = readers[0]
        insides.update(n.output[0] for n in chain[:-1])
    return insides


def recompute_forward(forward_nodes: list[onnx.NodeProto], relevance_nodes: list[onnx.NodeProto],
                      keep: set[str], b: Builder, is_float, explained: str, signature) -> list[onnx.NodeProto]:
    """The relevance nodes, each preceded by copies of the forward nodes that compute, from checkpoints, the
    forward tensors it reads that are not kept; every copy is made once, where it is first needed, and reads
    its float checkpoints through a dependency on the signal that needs it: the relevance node's own input
    computed from the explained output, or else (a ratio of forward tensors) the last such signal emitted.
    A relevance node that reads only the shape of a tensor reads it off a kept tensor of the same shape where
    there is one. `is_float(name)`: a float tensor; `signature(name)`: its dims, ints and symbolic names
    (None where one is unknown)."""
    producer = {o: node for node in forward_nodes for o in node.output if o}
    kept_like: dict[tuple, str] = {}   # a shape, with its symbolic dims -> a kept tensor of that shape
    kept_axis: dict[str, tuple[str, int]] = {}   # a symbolic dim -> (a kept tensor, its axis of that size)
    for name in sorted(keep, key=lambda name: (name in producer, name)):   # graph inputs first: alive throughout
        dims = signature(name)
        if dims is not None:
            kept_like.setdefault(dims, name)
            for axis, dim in enumerate(dims):
                if isinstance(dim, str):
                    kept_axis.setdefault(dim, (name, axis))
    dim_reads: dict[object, str] = {}
    copies: dict[str, str] = {}    # forward tensor -> its recomputed copy
    as_kept: set[str] = set()      # forward tensors whose "copy" is a kept tensor itself (a cast to its own type)
    gates: dict[tuple[str, str], str] = {}
    zeros: dict[str, str] = {}     # signal -> 0 * one of its elements
    late = {explained}             # tensors computed from the explained output: the walk's signals
    latest: str | None = None
    result: list[onnx.NodeProto] = []

    def emit(op: str, inputs: list[str], name: str, **attrs) -> str:
        result.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def gated(checkpoint: str, signal: str | None) -> str:
        if signal is None or checkpoint not in producer and checkpoint not in keep or not is_float(checkpoint):
            return checkpoint
        if signal not in zeros:
            flat = emit("Reshape", [signal, b.ints([-1])], f"{signal}/flat")
            first = emit("Slice", [flat, b.ints([0]), b.ints([1])], f"{signal}/first")
            zeros[signal] = emit("Mul", [emit("Cast", [first], f"{signal}/first_float", to=TensorProto.FLOAT),
                                         b.scalar(0.0)], f"{signal}/zero")
        key = (checkpoint, signal)
        if key not in gates:
            gates[key] = emit("Add", [checkpoint, zeros[signal]], f"{checkpoint}/after/{signal}")
        return gates[key]

    def recomputed(tensor: str, signal: str | None) -> str:
        # depth first, without recursion (a chain between two checkpoints can be long)
        stack = [tensor]
        while stack:
            top = stack[-1]
            if top in copies:
                stack.pop()
                continue
            node = producer[top]
            missing = [i for i in node.input if i and i not in keep and i in producer and i not in copies]
            if missing:
                stack.extend(missing)
                continue
            if node.op_type == "Cast" and is_float(node.input[0]) and {
                    a.name: helper.get_attribute_value(a) for a in node.attribute}.get("to") == TensorProto.FLOAT:
                # a float cast to float (torch's exports cast each layer's mask so) reads its input as it is
                source = node.input[0]
                copies[top] = copies.get(source, source)
                if source not in copies:
                    as_kept.add(top)
                stack.pop()
                continue
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = node.name + RECOMPUTED
            # a copy that reads another copy runs late and differs from the node it copies: its checkpoints are
            # read as they are, not through the signal (a layer's mask: one [seq, seq] pass less)
            after_a_copy = any(name in copies and name not in as_kept for name in node.input if name)
            for k, name in enumerate(copy.input):
                if not name:
                    continue
                if name not in copies or name in as_kept:
                    kept_tensor = copies.get(name, name)
                    copy.input[k] = kept_tensor if after_a_copy else gated(kept_tensor, signal)
                else:
                    copy.input[k] = copies[name]
            for k, name in enumerate(copy.output):
                if name:
                    copies[name] = copy.output[k] = name + RECOMPUTED
            result.append(copy)
            stack.pop()
        return copies[tensor]

    for node in relevance_nodes:
        inner = sorted(outer_reads(node))   # a Loop's body (compiler/query_chunks.py) reads Q, K^T, V, the signal
        signal = next((name for name in list(node.input) + inner if name in late and name != explained), latest)
        if any(name in late for name in list(node.input) + inner):
            late.update(o for o in node.output if o)
            latest = node.output[0] if node.output and node.output[0] else latest
        if node.op_type in SHAPE_READS and node.input[0] in producer and node.input[0] not in keep:
            same = kept_like.get(signature(node.input[0]))
            if same is not None:   # a kept tensor of the same shape: no copy just for a shape
                node.input[0] = same
            elif (dims := _read_dims(node, signature(node.input[0]))) is not None \
                    and all(isinstance(d, int) or d in kept_axis for d in dims):
                # its dims read off kept tensors that have them (a symbolic dim names one size)
                parts = [b.ints([d]) if isinstance(d, int) else dim_reads.get(d) or dim_reads.setdefault(
                    d, emit("Shape", [kept_axis[d][0]], f"{node.name}/dim/{d}", start=kept_axis[d][1],
                            end=kept_axis[d][1] + 1)) for d in dims]
                if node.op_type == "Shape":
                    result.append(helper.make_node("Concat", parts, list(node.output), name=node.name, axis=0))
                else:   # Size: the product of the dims
                    dims_read = emit("Concat", parts, f"{node.name}/dims", axis=0)
                    result.append(helper.make_node("ReduceProd", [dims_read], list(node.output), name=node.name,
                                                   keepdims=0))
                continue
        for k, name in enumerate(node.input):
            if name and name in producer and name not in keep:
                node.input[k] = recomputed(name, signal)
        rename_outer_reads(node, {name: recomputed(name, signal) for name in inner
                                  if name in producer and name not in keep})
        result.append(node)
    return result


def _read_dims(shape_node: onnx.NodeProto, dims: tuple | None) -> list | None:
    """The dims a Shape node reads of a tensor of `dims` (its start and end attributes applied; a Size node: all)."""
    if dims is None:
        return None
    if shape_node.op_type == "Size":
        return list(dims)
    attrs = {a.name: helper.get_attribute_value(a) for a in shape_node.attribute}
    return list(dims[attrs.get("start", 0):attrs.get("end", len(dims))])
