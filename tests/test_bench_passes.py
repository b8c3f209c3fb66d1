"""tools/bench_passes.py builds the 'off' explainer session with the switches swapped in, and puts every
original back afterwards (it is how the passes table in docs/performance.md was measured)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_passes  # noqa: E402
from onnxlrp import compiler, runtime  # noqa: E402


def test_a_session_option_and_a_pass_switched_off_together_then_restored(models_dir, monkeypatch, capsys):
    patterns = []
    real_session = bench_passes.ort.InferenceSession

    def session(model, options=None, **kwargs):
        if options is not None and options.intra_op_num_threads == 3:   # the timed sessions, not the compiler's
            patterns.append(options.enable_mem_pattern)
        return real_session(model, options, **kwargs)

    monkeypatch.setattr(bench_passes.ort, "InferenceSession", session)
    options_before, fanout_before = runtime.default_session_options, compiler.factor_fanout_products
    assert bench_passes.main([str(models_dir / "tiny_resnet.onnx"), "pattern", "fanout", "--rounds", "3",
                              "--threads", "3"]) == 0
    assert patterns == [True, False]        # the 'off' session first, with the pattern on
    assert runtime.default_session_options is options_before
    assert compiler.factor_fanout_products is fanout_before
    assert "pattern+fanout: off" in capsys.readouterr().out
