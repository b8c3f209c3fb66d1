"""Tiny modern vision architectures from timm and ultralytics, with seeded random weights (no download),
exported to ONNX the ways users do. Shared by tests/modern/test_modern_corpus.py and
tools/modern_corpus.py.

Random initialisations leave some signals dead or vanishing (BatchNorm with scale 1 and shift 0 after
a random ReLU stack, ConvNeXt's layer scale of 1e-6, YOLO's class bias prior of -10), and then every
check passes vacuously. So every BatchNorm / LayerNorm affine and every layer scale gets random
values, YOLO's class bias is reset, and BatchNorm statistics are calibrated on random batches.

timm and ultralytics import torchvision, whose wheel on the package index is a CUDA build that does not
import beside the CPU torch: tests/zennit_stub stands in for the few names they reach for (see
use_torchvision_stand_in).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STAND_IN = Path(__file__).resolve().parent.parent / "zennit_stub"
# torchvision's package metadata, which ultralytics reads at import (its version); on the path for that
# import only, since transformers takes torchvision for installed where it finds metadata
STAND_IN_VERSION = Path(__file__).resolve().parent / "torchvision_version"
EXPORTS = ("torchscript", "torchscript_dynamic", "dynamo", "dynamo_dynamic")
OPSET = 17
SEED = 0


def use_torchvision_stand_in() -> None:
    """Put the tests' torchvision stand-in on the path (where no torchvision is installed) and keep
    ultralytics offline: no connectivity probe, no pip auto-install, settings in a scratch folder."""
    if importlib.util.find_spec("torchvision") is None and str(STAND_IN) not in sys.path:
        sys.path.insert(0, str(STAND_IN))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_VERBOSE"] = "0"
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "onnxlrp-tests-ultralytics"))


@dataclass(frozen=True)
class Spec:
    package: str              # where it comes from: timm or ultralytics
    size: int                 # input height = width
    piecewise_linear: bool    # ReLU / MaxPool / AveragePool / BatchNorm only: LRP-0 equals gradient x input
    detector: bool = False    # a YOLO head [N, 4 + classes, boxes]: explain one box's class score


CLASSES = 10
MODELS = {   # what each brings: docs/corpus.md
    "efficientnet": Spec("timm", 64, False),
    "mobilenetv3": Spec("timm", 64, False),
    "convnext": Spec("timm", 64, False),
    "resnet_d": Spec("timm", 64, True),
    "repvgg": Spec("timm", 64, True),
    "deit": Spec("timm", 32, False),
    "mobilevit": Spec("timm", 64, False),
    "yolov8": Spec("ultralytics", 64, False, detector=True),
}


def _timm(name: str, **kwargs):
    import timm
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)


def _repvgg():
    """RepVGG-A-shaped, narrow: each stage's second block has the BatchNorm identity branch."""
    from timm.models.byobnet import ByobNet, ByoModelCfg, _rep_vgg_bcfg
    cfg = ByoModelCfg(blocks=_rep_vgg_bcfg(d=(2, 2, 2, 1), wf=(0.25, 0.25, 0.25, 0.25)), stem_type="rep", stem_chs=16)
    return ByobNet(cfg, num_classes=CLASSES)


def _mobilevit():
    """mobilevit_xxs with one block per stage and one transformer layer per MobileViT block (the export of
    the full depth takes 20 s)."""
    from timm.models.byobnet import ByobNet, ByoModelCfg
    from timm.models.mobilevit import _inverted_residual_block, _mobilevit_block
    cfg = ByoModelCfg(
        blocks=(_inverted_residual_block(d=1, c=16, s=1, br=2.0), _inverted_residual_block(d=1, c=24, s=2, br=2.0),
                _mobilevit_block(d=1, c=48, s=2, transformer_dim=64, transformer_depth=1, patch_size=2, br=2.0),
                _mobilevit_block(d=1, c=64, s=2, transformer_dim=80, transformer_depth=1, patch_size=2, br=2.0)),
        stem_chs=16, stem_type="3x3", stem_pool="", downsample="", act_layer="silu", num_features=128)
    return ByobNet(cfg, num_classes=CLASSES)


def _yolov8():
    import torch
    from ultralytics.nn.tasks import DetectionModel

    class Predictions(torch.nn.Module):
        """The decoded predictions [N, 4 + classes, boxes] alone (eval mode adds the raw feature maps)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out[0] if isinstance(out, tuple) else out   # training mode (calibration): the raw dict

    model = DetectionModel("yolov8n.yaml", nc=5, verbose=False)
    head = model.model[-1]
    head.dynamic = True   # anchors from the feature maps' sizes on every call (ultralytics' exporter does so)
    for convs in head.cv3:   # the class bias prior log(5 / nc / (640 / stride)^2) leaves every score ~1e-5
        torch.nn.init.uniform_(convs[-1].bias, -1.0, 1.0)
    return Predictions(model)


BUILDERS = {
    "efficientnet": lambda: _timm("test_efficientnet"),
    "mobilenetv3": lambda: _timm("mobilenetv3_small_050", depth_multiplier=0.3),   # one block per stage
    "convnext": lambda: _timm("test_convnext", act_layer="gelu"),
    "resnet_d": lambda: _timm("test_resnet"),
    "repvgg": _repvgg,
    "deit": lambda: _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2),
    "mobilevit": _mobilevit,
    "yolov8": _yolov8,
}


def import_package(package: str):
    """Import timm or ultralytics; ultralytics' import-time settings (numpy and torch print options,
    OMP_NUM_THREADS=1 for child processes, warning filters, its patch of PIL's Image.open) are undone so that
    other tests see none."""
    import torch
    from PIL import Image
    use_torchvision_stand_in()
    if package in sys.modules:
        return sys.modules[package]
    environment = dict(os.environ)
    numpy_options = np.get_printoptions()
    image_open = Image.open
    stand_in = STAND_IN in map(Path, sys.path)
    if stand_in:
        sys.path.append(str(STAND_IN_VERSION))
    try:
        with warnings.catch_warnings():
            module = importlib.import_module(package)
    finally:
        if stand_in:
            sys.path.remove(str(STAND_IN_VERSION))
        np.set_printoptions(**numpy_options)
        Image.open = image_open
        torch.set_printoptions(profile="default")
        for name in set(os.environ) - set(environment):
            del os.environ[name]
        os.environ.update(environment)
    return module


def unavailable(name: str) -> str | None:
    """Why model `name` cannot be built here (its package is missing or does not import), or None."""
    package = MODELS[name].package
    try:
        import_package(package)
    except Exception as exc:   # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        return f"{package} is not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def randomise_norms(model, generator) -> None:
    """Random scales in [0.5, 1.5] and shifts in [-0.2, 0.2] for every BatchNorm and LayerNorm affine,
    layer scales in [0.5, 1.5]."""
    import torch
    for module in model.modules():
        is_norm = isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm,
                                      torch.nn.GroupNorm))
        if is_norm and getattr(module, "weight", None) is not None:
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.4 * torch.rand(module.bias.shape, generator=generator) - 0.2)
        for name, param in module.named_parameters(recurse=False):
            if name == "gamma":   # timm's layer scale (ConvNeXt, LayerScale)
                with torch.no_grad():
                    param.copy_(0.5 + torch.rand(param.shape, generator=generator))


def calibrate_batch_norm(model, size: int, generator, batches: int = 4, batch: int = 8) -> None:
    """BatchNorm running statistics = the averages over random N(0, 1) batches, as a trained model's
    statistics are over its data; the rest of the model unchanged (no dropout: the rates are 0)."""
    import torch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None   # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, size, size, generator=generator))
    model.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def build(name: str):
    """The model `name` of MODELS, in eval mode, with seeded random weights."""
    import torch
    import_package(MODELS[name].package)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BUILDERS[name]()
    randomise_norms(model, generator)
    calibrate_batch_norm(model, MODELS[name].size, generator)
    return model.eval()


def sample_input(name: str, batch: int = 2, seed: int = 1) -> np.ndarray:
    size = MODELS[name].size
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def export(model, name: str, way: str, path: Path) -> Path:
    """Write `model` as ONNX to `path`: TorchScript (opset 17) or dynamo, with a static batch of 1 or a
    dynamic batch."""
    import torch
    dynamic = way.endswith("_dynamic")
    example = (torch.as_tensor(sample_input(name, batch=2 if dynamic else 1)),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if way.startswith("torchscript"):
            axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
            torch.onnx.export(model, example, str(path), input_names=["input"], output_names=["output"],
                              opset_version=OPSET, dynamic_axes=axes, dynamo=False)
        elif way.startswith("dynamo"):
            shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
            program = torch.onnx.export(model, example, input_names=["input"], output_names=["output"],
                                        dynamic_shapes=shapes, dynamo=True)
            program.save(str(path))
        else:
            raise ValueError(f"unknown export {way!r}; choose one of {EXPORTS}")
    return path


# ---- the checks, shared by the tests and tools/modern_corpus.py -------------------------------------

COMPOSITES = ("epsilon_plus_flat", "attn_lrp")
NORM_OPS = ("Add", "Sum", "AveragePool", "GlobalAveragePool", "ReduceMean")   # weight-free, Norm by default
GRADIENT_TOLERANCE = 5e-3   # relative L2 of LRP-0 against float64 gradient x input
DETECTED_CLASS = 0   # YOLOv8: the class whose score of one box is explained


def batch_of(way: str) -> int:
    """Static exports take the batch they were exported with (1); dynamic ones get 2."""
    return 2 if way.endswith("_dynamic") else 1


def onnxruntime_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def detection_boxes(scores: np.ndarray) -> np.ndarray:
    """Per sample, the box where DETECTED_CLASS scores highest ([N, 4 + classes, boxes] output)."""
    return np.argmax(scores[:, 4 + DETECTED_CLASS, :], axis=1)


@dataclass
class Case:
    """One explanation of a corpus model and what it is checked against."""
    x: np.ndarray
    relevance: np.ndarray
    outputs: np.ndarray        # the explainer's model outputs
    reference: np.ndarray      # onnxruntime's outputs of the exported model
    explained: np.ndarray      # per sample, the score explained (a logit, or a box's class score)
    target: np.ndarray         # per sample, the class explained (classifiers) or the box (YOLO)

    @property
    def conservation(self) -> np.ndarray:
        """Per sample: the sum of the input relevance over the explained score."""
        return self.relevance.reshape(len(self.x), -1).sum(axis=1) / self.explained


def explain(path: Path, name: str, way: str, composite) -> Case:
    """Explain a batch of the exported model `path` with `composite` (a name or a Composite): the
    predicted class of a classifier, the DETECTED_CLASS score of the best box of a YOLO head."""
    from onnxlrp import Explainer
    x = sample_input(name, batch_of(way))
    reference = onnxruntime_outputs(path, x)
    explainer = Explainer(str(path), composite=composite)
    rows = np.arange(len(x))
    if MODELS[name].detector:
        boxes = detection_boxes(reference)
        result = explainer.explain(x, box=boxes, target=DETECTED_CLASS)
        explained, chosen = reference[rows, 4 + DETECTED_CLASS, boxes], boxes
    else:
        result = explainer.explain(x)
        chosen = np.asarray(result.target)
        explained = reference[rows, chosen]
    return Case(x, result.relevance, result.outputs[0], reference, explained, chosen)


def check_outputs_and_relevance(case: Case) -> None:
    """The explainer computes the model's outputs, and a finite, input-shaped, non-zero relevance per sample
    (AssertionError with a one-line message otherwise)."""
    scale = float(np.abs(case.reference).max())
    error = float(np.abs(case.outputs - case.reference).max()) if case.outputs.shape == case.reference.shape else None
    assert error is not None, f"outputs shaped {case.outputs.shape}, onnxruntime's {case.reference.shape}"
    assert error <= 1e-4 * max(scale, 1.0), f"outputs differ from onnxruntime's by {error:.3g} (scale {scale:.3g})"
    assert case.relevance.shape == case.x.shape, f"relevance shaped {case.relevance.shape}, input {case.x.shape}"
    assert np.all(np.isfinite(case.relevance)), "relevance is not finite"
    silent = [i for i, r in enumerate(case.relevance) if not np.any(r)]
    assert not silent, f"relevance is all zero for samples {silent}"


def lrp0_unstabilised():
    """LRP-0 with no stabiliser anywhere: Epsilon(0) on weighted layers, Norm(0) on the sums and average
    pools (whose default 1e-6 alone moves a ResNet-D's relevance by ~1e-2 relative where a residual sum
    is near 0). docs/rules.md: then LRP-0 is exactly gradient x input on a ReLU network."""
    from onnxlrp import composites, rules
    return composites.LayerMap([(op, rules.Norm(stabilizer=0.0)) for op in NORM_OPS],
                               base=composites.Uniform(rules.Epsilon(epsilon=0.0)))


def gradient_times_input(model, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """d(logit of `target`) / dx * x in float64 torch (the model itself is left in float32)."""
    import copy

    import torch
    twin = copy.deepcopy(model).double().eval()
    inputs = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits = twin(inputs)
    logits[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    return (inputs.grad * inputs).detach().numpy()


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
