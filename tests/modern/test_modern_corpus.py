"""A modern-architecture corpus (tests/modern/modern_models.py): tiny timm and ultralytics models with
seeded random weights, exported by TorchScript and by dynamo, each with a static and a dynamic batch.
For every (model, export, composite): the explainer compiles, computes the model's outputs as
onnxruntime does, and gives a finite, input-shaped, non-zero relevance; on the piecewise-linear models
LRP-0 equals float64 torch gradient x input. tools/modern_corpus.py prints the same cases as a table
with their conservation (docs/corpus.md).

Skips without torch; a model skips where its package (timm, ultralytics) is missing, a dynamo export
where onnxscript is."""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modern_models as M  # noqa: E402

pytestmark = pytest.mark.slow
NAMES = list(M.MODELS)
PIECEWISE_LINEAR = [name for name, spec in M.MODELS.items() if spec.piecewise_linear]


@pytest.fixture(scope="session")
def built():
    """name -> the model, built once per session (a skip where its package is missing)."""
    models = {}

    def get(name):
        if name not in models:
            models[name] = M.unavailable(name) or M.build(name)
        if isinstance(models[name], str):
            pytest.skip(models[name])
        return models[name]
    return get


@pytest.fixture(scope="session")
def exported(built, tmp_path_factory):
    """(name, way) -> the ONNX file, exported once per session (a failed export fails every test using it)."""
    folder = tmp_path_factory.mktemp("modern_corpus")
    files = {}

    def get(name, way):
        model = built(name)
        if way.startswith("dynamo"):
            pytest.importorskip("onnxscript")
        if (name, way) not in files:
            try:
                files[name, way] = M.export(model, name, way, folder / f"{name}.{way}.onnx")
            except Exception as exc:   # noqa: BLE001 - reported by every test that needs this file
                files[name, way] = exc
        if isinstance(files[name, way], Exception):
            raise AssertionError(f"the {way} export of {name} failed: {files[name, way]}")
        return files[name, way]
    return get


@pytest.mark.parametrize("name", NAMES)
def test_random_weights_keep_signals_alive(name, built):
    """Every normalised signal and activation varies (no dead ReLU layer, no vanishing or exploding
    scale) and the outputs depend on the input: otherwise every check below would pass vacuously."""
    model = built(name)
    seen = []
    kinds = (torch.nn.ReLU, torch.nn.SiLU, torch.nn.GELU, torch.nn.Hardswish, torch.nn.LayerNorm,
             torch.nn.modules.batchnorm._BatchNorm)
    hooks = [m.register_forward_hook(lambda module, args, out: seen.append((module, out)))
             for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            outputs = model(torch.as_tensor(M.sample_input(name, batch=4)))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) >= 5
    for module, out in seen:
        std = float(out.std())
        assert 1e-2 < std < 1e2, f"{type(module).__name__} output std {std:.3g}"
        if isinstance(module, torch.nn.ReLU):
            assert float((out > 0).float().mean()) > 0.05, "a ReLU layer is (almost) dead"
    assert float(outputs.std(dim=0).max()) > 1e-2, "the outputs do not depend on the input"


@pytest.mark.parametrize("way", M.EXPORTS)
@pytest.mark.parametrize("name", NAMES)
def test_export_reproduces_the_torch_model(name, way, built, exported):
    """The ONNX file computes what the torch model computes, so that a failure below is the explainer's."""
    path = exported(name, way)
    x = M.sample_input(name, M.batch_of(way))
    with torch.no_grad():
        expected = built(name)(torch.as_tensor(x)).numpy()
    got = M.onnxruntime_outputs(path, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("composite", M.COMPOSITES)
@pytest.mark.parametrize("way", M.EXPORTS)
@pytest.mark.parametrize("name", NAMES)
def test_explainer_reproduces_outputs_with_relevance(name, way, composite, exported):
    case = M.explain(exported(name, way), name, way, composite)
    M.check_outputs_and_relevance(case)


@pytest.mark.parametrize("way", M.EXPORTS)
@pytest.mark.parametrize("name", PIECEWISE_LINEAR)
def test_lrp0_equals_gradient_times_input(name, way, built, exported):
    case = M.explain(exported(name, way), name, way, M.lrp0_unstabilised())
    M.check_outputs_and_relevance(case)
    error = M.relative_l2(case.relevance, M.gradient_times_input(built(name), case.x, case.target))
    assert error <= M.GRADIENT_TOLERANCE, f"LRP-0 differs from float64 gradient x input by relative L2 {error:.3g}"


def test_tool_tabulates_cases_with_conservation(built, capsys, tmp_path):
    """tools/modern_corpus.py (docs/corpus.md's table): one row per composite, plus the gradient check on a
    piecewise-linear model, each with its result and, where it ran, the conservation of each sample."""
    built("resnet_d")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import modern_corpus
    assert modern_corpus.main(["--models", "resnet_d", "--exports", "torchscript_dynamic", "--cache", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet_d |")]
    assert [row.split(" | ")[2] for row in rows] == [*M.COMPOSITES, modern_corpus.LRP0]
    gradient = rows[-1].split(" | ")
    assert gradient[3].startswith("pass (relative L2") and len(gradient[4].split(", ")) == 2


def test_building_the_models_leaves_pil_as_it_was(built):
    """ultralytics replaces PIL.Image.open on import (a retry that pip-installs a HEIF plugin); the corpus
    undoes it, so that onnxlrp's own image reading in later tests is the real one."""
    from PIL import Image
    image_open = Image.open
    for name in NAMES:
        try:
            built(name)
        except pytest.skip.Exception:
            continue
    assert Image.open is image_open
