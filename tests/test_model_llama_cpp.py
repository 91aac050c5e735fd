"""refquant.model against llama.cpp (llama-cpp-python) on the same GGUF file.

Tokens are compared exactly. Logits cannot be: for the shipped Q4_1 file llama.cpp never
forms float32 products. It rounds each activation row to 8 bits per block of 32 (Q8_1,
against the Q4_1 weights; Q8_0 against the Q8_0 output matrix) and takes integer dot
products, and it keeps Q, K, V and the softmax probabilities in float16 for attention
(K/V cache type f16, no flash attention). refquant's forward pass multiplies the same
dequantized weights by float32 activations. How close is right was found by removing
the differences one at a time (``test_float32_copy_...`` below):

    file      llama.cpp path               vs refquant float32 forward (T tokens)
    Q4_1      Q8 activations + f16 attn.   max |Δlogit| ≈ 1.0–1.4, mean ≈ 0.15, KL ≈ 3.5e-3, top-1 ≈ 98%
    F32 copy  f32 GEMM + f16 attention     max ≈ 1e-2 (T = 128, 1 block), 1.4e-3 at T = 1
    F32 copy  + Q, K, V rounded to f16     max ≈ 1.5e-5 at T = 1: float32 rounding only
              in refquant too
    Q4_1      refquant with llama.cpp's    0 at T = 1: bit-identical logits
              dot kernels + f16 Q, K, V

So the Q4_1 gap is llama.cpp's activation quantization (relative error up to 1/254 of a
block's largest |x| per element, through 30 blocks), not a difference in the model; the
bounds asserted for the Q4_1 file are those measured figures with a margin of about 1.5×.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant.model import data, load_model, perplexity

llama_testing = pytest.importorskip("refquant.testing.llama")
pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def model(smollm2_path):
    return load_model(smollm2_path)


@pytest.fixture(scope="module")
def oracle(smollm2_path):
    # one thread: pytest-xdist already runs a worker per core, and llama.cpp's spinning
    # thread barrier slows down badly when its threads outnumber the free cores
    return llama_testing.llama_cpp_oracle(smollm2_path, n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def eval_tokens(model):
    return model.tokenize(data.evaluation_text())


def log_softmax(logits):
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def agreement(ours, theirs):
    """max |Δlogit|, mean |Δlogit|, mean KL(llama.cpp ‖ refquant) in nats, top-1 agreement."""
    lp, lq = log_softmax(theirs), log_softmax(ours)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    return (float(np.max(np.abs(ours - theirs))), float(np.mean(np.abs(ours - theirs))), float(np.mean(kl)),
            float(np.mean(ours.argmax(-1) == theirs.argmax(-1))))


# --- tokenizer ------------------------------------------------------------------------------

def test_tokens_identical_on_whole_evaluation_text(model, oracle, eval_tokens):
    assert eval_tokens == oracle.tokenize(data.evaluation_text())  # 16,845 tokens on Python 3.11


# Unicode text: the default ``st.text()`` (every category but surrogates, which have no
# UTF-8 form), and a mixture that aims at the pre-tokenizer's edges: contractions, runs of
# spaces and newlines, non-ASCII digits and spaces, combining marks, unassigned code points,
# control bytes missing from the vocabulary.
EDGE_PIECES = ["'s", "'t", "'re", "'ll", "'d", "'m", "'ve", " ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u3000",
               "12", "٣", "²", "Ⅻ", "é", "e\u0301", "😀", "中文", "Straße", "ǅ", "\x13", "<|im_start|>"]
edge_text = st.lists(st.one_of(st.sampled_from(EDGE_PIECES),
                               st.text(st.characters(categories=["Zs", "Nd", "No", "Nl", "Lo", "Lu", "Ll", "Mn",
                                                                 "Po", "Sm", "So", "Cc", "Cf", "Co", "Cn"]),
                                       max_size=4)),
                     max_size=12).map("".join)


@given(st.one_of(st.text(max_size=40), edge_text))
def test_tokens_identical_on_unicode_strings(model, oracle, text):
    assert model.tokenize(text) == oracle.tokenize(text)


def test_out_of_vocabulary_byte_is_a_merge_barrier(model, oracle):
    # 0x14 has no token in SmolLM2's vocabulary: dropped, and "]" "\\" around it stay apart
    text = "]\x14\\"
    assert model.tokenize(text) == oracle.tokenize(text) == model.tokenize("]") + model.tokenize("\\")


def test_no_bos_for_smollm2(model, oracle):
    assert model.tokenizer.add_bos is False  # tokenizer.ggml.add_bos_token = false in the file
    assert model.tokenize("Hello")[0] != model.tokenizer.bos_id
    assert model.detokenize(model.tokenize("Hello, world!")) == "Hello, world!"


# --- logits -----------------------------------------------------------------------------------

WINDOW, STARTS = 128, (0, 128)  # two windows of the evaluation text


@pytest.fixture(scope="module")
def paired_logits(model, oracle, eval_tokens):
    """{tuple(window tokens): (refquant logits, llama.cpp logits)} for the two windows."""
    pairs = {}
    for start in STARTS:
        window = eval_tokens[start : start + WINDOW]
        pairs[tuple(window)] = (model.forward(window), oracle.logits(window))
    return pairs


@pytest.mark.parametrize("k", range(len(STARTS)))
def test_logits_close_to_llama_cpp(paired_logits, k):
    ours, theirs = list(paired_logits.values())[k]
    max_abs, mean_abs, kl, top1 = agreement(ours, theirs)
    # measured here: max 1.08 / 1.21, mean 0.15 / 0.18, KL 3.5e-3 / 3.7e-3, top-1 0.984 / 0.984
    assert max_abs < 2.0
    assert mean_abs < 0.25
    assert kl < 6e-3
    assert top1 >= 0.95


@pytest.fixture(scope="module")
def float32_copy(model, smollm2_path, tmp_path_factory):
    """One block of the model, every tensor F32: llama.cpp then multiplies in float32."""
    path = tmp_path_factory.mktemp("gguf") / "smollm2-1block-f32.gguf"
    llama_testing.write_float32_gguf(model.weights, smollm2_path, str(path), n_layer=1)
    return load_model(path), llama_testing.LlamaCpp(str(path), n_ctx=128, n_threads=1)


def test_float32_copy_agrees_to_float16_attention_rounding(float32_copy, eval_tokens):
    ours, theirs = float32_copy
    window = eval_tokens[:128]
    max_abs, _, kl, top1 = agreement(ours.forward(window), theirs.logits(window))
    # f32 GEMMs on both sides; what remains is llama.cpp's f16 Q, K, V and probabilities
    # (unit roundoff 2^-11 ≈ 4.9e-4 relative) — measured max 0.011 on logits of size ~50
    assert max_abs < 0.03
    assert kl < 1e-6
    assert top1 == 1.0


def test_float32_copy_with_float16_qkv_is_float32_rounding(float32_copy, eval_tokens, monkeypatch):
    """One token: attention returns v; rounding q, k, v to f16 as llama.cpp's KV cache does
    leaves only float32 summation-order differences."""
    import refquant.model.llama as llama

    attention = llama.attention
    f16 = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731 - NumPy arrays here
    monkeypatch.setattr(llama, "attention", lambda q, k, v: attention(f16(q), f16(k), f16(v)))
    ours, theirs = float32_copy
    a, b = ours.forward(eval_tokens[:1]), theirs.logits(eval_tokens[:1])
    # measured 1.5e-5 on logits of magnitude ~50: a few float32 ulps (ulp(32) = 3.8e-6)
    assert np.max(np.abs(a - b)) < 1e-4


def test_llama_cpp_kernels_in_our_forward_reproduce_its_logits_exactly(model, oracle, smollm2_path, eval_tokens,
                                                                      monkeypatch):
    """The whole Q4_1 gap is llama.cpp's quantized dot product: put its kernels in place of
    our float32 GEMM (``llama_cpp_linear``: ggml's quantize_row_q8_1 + vec_dot_q4_1_q8_1,
    and q8_0 for the output matrix) and round q, k, v to f16 as its KV cache does, and one
    token's 49,152 logits come out bit-identical to llama.cpp's."""
    import refquant.model.llama as llama
    from refquant.model.loader import read_gguf

    _, tensors = read_gguf(smollm2_path)
    by_id = {id(w): tensors[name] for name, w in model.weights.items() if name in tensors}
    monkeypatch.setattr(llama, "_linear", lambda x, W: llama_testing.llama_cpp_linear(x, *by_id[id(W)][::-1]))
    attention = llama.attention
    f16 = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731 - NumPy arrays here
    monkeypatch.setattr(llama, "attention", lambda q, k, v: attention(f16(q), f16(k), f16(v)))
    for token in eval_tokens[:2]:
        np.testing.assert_array_equal(model.forward([token]), oracle.logits([token]))


# --- perplexity -----------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["all", "llama.cpp"])
def test_perplexity_close_to_llama_cpp(paired_logits, eval_tokens, protocol):
    """Both runtimes scored by the same code on the same windows (logits computed once above)."""
    ours = perplexity(lambda w: paired_logits[tuple(w)][0], eval_tokens, WINDOW, protocol, max_windows=len(STARTS))
    theirs = perplexity(lambda w: paired_logits[tuple(w)][1], eval_tokens, WINDOW, protocol, max_windows=len(STARTS))
    assert ours.n_tokens == theirs.n_tokens == len(STARTS) * (WINDOW - 1 if protocol == "all" else WINDOW // 2 - 1)
    # per-token log-likelihoods differ by the logit noise above (KL ~ 3.5e-3 nats); over a
    # few hundred tokens the mean NLL agrees to ~0.01 nats, i.e. perplexity to ~1 %
    assert abs(ours.nll - theirs.nll) < 0.02
    assert abs(ours.ppl / theirs.ppl - 1) < 0.02
