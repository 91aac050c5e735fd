"""The real file: SmolLM2-135M-Instruct Q4_1, written by llama.cpp (Q4_1, Q8_0 and F32 tensors).

* every tensor decodes to exactly what gguf-py decodes;
* re-quantizing the decoded Q4_1 / Q8_0 tensors to their own type gives back the file's
  bytes — all 3,317,760 Q4_1 blocks and all 884,736 Q8_0 blocks. Why every block: the
  decoded extremes are exactly ``m`` (code 0) and ``15·d + m`` (Q4_1) or ``±127·d``
  (Q8_0), so the new scale rounds to the same float16 and each weight lands within
  float32 rounding of its old level;
* the whole file quantized to Q4_K_M by refquant (k-quants, fallbacks to Q5_0 / Q8_0 for the
  576-wide rows, the tied embedding kept as Q8_0) is byte-identical to llama-quantize's,
  loads in llama.cpp, and reads back identically through gguf-py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import refquant.gguf as rg
from refquant.gguf import convert, file, recipes
from refquant.gguf.imatrix import load_imatrix


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with file.read(smollm2_path) as f:
        yield f


def test_the_file_holds_what_we_expect(smollm2):
    types = [t.type for t in smollm2.tensors.values()]
    assert (types.count("Q4_1"), types.count("Q8_0"), types.count("F32")) == (210, 1, 61)


def test_every_tensor_decodes_like_gguf_py(smollm2):
    import gguf
    from gguf import quants

    for name, t in smollm2.tensors.items():
        raw = np.asarray(t.raw)
        ours = rg.dequantize(raw, t.type)
        theirs = quants.dequantize(raw, gguf.GGMLQuantizationType[t.type])
        assert ours.shape == t.shape, name
        assert np.array_equal(ours.view(np.uint32), np.asarray(theirs, np.float32).view(np.uint32)), name


@pytest.mark.parametrize("qtype, n_blocks", [("Q4_1", 3_317_760), ("Q8_0", 884_736)])
def test_requantizing_reproduces_every_block(smollm2, qtype, n_blocks):
    size = rg.ggml_type(qtype).type_size
    same = total = 0
    for t in smollm2.tensors.values():
        if t.type != qtype:
            continue
        raw = np.asarray(t.raw)
        again = rg.quantize(rg.dequantize(raw, qtype), qtype)
        equal = np.all(raw.reshape(-1, size) == again.reshape(-1, size), axis=1)
        same += int(equal.sum())
        total += equal.size
    assert (same, total) == (n_blocks, n_blocks)


def test_whole_file_q4_k_m_matches_llama_quantize_and_loads(smollm2_path, tmp_path):
    pytest.importorskip("llama_cpp")
    from test_gguf_recipes import llama_quantize

    ours, theirs = tmp_path / "ours.gguf", tmp_path / "llama.gguf"
    llama_quantize([(smollm2_path, str(theirs), recipes.FTYPES["Q4_K_M"][0])])
    summary = convert.quantize_file(smollm2_path, str(ours), "Q4_K_M")
    assert ours.read_bytes() == theirs.read_bytes()
    counts = {t: list(summary.types.values()).count(t) for t in set(summary.types.values())}
    # 576-wide rows: Q4_K -> Q5_0 (166), Q6_K -> Q8_0 (14 attn_v + the tied embedding, copied);
    # the 1536-wide ffn_down rows keep Q4_K (16) and Q6_K (14)
    assert counts == {"Q5_0": 166, "F32": 61, "Q4_K": 16, "Q8_0": 15, "Q6_K": 14} and summary.n_fallback == 180
    assert 6.1 < summary.bpw_out < 6.2

    # gguf-py reads back the same tensors and metadata
    from gguf import GGUFReader

    reader = GGUFReader(str(ours))
    with file.read(str(ours)) as f:
        assert [t.name for t in reader.tensors] == list(f.tensors)
        for t in reader.tensors:
            assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), np.asarray(f.tensors[t.name].raw).reshape(-1))
        assert f.metadata["general.file_type"] == 15

    # llama.cpp loads it and evaluates a few tokens (in a child process: llama.cpp aborts on errors)
    code = ("import sys, llama_cpp\n"
            "m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=32, verbose=False)\n"
            "toks = m.tokenize(b'The capital of France is')\n"
            "m.eval(toks)\n"
            "print(len(toks), m.n_vocab())\n")
    done = subprocess.run([sys.executable, "-c", code, str(ours)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    n_tokens, n_vocab = map(int, done.stdout.split())
    assert n_tokens > 3 and n_vocab == 49152
