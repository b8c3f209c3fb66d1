"""The benchmark: every row is timed and the ratios in the table are the ratios of the medians."""
import numpy as np
import pytest

from onnxlrp import bench
from onnxlrp.cli import main


def test_table_ratios_are_those_of_the_medians():
    rows = [bench.Timing("inference", 1, 10.0), bench.Timing("epsilon_plus_flat", 1, 25.0, compile_s=1.5),
            bench.Timing("zennit epsilon_plus_flat", 1, 100.0), bench.Timing("inference", 8, 40.0),
            bench.Timing("epsilon_plus_flat", 8, 80.0, peak_mb=12.0, compile_peak_mb=30.0)]
    lines = bench.table(rows).splitlines()
    assert "| 1 | epsilon_plus_flat | 25.0 | 2.50 |  | 1.50 |  |  |" in lines
    assert "| 1 | zennit epsilon_plus_flat | 100.0 | 10.00 | 4.00 |  |  |  |" in lines
    assert "| 8 | epsilon_plus_flat | 80.0 | 2.00 |  |  | 12 | 30 |" in lines


def test_measure_counts_warmup_and_repeats():
    calls = []
    times = bench.measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(times) == 5 and all(t >= 0 for t in times)


def test_rounds_visit_the_cases_in_turn_and_every_other_round_in_reverse():
    visits = []
    cases = [bench.Case(name, lambda name=name: visits.append(name)) for name in ("a", "b", "c")]
    rows = bench.time_cases(cases, batch=1, warmup=0, repeats=4, rounds=4)
    assert visits == list("abc" "cba" "abc" "cba")
    assert [(row.what, len(row.times_ms)) for row in rows] == [("a", 4), ("b", 4), ("c", 4)]


def test_bench_command_times_inference_and_each_composite(models_dir, capsys):
    assert main(["bench", str(models_dir / "tiny_resnet.onnx"), "--batches", "1,2", "--repeats", "2", "--warmup", "1",
                 "--threads", "1", "--composites", "epsilon_plus_flat,epsilon_gamma_box", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "threads 1" in out and "median of 2" in out
    for batch in (1, 2):
        for what in ("inference", "epsilon_plus_flat", "epsilon_gamma_box"):
            assert f"| {batch} | {what} |" in out
    assert main(["bench", str(models_dir / "tiny_resnet.onnx"), "--composites", "nonsense"]) == 2
    assert "unknown composite" in capsys.readouterr().err


@pytest.mark.slow
def test_peak_memory_is_measured_in_fresh_processes(models_dir, capsys):
    assert main(["bench", str(models_dir / "small_vgg.onnx"), "--batches", "4", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--composites", "epsilon_plus_flat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    explain = next(line for line in lines if "| epsilon_plus_flat |" in line).strip("|").split("|")
    inference = next(line for line in lines if "| inference |" in line).strip("|").split("|")
    peak, compile_peak, inference_peak = float(explain[-2]), float(explain[-1]), float(inference[-2])
    model_mb = (models_dir / "small_vgg.onnx").stat().st_size / 2**20
    assert 0 < inference_peak and 0 < compile_peak
    assert 0 < peak <= 2 * inference_peak + model_mb     # the memory target, on a small model


def test_input_batch_has_the_model_shape(models_dir):
    x = bench.input_batch(str(models_dir / "tiny_vgg.onnx"), 3)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32


def test_machine_names_the_gpu_only_when_the_cuda_provider_is_asked_for(monkeypatch):
    from onnxlrp.runtime import CUDA_PROVIDERS

    monkeypatch.setattr(bench, "_gpu_name", lambda: "NVIDIA H100 80GB HBM3, 580.159.04")
    assert "GPU" not in bench.machine(["CPUExecutionProvider"])
    assert bench.machine(CUDA_PROVIDERS).endswith("GPU NVIDIA H100 80GB HBM3, 580.159.04")


def test_model_size_below_one_megabyte_is_given_in_kilobytes():
    rows = [bench.Timing("inference", 1, 10.0)]
    assert bench.table(rows, model_mb=0.042).splitlines()[-1] == "model size 42 kB"
    assert bench.table(rows, model_mb=12.4).splitlines()[-1] == "model size 12 MB"
