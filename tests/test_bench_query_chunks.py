"""tools/bench_query_chunks.py: its hand-built head in query chunks computes what the whole chain computes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_query_chunks as B  # noqa: E402


@pytest.mark.parametrize("tokens", [5, 8, 11])
def test_the_chunked_head_computes_the_whole_heads_gradients(tokens):
    """Chunks of 4 queries: one not full, two full, two and three left over."""
    feeds = B._feeds(tokens, 8)
    whole = B._session(B.whole_model(8), 1).run(None, feeds)
    chunked = B._session(B.chunked_model(8, 4), 1).run(None, feeds)
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [g.shape for g in chunked] == [(1, 1, tokens, 8), (1, 1, 8, tokens), (1, 1, tokens, 8)]
