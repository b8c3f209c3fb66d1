"""tools/bench.py's architectures: every size named on its command line is the network its name says, and the
twin Zennit runs on (BatchNorm merged, Sum at the joins) computes the same logits as the model that is exported."""
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

spec = importlib.util.spec_from_file_location("bench_tool", Path(__file__).resolve().parent.parent / "tools" / "bench.py")
bench_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_tool)


def weight_layers(model) -> int:
    """Convolutions and dense layers on the main path (a ResNet's projection shortcuts are not counted in its
    name: ResNet-50 is 49 convolutions and the classifier)."""
    shortcuts = {id(m) for block in model.modules() if getattr(block, "down", None) is not None
                 for m in block.down.modules()}
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and id(m) not in shortcuts for m in model.modules())


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg19", "resnet18", "resnet34", "resnet101", "resnet152"])
def test_depth_is_the_names(name):
    config_model = (bench_tool.VGG(bench_tool.VGG_CONFIGS[name]) if name.startswith("vgg")
                    else bench_tool.ResNet(*bench_tool.RESNET_CONFIGS[name]))
    assert weight_layers(config_model) == int(name.removeprefix("vgg").removeprefix("resnet"))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zennit_twin_computes_the_models_logits(name):
    model, twin = bench_tool.build(name)
    assert twin is not model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in twin.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(twin(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_an_unknown_model_is_refused_with_the_sizes_there_are(capsys):
    with pytest.raises(SystemExit) as refused:
        bench_tool.main(["--models", "resnet51", "--no-memory"])
    assert refused.value.code == 2
    message = capsys.readouterr().err
    assert "unknown model resnet51" in message and "resnet101" in message
