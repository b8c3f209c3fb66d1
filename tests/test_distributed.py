"""Ray Data: explain_dataset and `onnxlrp explain --ray` on a local Ray instance give the single-process
results."""
import numpy as np
import onnx
import pytest

from onnxlrp import Explainer, composites
from onnxlrp.cli import main
from onnxlrp.errors import OnnxLrpError

ray = pytest.importorskip("ray", reason="pip install 'onnxlrp[ray]'")
pytest.importorskip("ray.data")
import onnxlrp.distributed as distributed  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_explain_dataset_equals_the_in_process_explainer(local_ray, models_dir):
    x = np.random.default_rng(3).normal(size=(24, 3, 32, 32)).astype(np.float32)
    targets = np.arange(24) % 10
    targets[::5] = -1
    ds = ray.data.from_items([{"image": x[i], "label": int(targets[i]), "id": i} for i in range(24)])
    composite = composites.EpsilonGammaBox(low=-3.0, high=3.0)
    explained = distributed.explain_dataset(ds, models_dir / "tiny_resnet.onnx", composite, target_column="label",
                                            batch_size=5, actors=2).take_all()
    rows = sorted(explained, key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(24))
    expected = Explainer(models_dir / "tiny_resnet.onnx", composite=composite).explain(x, target=targets)
    np.testing.assert_allclose(np.stack([row["relevance"] for row in rows]), expected.relevance, rtol=1e-6, atol=1e-7)
    assert [int(row["target_explained"]) for row in rows] == expected.target.tolist()


def test_cli_on_ray_writes_what_the_local_job_writes(local_ray, tmp_path, models_dir, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(4)
    for i in range(12):
        np.save(data / f"x{i:02d}.npy", rng.normal(size=(3, 32, 32)).astype(np.float32))
    (data / "bad.npy").write_bytes(b"not numpy")
    model = str(models_dir / "small_vgg.onnx")
    assert main(["explain", model, str(data), "--out", str(tmp_path / "local"), "--quiet"]) == 1
    assert main(["explain", model, str(data), "--out", str(tmp_path / "ray"), "--ray", "local", "--actors", "2",
                 "--batch-size", "4", "--quiet"]) == 1
    assert "explained 12 input(s), skipped 0 already done, 1 failed" in capsys.readouterr().out.splitlines()[-1]
    assert "bad.npy" in (tmp_path / "ray" / "failed.txt").read_text()
    for i in range(12):
        name = f"x{i:02d}.relevance.npy"
        np.testing.assert_allclose(np.load(tmp_path / "ray" / name), np.load(tmp_path / "local" / name),
                                   rtol=1e-6, atol=1e-7)


def test_model_must_be_a_path(local_ray, models_dir):
    ds = ray.data.from_items([{"image": np.zeros((3, 32, 32), np.float32)}])
    with pytest.raises(OnnxLrpError, match="as a path"):
        distributed.explain_dataset(ds, onnx.load(str(models_dir / "tiny_resnet.onnx")))
    with pytest.raises(OnnxLrpError, match="does not exist"):
        distributed.explain_dataset(ds, models_dir / "missing.onnx")
