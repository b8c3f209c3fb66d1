"""Generation on the LLM fixtures (tools/llm_fixtures.py): the inputs onnxlrp fills in are those the tools
build by hand (llm_fixtures.ort_feeds, onnxruntime-genai's Gemma3 window-sized sliding buffer included), the
cache gives the tokens of re-running the sequence, and a row of the matrix is the single explanation of its
token. Fixtures are built on first use; exports whose tool is not installed are skipped."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

import llm_fixtures as F  # noqa: E402

from onnxlrp import Explainer  # noqa: E402
from onnxlrp.errors import UnsupportedOpError  # noqa: E402

pytestmark = [pytest.mark.slow]
WAYS = ("torchscript", "dynamo_dynamic", "optimum", "genai_fp32", "genai_int4")


def fixture(arch, way=None):
    try:
        return F.fixture(arch, way)
    except FileNotFoundError as missing:   # the tool's environment is not installed here
        pytest.skip(str(missing))


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("arch", F.ARCHS)
def test_the_inputs_filled_in_are_those_the_runtime_builds(arch, way):
    path = fixture(arch, way)
    ids = F.sample_ids(2, 7)
    spec = Explainer(str(path)).decoder
    filled = spec.fill({"input_ids": ids}, list(spec.inputs))
    expected = F.ort_feeds(path, ids)
    assert set(filled) == set(expected)
    for name, value in expected.items():
        assert filled[name].dtype == value.dtype and filled[name].shape == value.shape, name
        np.testing.assert_array_equal(filled[name], value)


@pytest.mark.parametrize("way", ["optimum", "genai_fp32"])
@pytest.mark.parametrize("arch", F.ARCHS)
def test_the_cache_gives_the_tokens_of_the_whole_sequence(arch, way):
    """Past the window of Gemma3's sliding layer (4): genai's buffer stays window-sized."""
    ex = Explainer(str(fixture(arch, way)))
    assert ex.decoder.has_cache
    prompt = F.sample_ids(4, 6)[0]
    cached = ex.generate(prompt, 10, eos_token_id=[])
    np.testing.assert_array_equal(cached, ex.generate(prompt, 10, eos_token_id=[], use_cache=False))


@pytest.mark.parametrize("way", ["torchscript", "dynamo_dynamic", "optimum", "genai_fp32"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_row_is_the_single_explanation_of_its_token(arch, way):
    ex = Explainer(str(fixture(arch, way)), composite="attn_lrp")
    prompt = F.sample_ids(5, 6)[0]
    try:
        generation = ex.explain_generation(prompt, max_new_tokens=5, eos_token_id=[], batch_size=2)
    except UnsupportedOpError as error:
        if "GroupQueryAttention" in str(error) or way.startswith("genai"):
            pytest.skip(f"onnxruntime-genai graphs compile once GroupQueryAttention is de-fused: {error}")
        raise
    ids, P = generation.ids, len(prompt)
    for t in range(5):
        single = ex.explain({"input_ids": ids[None, :P + t]}, target=int(ids[P + t]))
        row = generation.relevance[t]
        np.testing.assert_allclose(row[:P + t], single.relevances["input_ids"][0], rtol=1e-4,
                                   atol=1e-5 * np.abs(row).max())
        assert not row[P + t:].any()
