"""Whole-file quantization with threads and row pieces: the bytes never depend on either.

``convert.quantize_file`` cuts every tensor into pieces of whole rows (``chunk_weights``)
and quantizes them on ``threads`` workers. Blocks, and so rows, are independent in every
ggml type, so the file must be the same for every (threads, chunk_weights) — and the same
as llama.cpp's ``llama_model_quantize`` at any ``nthread`` (the oracle, in a child process).
Hypothesis draws the structure that could break an ordered, windowed pool: pieces of one
row, pieces that do not divide the rows, more workers than pieces, a piece per tensor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refquant.gguf as rg
from refquant import cli
from refquant.gguf import convert, file, recipes
from test_gguf_recipes import tiny_llama

LLAMA_QUANTIZE_N = r"""
import ctypes, json, sys
import llama_cpp
llama_cpp.llama_backend_init()
for src, dst, ftype, nthread in json.loads(sys.argv[1]):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype; p.nthread = nthread
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) != 0:
        raise SystemExit(f"llama_model_quantize failed for {dst}")
"""

FTYPES = ["Q8_0", "Q4_K_M", "IQ4_XS"]
N_EMBD = 256  # a K-quant row: the mixtures keep their K types (96 would fall back)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 2-block synthetic Llama with 12-row matrices (pieces can split a tensor unevenly)."""
    folder = tmp_path_factory.mktemp("threads")
    return tiny_llama(str(folder / "in.gguf"), n_layer=2, n_embd=N_EMBD, rows=12, vocab=24, tied=False, seed=3)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """{ftype: bytes} of llama.cpp's quantizer with 1 and with 4 threads (they agree)."""
    pytest.importorskip("llama_cpp")
    folder = tmp_path_factory.mktemp("threads-llama")
    jobs = [(model, str(folder / f"{f}-{n}.gguf"), recipes.FTYPES[f][0], n) for f in FTYPES for n in (1, 4)]
    done = subprocess.run([sys.executable, "-c", LLAMA_QUANTIZE_N, json.dumps(jobs)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = {}
    for f in FTYPES:
        one, four = (open(folder / f"{f}-{n}.gguf", "rb").read() for n in (1, 4))
        assert one == four, f"{f}: llama.cpp's own bytes depend on nthread"
        out[f] = one
    return out


@pytest.mark.llama
@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_bytes_match_llama_cpp_for_every_thread_count(ftype, threads, model, reference, tmp_path):
    out = tmp_path / "out.gguf"
    convert.quantize_file(model, str(out), ftype, threads=threads)
    assert out.read_bytes() == reference[ftype]


@pytest.fixture(scope="module")
def one_thread_q4_k_m(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("threads-one") / "one.gguf"
    convert.quantize_file(model, str(out), "Q4_K_M", threads=1)
    return out.read_bytes()


@settings(max_examples=8)
@given(threads=st.integers(1, 5),
       rows_per_piece=st.sampled_from([1, 5, 12, 13, 10_000]),  # one row, uneven, a tensor, over one, the file
       wide=st.booleans())                                              # count pieces in rows of n_ff = 512
def test_bytes_do_not_depend_on_threads_or_pieces(threads, rows_per_piece, wide, model, one_thread_q4_k_m,
                                                  tmp_path_factory):
    out = tmp_path_factory.mktemp("threads-drawn") / "out.gguf"
    chunk_weights = rows_per_piece * (512 if wide else N_EMBD)
    convert.quantize_file(model, str(out), "Q4_K_M", threads=threads, chunk_weights=chunk_weights)
    assert out.read_bytes() == one_thread_q4_k_m


def test_per_expert_imatrix_pieces_never_straddle_experts(tmp_path):
    """A 3-D tensor (n_expert, rows, n) with one imatrix vector per expert: a piece of 3 rows
    over experts of 5 rows must still take each row's own expert's vector."""
    rng = np.random.default_rng(7)
    n_expert, rows, n = 3, 5, 256
    w = (rng.standard_normal((n_expert, rows, n)) * 0.02).astype(np.float32)
    qw = rng.uniform(0.1, 4.0, n_expert * n).astype(np.float32)
    src = tiny_llama(str(tmp_path / "in.gguf"), n_layer=1, n_embd=n, rows=4, vocab=8)
    with file.read(src) as f:
        md, md_types = dict(f.metadata), dict(f.metadata_types)
        tensors = [(t.name, t.type, t.shape, np.array(t.raw)) for t in f.tensors.values()]
    name = "blk.0.ffn_up_exps.weight"
    file.write(src, md, tensors + [(name, "F32", w.shape, w.view(np.uint8))], metadata_types=md_types)
    out = tmp_path / "out.gguf"
    convert.quantize_file(src, str(out), "Q4_K_M", imatrix={name: qw}, types_override={name: "Q4_K"},
                          threads=2, chunk_weights=3 * n)
    expected = np.stack([rg.quantize(w[e], "Q4_K", imatrix=qw[e * n:(e + 1) * n]) for e in range(n_expert)])
    with file.read(out) as f:
        assert np.array_equal(f.tensors[name].raw, expected)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_thread_and_chunk_counts_are_refused(bad, model, tmp_path):
    with pytest.raises(ValueError, match="threads: expected a positive integer"):
        convert.quantize_file(model, str(tmp_path / "o.gguf"), "Q8_0", threads=bad)
    with pytest.raises(ValueError, match="chunk_weights: expected a positive integer"):
        convert.quantize_file(model, str(tmp_path / "o.gguf"), "Q8_0", chunk_weights=bad)
    assert os.listdir(tmp_path) == []


def test_cli_threads(model, tmp_path, capsys):
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    assert cli.main(["quantize", model, str(one), "--type", "Q8_0", "--threads", "1"]) == 0
    assert cli.main(["quantize", model, str(two), "--type", "Q8_0", "--threads", "2"]) == 0
    assert one.read_bytes() == two.read_bytes()
    capsys.readouterr()
    assert cli.main(["quantize", model, str(tmp_path / "x.gguf"), "--type", "Q8_0", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "refquant quantize: error: --threads: expected a positive number of threads, got 0\n", err
