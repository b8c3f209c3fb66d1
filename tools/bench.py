"""Benchmark: plain onnxruntime inference vs onnxlrp vs Zennit on VGG-16 and ResNet-50, one process, one run.

    python tools/bench.py                          # both models, batch 1 and 8, 2 threads
    python tools/bench.py --models resnet50 --batches 1 --threads 2 --repeats 10
    python tools/bench.py --models resnet18,resnet101,vgg11,vgg19 --batches 1   # other sizes of both families

Sizes: vgg11, vgg13, vgg16, vgg19 (torchvision's configurations A, B, D, E, without BatchNorm); resnet18,
resnet34 (basic blocks), resnet50, resnet101, resnet152 (bottlenecks, stride on the 3 x 3 as torchvision's).

The architectures are built in torch with seeded random weights (no downloads) and exported to ONNX
(cached in --cache). Needs torch; Zennit (pip install --no-deps zennit) is timed when it imports.
Every timing: the same thread count (onnxruntime intra-op threads = torch threads), warm-up, the median
of the repeats, logit mode on the predicted class. Zennit runs on a BatchNorm-merged copy of the same
weights (what its canonizers do) with zennit.layer.Sum at the residual joins.
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxlrp import bench  # noqa: E402
from onnxlrp.runtime import CUDA_PROVIDERS  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    sys.exit("tools/bench.py builds its models with torch: pip install torch")


def _zennit():
    try:
        import importlib.util
        if importlib.util.find_spec("torchvision") is None:
            sys.path.insert(0, str(ROOT / "tests" / "zennit_stub"))
        import zennit.composites as composites
        from zennit.attribution import Gradient
        from zennit.layer import Sum
        return composites, Gradient, Sum
    except Exception:
        return None


ZENNIT = _zennit()
VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
VGG16 = VGG_CONFIGS["vgg16"]
# blocks per stage, and whether a block is a bottleneck (1x1, 3x3, 1x1, 4x wider) or basic (3x3, 3x3)
RESNET_CONFIGS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
                  "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True),
                  "resnet152": ((3, 8, 36, 3), True)}
MODELS = tuple(VGG_CONFIGS) + tuple(RESNET_CONFIGS)


class VGG(torch.nn.Module):
    def __init__(self, config=VGG16, classes=1000):
        super().__init__()
        layers, channels = [], 3
        for v in config:
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(channels, v, 3, padding=1), torch.nn.ReLU()]
                channels = v
        self.features = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(512 * 7 * 7, 4096), torch.nn.ReLU(), torch.nn.Dropout(),
            torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(4096, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class _Residual(torch.nn.Module):
    """The residual join of both block kinds: a projection shortcut where the shape changes, and for Zennit's
    twin zennit.layer.Sum in place of the +."""

    def _shortcut(self, c_in, c_out, stride, zennit_sum):
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(c_out))
        self.sum = ZENNIT[2]() if zennit_sum else None

    def _join(self, h, x):
        skip = x if self.down is None else self.down(x)
        return self.sum(torch.stack([h, skip], dim=-1)) if self.sum is not None else h + skip


class Bottleneck(_Residual):
    def __init__(self, c_in, width, stride, zennit_sum=False):
        super().__init__()
        c_out = width * 4
        self.conv1, self.bn1 = torch.nn.Conv2d(c_in, width, 1, bias=False), torch.nn.BatchNorm2d(width)
        self.conv2, self.bn2 = torch.nn.Conv2d(width, width, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(width)
        self.conv3, self.bn3 = torch.nn.Conv2d(width, c_out, 1, bias=False), torch.nn.BatchNorm2d(c_out)
        self.relu1, self.relu2, self.relu3 = torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.ReLU()
        self._shortcut(c_in, c_out, stride, zennit_sum)

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.bn2(self.conv2(h)))
        return self.relu3(self._join(self.bn3(self.conv3(h)), x))


class BasicBlock(_Residual):
    def __init__(self, c_in, width, stride, zennit_sum=False):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2, self.bn2 = torch.nn.Conv2d(width, width, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(width)
        self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU()
        self._shortcut(c_in, width, stride, zennit_sum)

    def forward(self, x):
        return self.relu2(self._join(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))), x))


class ResNet(torch.nn.Module):
    def __init__(self, counts=(3, 4, 6, 3), bottleneck=True, classes=1000, zennit_sum=False):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(64),
                                        torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1))
        block, expansion = (Bottleneck, 4) if bottleneck else (BasicBlock, 1)
        blocks, c_in = [], 64
        for width, count, stride in zip((64, 128, 256, 512), counts, (1, 2, 2, 2)):
            for k in range(count):
                blocks.append(block(c_in, width, stride if k == 0 else 1, zennit_sum))
                c_in = width * expansion
        self.blocks = torch.nn.Sequential(*blocks)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(c_in, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def _seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):   # running statistics that are not the identity
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def build(name: str):
    """(model for export, twin for Zennit with BatchNorm merged and Sum at the joins)."""
    torch.manual_seed(0)
    if name in VGG_CONFIGS:
        return (model := _seeded(VGG(VGG_CONFIGS[name]), 0)), model
    counts, bottleneck = RESNET_CONFIGS[name]
    model = _seeded(ResNet(counts, bottleneck), 0)
    twin = ResNet(counts, bottleneck, zennit_sum=ZENNIT is not None)
    twin.load_state_dict(model.state_dict(), strict=False)
    return model, _merge_batchnorm(twin.eval())


def _merge_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def merge(parent, conv_name, bn_name):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, torch.nn.Identity())

    for module in model.modules():
        if isinstance(module, _Residual):
            for k in (1, 2, 3) if isinstance(module, Bottleneck) else (1, 2):
                merge(module, f"conv{k}", f"bn{k}")
            if module.down is not None:
                module.down = torch.nn.Sequential(fuse_conv_bn_eval(module.down[0], module.down[1]))
    model.stem = torch.nn.Sequential(fuse_conv_bn_eval(model.stem[0], model.stem[1]), *list(model.stem)[2:])
    return model


def export(name: str, cache: Path) -> Path:
    path = cache / f"{name}.onnx"
    if not path.exists():
        model, _ = build(name)
        buffer = io.BytesIO()
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    return path


def zennit_cases(name: str, composite_names, device: str = "cpu"):
    if ZENNIT is None:
        return lambda x, batch: []
    composites, Gradient, _ = ZENNIT
    _, twin = build(name)
    twin = twin.to(device)
    made = {"epsilon_plus_flat": lambda: composites.EpsilonPlusFlat(),
            "epsilon_gamma_box": lambda: composites.EpsilonGammaBox(**bench.BOUNDS),
            "epsilon_plus": lambda: composites.EpsilonPlus(),
            "epsilon_alpha2_beta1_flat": lambda: composites.EpsilonAlpha2Beta1Flat()}

    def start(out):     # logit mode on the predicted class, as onnxlrp's default
        return out * torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

    def cases(x, batch):
        """One attributor per composite, each on its own copy of the twin (Zennit's hooks are per model),
        held open while the cases are timed. Like onnxruntime's run, a call takes the batch from host memory
        and returns the relevance there (which also waits for the GPU)."""
        xt = torch.from_numpy(x)
        made_cases = []
        for composite_name in composite_names:
            if composite_name not in made:
                continue
            attributor = Gradient(model=copy.deepcopy(twin), composite=made[composite_name]())
            attributor.__enter__()
            made_cases.append(bench.Case(f"zennit {composite_name}",
                                         lambda a=attributor: a(xt.to(device), start)[1].cpu()))
        return made_cases

    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vgg16,resnet50", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--composites", default="epsilon_plus_flat,epsilon_gamma_box")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case, in all")
    parser.add_argument("--rounds", type=int, default=3, help="turns over all cases the repeats are spread on")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                        help="gpu: onnxruntime's CUDA provider and Zennit on torch's CUDA device (no memory figures)")
    parser.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "onnxlrp-bench"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    names = args.composites.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    gpu = args.device == "gpu"
    providers = CUDA_PROVIDERS if gpu else None
    if gpu:     # full float32 on both sides: CUDA_PROVIDERS turns onnxruntime's TF32 off, this torch's
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    print(f"machine: {bench.machine(providers)}; threads {args.threads}; warm-up {args.warmup}; "
          f"median of {args.repeats} in {args.rounds} rounds; "
          f"torch {torch.__version__}; zennit {'yes' if ZENNIT else 'not installed'}")
    models = args.models.split(",")
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; one of {', '.join(MODELS)}")
    for name in models:
        path = export(name, Path(args.cache))
        rows = bench.benchmark(str(path), names, batches, args.threads, args.warmup, args.repeats,
                               memory=not args.no_memory and not gpu, providers=providers,
                               extra=zennit_cases(name, names, "cuda" if gpu else "cpu"), rounds=args.rounds)
        print(f"\n### {name} ({path})\n")
        print(bench.table(rows, model_mb=path.stat().st_size / 1e6))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
