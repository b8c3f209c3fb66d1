"""The batch job: folders and globs, bad inputs reported and skipped, resuming after an interruption."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from onnxlrp.batch import find_inputs
from onnxlrp.cli import main


def _image(path, rng, size=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)


def test_find_inputs_walks_folders_and_globs_with_distinct_names(tmp_path, rng):
    _image(tmp_path / "data" / "a.png", rng)
    _image(tmp_path / "data" / "cats" / "a.png", rng)
    np.save(tmp_path / "data" / "a.npy", np.zeros(3, np.float32))
    (tmp_path / "data" / "notes.txt").write_text("not an input")
    items, problems = find_inputs([str(tmp_path / "data")])
    assert not problems
    assert sorted(item.key for item in items) == ["a", "a.png", "cats/a"]     # a.npy sorts first and keeps "a"
    items, problems = find_inputs([str(tmp_path / "data" / "**" / "*.png"), str(tmp_path / "data" / "a.png")])
    assert sorted(item.key for item in items) == ["a", "cats/a"]           # a.png given twice counts once
    items, problems = find_inputs([str(tmp_path / "none" / "*.png"), str(tmp_path / "empty")])
    assert items == [] and [reason for _, reason in problems] == ["no file matches the pattern",
                                                                  "no such file or folder"]
    (tmp_path / "empty").mkdir()
    assert find_inputs([str(tmp_path / "empty")])[1][0][1] == "the folder holds no image or .npy file"


def test_bad_inputs_are_reported_and_skipped(tmp_path, models_dir, rng, capsys):
    data = tmp_path / "data"
    for i in range(5):
        _image(data / f"ok{i}.png", rng)
    (data / "broken.png").write_bytes(b"not a png at all")
    np.save(data / "small.npy", np.zeros((3, 16, 16), np.float32))
    (data / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.save(data / "nan.npy", np.full((3, 32, 32), np.nan, np.float32))
    out = tmp_path / "out"
    assert main(["explain", str(models_dir / "small_vgg.onnx"), str(data), "--out", str(out), "--batch-size", "3",
                 "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "explained 5 input(s), skipped 0 already done, 4 failed" in captured.out
    failed = dict(line.split("\t") for line in (out / "failed.txt").read_text().splitlines())
    assert sorted(os.path.basename(name) for name in failed) == ["broken.png", "corrupt.npy", "nan.npy", "small.npy"]
    assert "as an image" in failed[str(data / "broken.png")]
    assert "expects (3, 32, 32)" in failed[str(data / "small.npy")]
    assert "NaN" in failed[str(data / "nan.npy")]
    for i in range(5):
        assert np.load(out / f"ok{i}.relevance.npy").shape == (3, 32, 32)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]          # no temporary files left
    # the good ones are done; fixing a bad one and running again explains just that one
    np.save(data / "small.npy", np.zeros((3, 32, 32), np.float32))
    assert main(["explain", str(models_dir / "small_vgg.onnx"), str(data), "--out", str(out), "--quiet"]) == 1
    assert "explained 1 input(s), skipped 5 already done, 3 failed" in capsys.readouterr().out


def test_top_k_outputs_resume_too(tmp_path, models_dir, rng, capsys):
    for i in range(3):
        _image(tmp_path / "data" / f"{i}.png", rng)
    argv = ["explain", str(models_dir / "small_vgg.onnx"), str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--top-k", "2", "--quiet"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert "explained 0 input(s), skipped 3 already done" in capsys.readouterr().out
    assert main(argv + ["--overwrite"]) == 0
    assert "explained 3 input(s), skipped 0 already done" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_job_loses_nothing_and_resumes(tmp_path, models_dir, rng, stop):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM in the middle of a job: every output written is whole, no
    temporary file is left, the exit code says interrupted, and the same command finishes the rest
    without redoing what was done."""
    data = tmp_path / "data"
    data.mkdir()
    n = 300
    for i in range(n):
        np.save(data / f"x{i:03d}.npy", rng.normal(size=(3, 32, 32)).astype(np.float32))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "onnxlrp.cli", "explain", str(models_dir / "small_vgg.onnx"), str(data),
            "--out", str(out), "--batch-size", "1", "--threads", "1", "--quiet"]
    # a shell's background job (CI run with "&" or nohup) starts with SIGINT ignored, which Python then
    # keeps ignoring; the job under test gets the default disposition, as from a terminal
    job = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.relevance.npy"))) < 10 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.02)
    assert job.poll() is None, "the job finished before it could be interrupted"
    job.send_signal(stop)
    stdout, stderr = job.communicate(timeout=60)
    assert job.returncode == 130, stderr
    assert "run the same command again" in stderr
    done = sorted(out.glob("*.relevance.npy"))
    assert 10 <= len(done) < n
    for path in done:
        assert np.load(path).shape == (3, 32, 32)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    stamps = {path: path.stat().st_mtime_ns for path in done}
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"explained {n - len(done)} input(s), skipped {len(done)} already done, 0 failed" in finished.stdout
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())
    assert len(list(out.glob("*.relevance.npy"))) == n


def test_no_pictures_writes_only_the_relevance(tmp_path, models_dir, rng):
    _image(tmp_path / "data" / "a.png", rng)
    assert main(["explain", str(models_dir / "small_vgg.onnx"), str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 "--no-pictures", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.relevance.npy"]
