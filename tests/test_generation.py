"""Whole generated answers (onnxlrp.generation, onnxlrp.llm): a decoder's inputs beside the token ids filled
in, greedy generation with and without the cache, the [new tokens x all tokens] relevance matrix, and
`onnxlrp explain MODEL --prompt`. On the tiny decoder of decoder_model.py in three exporters' conventions;
tests/llm/test_generation_fixtures.py does the same on the LLM fixtures."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from decoder_model import EOS, WORDS, decoder, write_decoder
from onnxlrp import Explainer
from onnxlrp.cli import main
from onnxlrp.errors import InputError, ModelLoadError

PROMPT = [WORDS.index(w) for w in "<s> the cat sat on the mat".split()]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {style: write_decoder(root / style, style, tokenizer=False).parent for style in ("plain", "optimum", "genai")}


@pytest.fixture(scope="module")
def explainers(folders):
    return {style: Explainer(str(folder), composite="attn_lrp") for style, folder in folders.items()}


def full_feeds(style: str, ids: np.ndarray) -> dict:
    """Every input as an exporter's runtime builds it for a prompt (the reference for what is filled in)."""
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if style == "optimum":
        feeds["position_ids"] = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int64)
    if style != "plain":
        for part in ("key", "value"):
            feeds[f"past_key_values.0.{part}"] = np.zeros((len(ids), 2, 0, 4), np.float32)
    return feeds


@pytest.mark.parametrize("style", ["plain", "optimum", "genai"])
def test_inputs_left_out_are_those_a_runtime_builds_for_a_prompt(explainers, style):
    ex, ids = explainers[style], np.array([PROMPT, PROMPT[::-1]])
    given = ex.explain(full_feeds(style, ids), target=[4, 9])
    for x in ({"input_ids": ids}, ids):      # a dict with the token ids alone, or the bare array
        res = ex.explain(x, target=[4, 9])
        np.testing.assert_array_equal(res.relevances["input_ids"], given.relevances["input_ids"])
        np.testing.assert_array_equal(res.outputs[0], given.outputs[0])
    np.testing.assert_array_equal(ex.logits({"input_ids": ids}), given.outputs[0])


def test_the_head_size_comes_from_the_folder(folders):
    """genai leaves the head size free in the graph: genai_config.json tells it; without the folder, an error
    that says so (a ModelProto has none)."""
    spec = Explainer(str(folders["genai"])).decoder
    assert spec.head_size == 4 and spec.pasts["past_key_values.0.key"].dims == ["batch", 2, "positions", "head"]
    ex = Explainer(decoder("genai"), composite="attn_lrp")
    with pytest.raises(InputError, match="head size of past input 'past_key_values.0.key'.*genai_config.json"):
        ex.explain({"input_ids": np.array([PROMPT])})
    # given, the past is not filled in
    ex.explain({"input_ids": np.array([PROMPT]), **{f"past_key_values.0.{p}": np.zeros((1, 2, 0, 4), np.float32)
                                                    for p in ("key", "value")}})


def test_other_inputs_left_out_are_an_error(rng):
    """Only a decoder's mask, positions and past are filled in: a BERT-style token_type_ids is not."""
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (int64[N, S] input_ids, int64[N, S] token_type_ids) => (float[N, S, 3] logits) {
        e = Gather(words, input_ids)
        t = Gather(types, token_type_ids)
        h = Add(e, t)
        logits = MatMul(h, w)
    }""")
    for name, shape in (("words", (5, 4)), ("types", (2, 4)), ("w", (4, 3))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    ex = Explainer(model, composite="attn_lrp")
    with pytest.raises(InputError, match=r"\['token_type_ids'\] missing .*attention_mask, position_ids"):
        ex.explain({"input_ids": np.array([[1, 2]])})
    with pytest.raises(InputError, match="pass a dict"):
        ex.explain(np.array([[1, 2]]))


def test_cache_and_no_cache_give_the_same_greedy_tokens(explainers):
    assert explainers["optimum"].decoder.has_cache and explainers["genai"].decoder.has_cache
    assert not explainers["plain"].decoder.has_cache
    reference = explainers["plain"].generate(PROMPT, 16, eos_token_id=[])
    assert len(reference) == 16 and len(set(reference.tolist())) > 3       # a real answer, not one repeated token
    for style in ("optimum", "genai"):
        np.testing.assert_array_equal(explainers[style].generate(PROMPT, 16, eos_token_id=[]), reference)
        np.testing.assert_array_equal(explainers[style].generate(PROMPT, 16, eos_token_id=[], use_cache=False),
                                      reference)
    # greedy: each new token is the argmax of the logits after the tokens before it
    ids = np.concatenate([PROMPT, reference])
    for t in range(16):
        prefix = ids[None, :len(PROMPT) + t]
        assert explainers["plain"].logits(prefix)[0, -1].argmax() == reference[t]


@pytest.mark.parametrize("style", ["optimum", "plain"])
def test_a_row_is_the_explanation_of_its_token_at_its_position(explainers, style):
    """Row t equals one explanation of new token t on the tokens before it (the later ones get nothing);
    rows come from runs of 3 tokens, so the batches cross rows."""
    ex = explainers[style]
    generation = ex.explain_generation(PROMPT, max_new_tokens=8, eos_token_id=[], batch_size=3)
    P, N = len(PROMPT), 8
    assert generation.relevance.shape == (N, P + N) and generation.stopped == "max_new_tokens"
    ids = generation.ids
    for t in range(N):
        single = ex.explain({"input_ids": ids[None, :P + t]}, target=int(ids[P + t]))
        row = generation.relevance[t]
        np.testing.assert_allclose(row[:P + t], single.relevances["input_ids"][0], rtol=1e-5,
                                   atol=1e-6 * np.abs(row).max())
        assert not row[P + t:].any()
        logit = single.outputs[0][0, -1, ids[P + t]]
        assert generation.logits[t] == pytest.approx(logit, rel=1e-5)
        scores = single.outputs[0][0, -1].astype(np.float64)
        assert generation.probabilities[t] == pytest.approx(1 / np.exp(scores - logit).sum(), rel=1e-5)


def test_an_end_of_sequence_id_stops_the_answer(explainers, folders, tmp_path):
    ex = explainers["optimum"]
    free = ex.generate(PROMPT, 12, eos_token_id=[]).tolist()
    j = next(k for k in range(1, 12) if free[k] not in free[:k])      # a token first generated at step j > 0
    stop = free[j]
    assert ex.generate(PROMPT, 12, eos_token_id=stop).tolist() == free[:j + 1]
    generation = ex.explain_generation(PROMPT, 12, eos_token_id=[stop, 999])
    assert generation.new_ids.tolist() == free[:j + 1] and generation.stopped == "eos"
    assert generation.relevance.shape == (j + 1, len(PROMPT) + j + 1)
    # by default the ids of the model's folder: config.json (optimum, plain) or genai_config.json
    for style, config in (("optimum", "config.json"), ("genai", "genai_config.json")):
        folder = tmp_path / style
        write_decoder(folder, style, tokenizer=False)
        data = json.loads((folder / config).read_text())
        (data["model"] if style == "genai" else data)["eos_token_id"] = [stop]
        (folder / config).write_text(json.dumps(data))
        assert Explainer(str(folder)).generate(PROMPT, 12).tolist() == free[:j + 1]
    assert Explainer(decoder("optimum")).decoder.eos_token_ids == []        # no folder: no end id
    assert explainers["optimum"].decoder.eos_token_ids == [EOS]


def test_what_cannot_generate_says_why(tmp_path, models_dir, explainers):
    fixed = Explainer(str(write_decoder(tmp_path / "fixed", "plain", fixed_length=7, tokenizer=False)))
    with pytest.raises(InputError, match="exactly 7 tokens"):
        fixed.generate(PROMPT, 3)
    with pytest.raises(InputError, match="needs a language model"):
        Explainer(str(models_dir / "demo" / "digits_cnn.onnx")).generate(PROMPT, 3)
    for bad in ([], [[1, 2], [3, 4]], [0.5, 1.5]):
        with pytest.raises(InputError, match="one prompt"):
            explainers["plain"].generate(bad, 3)
    with pytest.raises(InputError, match="max_new_tokens"):
        explainers["plain"].generate(PROMPT, 0)
    too_long = [3] * 60        # the position table has 64 rows
    with pytest.raises(InputError, match="onnxruntime failed to run the model while generating"):
        explainers["plain"].generate(too_long, 10, eos_token_id=[])


def test_a_folder_is_read_as_its_model(tmp_path):
    folder = tmp_path / "two"
    write_decoder(folder, "plain", tokenizer=False)
    assert Explainer(str(folder)).source == folder / "model.onnx"
    (folder / "model.onnx").rename(folder / "a.onnx")
    assert Explainer(str(folder)).source == folder / "a.onnx"       # the one .onnx file
    onnx.save(decoder("plain"), folder / "b.onnx")
    with pytest.raises(ModelLoadError, match="several models"):
        Explainer(str(folder))
    with pytest.raises(ModelLoadError, match="without an .onnx model"):
        Explainer(str(tmp_path / "two" / ".."))


def test_token_texts_put_the_decoded_text_back_together():
    tokenizers = pytest.importorskip("tokenizers")
    from onnxlrp.llm import token_texts
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the cat sat on the mat", "grüße aus köln"], trainer)
    ids = tokenizer.encode("the cat grüßt\nköln").ids
    texts = token_texts(tokenizer, ids)
    assert "".join(texts) == tokenizer.decode(ids) == "the cat grüßt\nköln"
    assert len(texts) == len(ids) and " cat" in texts


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    """`onnxlrp explain FOLDER --prompt ...` on the optimum-style decoder with its tokenizer beside it."""
    pytest.importorskip("tokenizers")
    root = tmp_path_factory.mktemp("cli")
    model = write_decoder(root / "tiny_lm", "optimum")
    out = root / "out"
    code = main(["explain", str(model.parent), "--prompt", "<s> the cat sat on the mat", "--max-new-tokens", "6",
                 "--eos-token-id", "none", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    return model, out


def test_the_command_line_writes_the_page_the_json_and_the_matrix(answered):
    model, out = answered
    table = json.loads((out / "generation.json").read_text())
    matrix = np.load(out / "generation.relevance.npy")
    P = table["prompt_length"]
    assert P == len(PROMPT) and table["ids"][:P] == PROMPT and table["composite"] == "attn_lrp"
    assert matrix.shape == (6, P + 6) and len(table["tokens"]) == P + 6 and table["stopped"] == "max_new_tokens"
    np.testing.assert_allclose(np.asarray(table["relevance"]), matrix, rtol=1e-6)
    expected = Explainer(str(model), composite="attn_lrp").explain_generation(PROMPT, 6, eos_token_id=[])
    assert table["ids"][P:] == expected.new_ids.tolist()
    np.testing.assert_allclose(matrix, expected.relevance, rtol=1e-5, atol=1e-6)
    assert [t["text"] for t in table["tokens"][:3]] == ["<s>", " the", " cat"]
    assert table["answer"] == " ".join(WORDS[i] for i in expected.new_ids if i > 2)
    page = (out / "generation.html").read_text()
    assert "renderAnswer(" in page and '"prompt_length": 7' in page
    assert "src=" not in page and "href=" not in page and "http" not in page     # one file, nothing fetched


@pytest.mark.parametrize("argv,words", [
    (["--prompt", "the cat", "--target", "3"], "no --target"),
    (["--prompt", "the cat", "--max-new-tokens", "0"], "at least 1"),
    (["--prompt", "the cat", "--eos-token-id", "two"], "--eos-token-id"),
    (["--prompt", "the cat", "--tokenizer", "missing.json"], "does not exist"),
])
def test_command_line_mistakes_are_one_line(answered, argv, words, capsys, tmp_path):
    model, _ = answered
    assert main(["explain", str(model.parent), *argv, "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and words in error and "\n" not in error


def test_without_a_tokenizer_beside_the_model_it_asks_for_one(tmp_path, capsys):
    model = write_decoder(tmp_path / "bare", "plain", tokenizer=False)
    assert main(["explain", str(model), "--prompt", "the cat", "--out", str(tmp_path / "o")]) == 2
    assert "give --tokenizer" in capsys.readouterr().err


@pytest.mark.slow
def test_the_page_shows_what_each_word_of_the_answer_rests_on(answered):
    """generation.html in headless Chromium: one file that asks for nothing; hovering a word of the answer
    colours the tokens before it by its row of the matrix, with the number on hover; clicking keeps it;
    the arrow keys move along the answer."""
    pytest.importorskip("selenium")
    from browser import CHROMIUM, DRIVER, chromium, requests_made
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    _, out = answered
    table = json.loads((out / "generation.json").read_text())
    P, matrix = table["prompt_length"], np.asarray(table["relevance"])
    browser = chromium(1100, 800)
    try:
        browser.get((out / "generation.html").as_uri())
        tokens = browser.find_elements(By.CSS_SELECTOR, ".tok")
        words = browser.find_elements(By.CSS_SELECTOR, "#answer .gen")
        assert len(tokens) == P + len(words) == len(table["tokens"])
        assert words[0].get_attribute("aria-pressed") == "true"          # the first word is explained at first

        def shown_row(t):
            colours = []
            for k, span in enumerate(tokens):
                colour = span.value_of_css_property("background-color")
                values = [float(v) for v in colour[colour.index("(") + 1:-1].split(",")]
                alpha = values[3] if len(values) == 4 else 1.0
                colours.append(0.0 if alpha == 0 else (alpha if values[0] > values[2] else -alpha))
            return np.asarray(colours)

        for t in (3, 1):
            ActionChains(browser).move_to_element(words[t]).perform()
            row = matrix[t] / np.abs(matrix[t]).max()
            np.testing.assert_allclose(shown_row(t), np.where(np.arange(len(row)) < P + t, row, 0),
                                       atol=6e-3)   # the browser keeps alpha in steps of 1/255
            k = int(np.argmax(np.abs(matrix[t, :P + t])))
            assert f"{matrix[t, k]:+.3g}".replace("-", "\u2212") in tokens[k].get_attribute("title")
        words[1].click()
        words[1].send_keys(Keys.ARROW_RIGHT)
        assert browser.switch_to.active_element == words[2] and words[2].get_attribute("aria-pressed") == "true"
        assert table["tokens"][P + 2]["text"].strip() in browser.find_element(By.ID, "detail").text
        assert all(url.startswith("file://") for url in requests_made(browser))
        browser.save_screenshot(str(out / "page.png"))
    finally:
        browser.quit()


def test_the_page_colours_as_the_token_pages_do():
    """answer.js (generation.html, onnxlrp serve) uses text.py's red and blue."""
    import re
    from onnxlrp import text
    from onnxlrp.generation_page import STATIC
    script = (STATIC / "answer.js").read_text()
    found = dict(re.findall(r'ANSWER_(POSITIVE|NEGATIVE) = "([\d, ]+)"', script))
    assert found == {"POSITIVE": text.POSITIVE, "NEGATIVE": text.NEGATIVE}
