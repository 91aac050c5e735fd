"""Importance matrices: refquant.imatrix (statistics by the runtime), refquant.gguf.imatrix (the file),
``refquant imatrix`` (the command).

Oracles: the statistics against the activations captured independently — the calibration driver's
rows (``blockwise.block_inputs``) and the backward module's own forward ops (``allocate.curvature``);
the file against gguf-py's reader; quantizing with the file against libggml given the same values.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from refquant import allocate as A
from refquant import cli
from refquant import imatrix as I
from refquant.gguf import convert, file
from refquant.gguf.imatrix import load_imatrix, write_imatrix
from refquant.model import load_model
from refquant.model.calibration import block_inputs
from refquant.testing.llama import tiny_llama

N_LAYER, D, N_FF, N_HEAD, N_KV = 2, 64, 256, 4, 2  # rows of 64 (32-blocks) and 256 (k-quants: ffn_down)


def tiny_model(seed: int = 0, vocab: int = 256):
    return tiny_llama(seed=seed, n_layer=N_LAYER, d=D, n_head=N_HEAD, n_kv=N_KV, n_ff=N_FF, vocab=vocab, n_ctx=128)


def write_tiny_model(path, seed: int = 0) -> str:
    """A tiny Llama GGUF (F32) with a byte-level tokenizer: its 256 byte symbols, no merges."""
    from tokenizers import pre_tokenizers

    model = tiny_model(seed)
    meta = {"general.architecture": "llama", "llama.block_count": N_LAYER, "llama.embedding_length": D,
            "llama.attention.head_count": N_HEAD, "llama.attention.head_count_kv": N_KV,
            "llama.feed_forward_length": N_FF, "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "llama.context_length": 128, "general.file_type": 0, "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": sorted(pre_tokenizers.ByteLevel.alphabet()), "tokenizer.ggml.merges": []}
    types = {k: file.ValueType.UINT32 for k, v in meta.items() if isinstance(v, int)}  # llama.cpp reads u32
    types["llama.attention.layer_norm_rms_epsilon"] = file.ValueType.FLOAT32
    types["tokenizer.ggml.merges"] = (file.ValueType.ARRAY, file.ValueType.STRING)
    tensors = [(n, "F32", tuple(w.shape), np.ascontiguousarray(w, np.float32)) for n, w in model.weights.items()]
    file.write(path, meta, tensors, metadata_types=types)
    return str(path)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(1).integers(0, 256, 4 * 64 + 17)  # 4 chunks of 64 and a dropped remainder


def test_sums_equal_the_captured_inputs(model, tokens):
    im = I.compute_imatrix(model, tokens, chunk_size=64)
    assert im.chunk_count == 4 and set(im.counts.values()) == {256}
    hs = [model.embed(tokens[k * 64:(k + 1) * 64]) for k in range(4)]
    for i in range(N_LAYER):
        X = block_inputs(model, i, hs)  # the driver's rows, (256, in) per linear
        for kind, rows in X.items():
            expected = np.sum(np.asarray(rows, np.float64) ** 2, axis=0)
            np.testing.assert_allclose(im.sums[f"blk.{i}.{kind}.weight"], expected, rtol=1e-12)
        hs = [model.block(i, h) for h in hs]


def test_sums_equal_the_backward_modules_forward(model, tokens):
    """The head's input too (process_output), against backward.head_forward's normed x."""
    im = I.compute_imatrix(model, tokens, chunk_size=64, process_output=True)
    curv = A.curvature(model, tokens, window=64, max_windows=None)
    assert set(im.sums) == set(curv.h)
    for name, s in im.sums.items():
        np.testing.assert_allclose(s / im.counts[name], curv.h[name], rtol=1e-5, atol=1e-12)


def test_bos_replaces_each_chunks_first_token(model, tokens):
    class Tok:
        add_bos, bos_id = True, 7

    with_bos = tiny_model()
    with_bos.tokenizer = Tok()
    a = I.compute_imatrix(with_bos, tokens, chunk_size=64)
    fixed = tokens.copy()
    fixed[::64][:4] = 7
    b = I.compute_imatrix(model, fixed, chunk_size=64)
    assert all(np.array_equal(a.sums[n], b.sums[n]) for n in a.sums)
    assert not np.array_equal(a.sums["blk.0.attn_q.weight"], I.compute_imatrix(model, tokens, 64).sums["blk.0.attn_q.weight"])


def test_file_round_trip_and_gguf_py_reads_it(model, tokens, tmp_path):
    gguf = pytest.importorskip("gguf")
    im = I.compute_imatrix(model, tokens, chunk_size=64, datasets=["calib.txt"])
    path = str(tmp_path / "imatrix.gguf")
    im.save(path)
    back = load_imatrix(path)
    assert set(back) == set(im.sums)
    for n, v in im.values().items():
        np.testing.assert_allclose(back[n], v, rtol=1e-6)  # float32 sums / float32 counts
    r = gguf.GGUFReader(path)
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["calib.txt"]
    assert r.fields["imatrix.chunk_count"].contents() == 4 and r.fields["imatrix.chunk_size"].contents() == 64
    by_name = {t.name: t for t in r.tensors}
    names = [t.name for t in r.tensors]
    assert names == [f"{n}.{part}" for n in sorted(im.sums) for part in ("in_sum2", "counts")]  # llama-imatrix's order
    t = by_name["blk.1.ffn_down.weight.in_sum2"]
    assert list(t.shape) == [N_FF, 1]  # ne = (n_per_row, n_mat)
    np.testing.assert_array_equal(np.asarray(t.data).ravel(), im.sums["blk.1.ffn_down.weight"].astype(np.float32))
    assert np.asarray(by_name["blk.1.ffn_down.weight.counts"].data).ravel().tolist() == [256.0]


def test_legacy_dat_reads_as_the_gguf_file(tmp_path):
    sums = {"blk.0.attn_q.weight": np.array([4.0, 0.0, 10.0]), "blk.0.ffn_down.weight": np.array([1.0, 3.0])}
    counts = {"blk.0.attn_q.weight": 8, "blk.0.ffn_down.weight": 2}
    write_imatrix(str(tmp_path / "m.gguf"), sums, counts)
    ncall = 4  # llama-imatrix's .dat: per entry the mean times ncall, ncall chunks
    blob = struct.pack("<i", len(sums))
    for n, s in sums.items():
        blob += struct.pack("<i", len(n)) + n.encode() + struct.pack("<ii", ncall, len(s))
        blob += (s / counts[n] * ncall).astype(np.float32).tobytes()
    (tmp_path / "m.dat").write_bytes(blob)
    a, b = load_imatrix(str(tmp_path / "m.gguf")), load_imatrix(str(tmp_path / "m.dat"))
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    assert a["blk.0.attn_q.weight"].tolist() == [0.5, 0.0, 1.25]


def test_writer_refuses_bad_statistics(tmp_path):
    with pytest.raises(ValueError, match="counts: sums and counts must name the same tensors"):
        write_imatrix(str(tmp_path / "x.gguf"), {"a": np.ones(2)}, {"b": 1})
    with pytest.raises(ValueError, match=r"sums\['a'\]: sums of squares and counts must be finite and >= 0"):
        write_imatrix(str(tmp_path / "x.gguf"), {"a": np.array([1.0, np.nan])}, {"a": 1})
    assert not (tmp_path / "x.gguf").exists()


def test_quantizing_with_the_file_equals_libggml_given_the_values(model, tokens, tmp_path):
    from refquant.testing.ggml import ggml_quantize

    src = write_tiny_model(tmp_path / "tiny.gguf")
    im_path = str(tmp_path / "imatrix.gguf")
    I.compute_imatrix(load_model(src), tokens, chunk_size=64).save(im_path)
    values = load_imatrix(im_path)
    summary = convert.quantize_file(src, str(tmp_path / "q.gguf"), "Q4_K_M", im_path)
    with file.read(src) as f_in, file.read(str(tmp_path / "q.gguf")) as f_out:
        checked = 0
        for name, qtype in summary.types.items():
            if qtype == "F32" or name not in values:
                continue
            W = np.asarray(f_in.tensors[name].raw).view(np.float32).reshape(f_in.tensors[name].shape)
            assert np.array_equal(np.asarray(f_out.tensors[name].raw), ggml_quantize(W, qtype, values[name])), name
            checked += 1
    assert checked == 7 * N_LAYER and {"Q5_0", "Q4_K"} <= set(summary.types.values())


def test_cli_imatrix(tmp_path, capsys):
    src = write_tiny_model(tmp_path / "tiny.gguf")
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 12)
    out = str(tmp_path / "im.gguf")
    assert cli.main(["imatrix", src, "-o", out, "--text", str(text), "--chunk", "64", "--tokens", "256"]) == 0
    assert "14 matrices, 4 chunks of 64 tokens (calib.txt)" in capsys.readouterr().out
    assert len(load_imatrix(out)) == 7 * N_LAYER
    assert cli.main(["imatrix", src, "-o", out, "--text", str(text), "--chunk", "4096"]) == 2
    assert "fewer than one chunk of 4096" in capsys.readouterr().err
