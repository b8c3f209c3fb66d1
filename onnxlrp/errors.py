"""Errors that onnxlrp raises on purpose: each carries a message a user can act on."""


class OnnxLrpError(Exception):
    """Base class: a problem with the model, the input or the options, explained in one line."""


class ModelLoadError(OnnxLrpError):
    """The model file cannot be read or is not a valid ONNX model."""


class UnsupportedModelError(OnnxLrpError):
    """The model uses a construct onnxlrp cannot explain (and says how to work around it)."""


def mixes_inputs(op_type: str) -> bool:
    """Fused ops whose output mixes several computed inputs (attention over queries, keys and values, experts
    weighted by a router, a search loop around a model): passing relevance to the first input or treating the
    op as linear in it would be wrong, so declaring them is not a remedy."""
    return "Attention" in op_type or op_type in MIXING_OPS


MIXING_OPS = frozenset({"MoE", "QMoE", "SparseMoE", "BeamSearch", "GreedySearch", "Sampling", "WhisperBeamSearch",
                        "GatedRelativePositionBias"})

# Ops that compute on quantized (integer) activations: relevance does not flow through integer tensors
QUANTIZED_ACTIVATION_OPS = frozenset({
    "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QGemm", "QAttention",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QLinearAdd", "QLinearMul",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearReduceMean", "QLinearWhere", "QEmbedLayerNormalization"})
QUANTIZED_REMEDY = (
    "it computes on quantized activations; onnxlrp explains weight-only quantized models (MatMulNBits, "
    "DequantizeLinear of weights), QDQ models (QuantizeLinear / DequantizeLinear pairs around float ops), dynamic "
    "int8 (quantize_dynamic) and the QOperator ops QLinearMatMul, QLinearConv and QLinearAdd, but not this one: "
    "quantize with onnxruntime.quantization's quantize_static(..., quant_format=QuantFormat.QDQ) or "
    "MatMulNBitsQuantizer, or explain the float model")


class UnsupportedOpError(UnsupportedModelError):
    """A node whose op has no relevance handler."""

    def __init__(self, op_type: str, node_name: str, detail: str = ""):
        self.op_type = op_type
        self.node_name = node_name
        if op_type in QUANTIZED_ACTIVATION_OPS:
            remedy = QUANTIZED_REMEDY
        elif mixes_inputs(op_type):
            remedy = ("it mixes several computed inputs, so declaring it pass or linear would be wrong: explain the "
                      "model exported without this fused op (torch.onnx, optimum, or before onnxruntime's "
                      "transformer optimizer)")
        else:
            remedy = (
                f"to go on, declare it: composites.LayerMap([(\"{op_type}\", rules.Pass())], base=...) passes "
                f"relevance through unchanged, rules.Norm() instead treats it as a linear map of its first input "
                f"(command line: --declare {op_type}=pass or --declare {op_type}=linear)"
            )
        message = f"op {op_type} (node '{node_name}') is not supported"
        if detail:
            message += f": {detail}"
        message += f"; {remedy}"
        super().__init__(message)


class InputError(OnnxLrpError):
    """The data given to explain() does not fit the model."""
