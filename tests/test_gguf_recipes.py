"""llama.cpp's mixtures: tensor types layer by layer, fallbacks, whole-file quantization, the CLI.

The oracle is llama.cpp itself: ``llama_model_quantize`` (llama-cpp-python) run in a child
process on small synthetic Llama files, whose output files we read back. llama-quantize
never checks that tensor shapes match the hyper-parameters, so every matrix can be a few
rows of 256 (or 96) columns: the recipe only looks at names, layer counts and row lengths.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import refquant.gguf as rg
from refquant.gguf import convert, file, recipes
from refquant.gguf.imatrix import load_imatrix
from refquant.gguf.recipes import ModelInfo
from refquant.testing.ggml import ggml_quantize

U32 = file.ValueType.UINT32

LLAMA_QUANTIZE = r"""
import ctypes, json, sys
import llama_cpp
llama_cpp.llama_backend_init()
jobs = json.loads(sys.argv[1])
for src, dst, ftype in jobs:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype; p.allow_requantize = True; p.nthread = 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed for {dst}")
"""


def llama_quantize(jobs: list[tuple[str, str, int]]) -> None:
    """Run llama.cpp's quantizer on (src, dst, llama_ftype) jobs in one child process."""
    pytest.importorskip("llama_cpp")
    done = subprocess.run([sys.executable, "-c", LLAMA_QUANTIZE, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def tiny_llama(path, n_layer=16, n_embd=256, n_ff=512, n_head=4, n_head_kv=1, tied=True, rows=4, vocab=16, seed=0):
    """A synthetic Llama GGUF: real tensor names, F32 weights of ``rows`` rows each."""
    rng = np.random.default_rng(seed)
    metadata = {"general.architecture": "llama", "general.name": "tiny", "llama.block_count": n_layer,
                "llama.context_length": 64, "llama.embedding_length": n_embd, "llama.feed_forward_length": n_ff,
                "llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_head_kv,
                "llama.rope.dimension_count": max(1, n_embd // n_head), "llama.attention.layer_norm_rms_epsilon": 1e-5,
                "general.file_type": 0}
    types = {k: U32 for k, v in metadata.items() if isinstance(v, int)}
    tensors = []

    def add(name, shape):
        w = (rng.standard_t(4, shape) * 0.02).astype(np.float32)
        tensors.append((name, "F32", shape, w.view(np.uint8)))

    add("token_embd.weight", (vocab, n_embd))
    add("output_norm.weight", (n_embd,))
    if not tied:
        add("output.weight", (vocab, n_embd))
    for i in range(n_layer):
        for part, cols in (("attn_q", n_embd), ("attn_k", n_embd), ("attn_v", n_embd), ("attn_output", n_embd),
                           ("ffn_gate", n_embd), ("ffn_up", n_embd), ("ffn_down", n_ff)):
            add(f"blk.{i}.{part}.weight", (rows, cols))
        add(f"blk.{i}.attn_norm.weight", (n_embd,))
        add(f"blk.{i}.ffn_norm.weight", (n_embd,))
    file.write(path, metadata, tensors, metadata_types=types)
    return path


CONFIGS = {
    "gqa4-tied": dict(n_head=4, n_head_kv=1, tied=True),
    "gqa1-untied": dict(n_head=4, n_head_kv=4, tied=False),
    "rows96-untied": dict(n_embd=96, n_ff=160, n_head=3, n_head_kv=3, tied=False),   # every k-quant falls back
    "rows96-tied-8layers": dict(n_layer=8, n_embd=96, n_ff=288, n_head=4, n_head_kv=2, tied=True),
}
# Q2_K_S refuses to run without an imatrix; the IQ mixtures are tests/test_gguf_recipes_iq.py's
ORACLE_FTYPES = [f for f in recipes.FTYPES if f != "Q2_K_S" and f not in recipes.IQ_MIXTURES]


@pytest.fixture(scope="module")
def llama_types(tmp_path_factory):
    """{(config, ftype): {tensor: type}} from llama.cpp's own quantizer, in its file order."""
    folder = tmp_path_factory.mktemp("recipes")
    jobs, keys = [], []
    for cfg, kwargs in CONFIGS.items():
        src = tiny_llama(str(folder / f"{cfg}.gguf"), **kwargs)
        for ftype in ORACLE_FTYPES:
            dst = str(folder / f"{cfg}-{ftype}.gguf")
            jobs.append((src, dst, recipes.FTYPES[ftype][0]))
            keys.append((cfg, ftype, src, dst))
    llama_quantize(jobs)
    out = {}
    for cfg, ftype, src, dst in keys:
        with file.read(dst) as f:
            out[cfg, ftype] = (src, {n: t.type for n, t in f.tensors.items()})
    return out


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_every_mixture_matches_llama_cpp(cfg, llama_types):
    for ftype in ORACLE_FTYPES:
        src, theirs = llama_types[cfg, ftype]
        with file.read(src) as f:
            ours = recipes.tensor_types(f, ftype)
        assert list(ours) == list(theirs), f"{ftype}: tensor order"
        assert ours == theirs, f"{ftype}: {[(n, ours[n], theirs[n]) for n in theirs if ours[n] != theirs[n]][:4]}"


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q3_K_M", "Q5_K_S", "Q2_K", "IQ4_XS", "Q4_1", "Q8_0", "BF16"])
def test_whole_file_bytes_match_llama_quantize(ftype, tmp_path):
    """The file refquant writes is byte-for-byte the file llama-quantize writes."""
    src = tiny_llama(str(tmp_path / "in.gguf"), n_layer=8, rows=8, tied=True, seed=1)
    llama_quantize([(src, str(tmp_path / "llama.gguf"), recipes.FTYPES[ftype][0])])
    summary = convert.quantize_file(src, str(tmp_path / "ours.gguf"), ftype)
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "llama.gguf").read_bytes()
    assert summary.bytes_out < summary.bytes_in or ftype == "BF16"


# --------------------------------------------------------------------------- the rules, by hand

def test_use_more_bits_for_30_layers():
    # n/8 = 3, 7n/8 = 26: layers 0-2, 26-29, and (i - 3) % 3 == 2 -> 5, 8, ..., 23
    assert [i for i in range(30) if recipes.use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_smollm2_q4_k_m_mixture(smollm2_path):
    """SmolLM2-135M (30 layers, rows of 576 or 1536): where Q4_K_M puts its bits."""
    with file.read(smollm2_path) as f:
        types = recipes.tensor_types(f, "Q4_K_M")
    more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    for i in range(30):
        # ffn_down rows are 1536 = 6·256: Q6_K in the "more bits" layers, else Q4_K
        assert types[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if i in more else "Q4_K")
        # attn_v rows are 576: Q6_K falls back to Q8_0, Q4_K to Q5_0
        assert types[f"blk.{i}.attn_v.weight"] == ("Q8_0" if i in more else "Q5_0")
        assert types[f"blk.{i}.attn_q.weight"] == "Q5_0" and types[f"blk.{i}.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == "Q8_0"  # tied output: Q6_K, but 576 % 256 != 0 -> Q8_0


def test_fallback_table():
    assert recipes.fallback("Q4_K", 576) == "Q5_0" and recipes.fallback("Q4_K", 512) == "Q4_K"
    assert recipes.fallback("Q6_K", 576) == "Q8_0" and recipes.fallback("Q5_K", 96) == "Q5_1"
    assert recipes.fallback("Q2_K", 32) == "Q4_0" and recipes.fallback("Q3_K", 64) == "Q4_0"
    assert recipes.fallback("IQ4_XS", 288) == "IQ4_NL" and recipes.fallback("Q4_K", 48) == "F16"
    with pytest.raises(ValueError, match="qtype: no fallback is defined for Q8_0"):
        recipes.fallback("Q8_0", 48)


def test_what_is_quantized():
    assert recipes.allows_quantization("blk.0.attn_q.weight", (576, 576))
    assert not recipes.allows_quantization("blk.0.attn_norm.weight", (576,))
    assert not recipes.allows_quantization("blk.0.ffn_norm.weight", (1, 576))    # 1-D in ggml's eyes
    assert not recipes.allows_quantization("blk.0.attn_q.bias", (576, 2))
    assert not recipes.allows_quantization("blk.0.ffn_gate_inp.weight", (8, 576))  # MoE router
    assert recipes.category("blk.3.ffn_down_exps.weight") == "ffn_down"
    assert recipes.category("blk.3.attn_qkv.weight") == "attn_qkv"


def test_imatrix_and_model_shape_rules():
    info = ModelInfo(n_layer=16, n_head=8, n_head_kv=2)  # n_gqa = 4
    shape = (4, 256)
    # Q4_0 / Q5_0 with an imatrix: ffn_down of the first n/8 = 2 layers gets Q4_1 / Q5_1
    assert recipes.tensor_type("blk.1.ffn_down.weight", shape, "Q4_0", info, i_ffn=1, has_imatrix=True) == "Q4_1"
    assert recipes.tensor_type("blk.2.ffn_down.weight", shape, "Q4_0", info, i_ffn=2, has_imatrix=True) == "Q4_0"
    assert recipes.tensor_type("blk.1.ffn_down.weight", shape, "Q4_0", info, i_ffn=1) == "Q4_0"
    # IQ4_XS: ffn_down of the first n/8 layers Q5_K without an imatrix only; attn_v Q5_K with n_gqa >= 4
    assert recipes.tensor_type("blk.0.ffn_down.weight", shape, "IQ4_XS", info, i_ffn=0) == "Q5_K"
    assert recipes.tensor_type("blk.0.ffn_down.weight", shape, "IQ4_XS", info, i_ffn=0, has_imatrix=True) == "IQ4_XS"
    assert recipes.tensor_type("blk.9.attn_v.weight", shape, "IQ4_XS", info, i_attn_v=9, n_attn_v=16) == "Q5_K"
    # a 70B Llama (80 layers, GQA) lifts Q3_K/Q4_K attn_v to Q5_K
    big = ModelInfo(n_layer=80, n_head=64, n_head_kv=8)
    assert big.is_70b
    assert recipes.tensor_type("blk.40.attn_v.weight", shape, "Q4_K_M", big, i_attn_v=40, n_attn_v=80) == "Q5_K"
    assert recipes.tensor_type("blk.40.attn_v.weight", shape, "Q4_K_M", info, i_attn_v=9, n_attn_v=16) == "Q4_K"
    with pytest.raises(ValueError, match="imatrix: Q2_K_S needs an importance matrix"):
        recipes.tensor_types({"blk.0.attn_q.weight": ("F32", shape)}, "Q2_K_S", info)


def test_type_aliases_and_unknown_ftype():
    info = ModelInfo(n_layer=8)
    t = {"blk.0.ffn_down.weight": ("F32", (4, 256))}
    assert recipes.tensor_types(t, "q4_k", info) == recipes.tensor_types(t, "Q4_K_M", info)
    with pytest.raises(ValueError, match="ftype: unknown file type 'Q4_K_X'"):
        recipes.tensor_types(t, "Q4_K_X", info)


# --------------------------------------------------------------------------- importance matrices

def write_gguf_imatrix(path, values: dict[str, np.ndarray], counts: int = 4):
    """llama-imatrix's GGUF layout: <name>.in_sum2 (Σ x²) and <name>.counts per tensor."""
    tensors = []
    for name, v in values.items():
        tensors.append((f"{name}.in_sum2", "F32", (1, v.size), (v * counts).astype(np.float32).view(np.uint8)))
        tensors.append((f"{name}.counts", "F32", (1, 1), np.array([counts], np.float32).view(np.uint8)))
    file.write(path, {"imatrix.datasets": ["tiny"], "imatrix.chunk_count": 1, "imatrix.chunk_size": 64}, tensors,
               metadata_types={"imatrix.chunk_count": U32, "imatrix.chunk_size": U32})


def write_legacy_imatrix(path, values: dict[str, np.ndarray], ncall: int = 4):
    parts = [struct.pack("<i", len(values))]
    for name, v in values.items():
        b = name.encode()
        parts += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, v.size), (v * ncall).astype("<f4").tobytes()]
    parts.append(struct.pack("<i", 1))  # last call
    open(path, "wb").write(b"".join(parts))


@pytest.mark.parametrize("writer", [write_gguf_imatrix, write_legacy_imatrix])
def test_imatrix_files_load_and_drive_the_weighted_search(writer, tmp_path, rng):
    src = tiny_llama(str(tmp_path / "in.gguf"), n_layer=8, rows=8, seed=2)
    with file.read(src) as f:
        names = [n for n in f.tensors if recipes.allows_quantization(n, f.tensors[n].shape)]
        values = {n: (rng.gamma(0.7, 1.0, f.tensors[n].shape[-1]) + 0.01).astype(np.float32) for n in names}
    writer(str(tmp_path / "imatrix"), values)
    loaded = load_imatrix(str(tmp_path / "imatrix"))
    assert set(loaded) == set(values)
    assert all(np.allclose(loaded[n], values[n], rtol=1e-6) for n in values)
    summary = convert.quantize_file(src, str(tmp_path / "out.gguf"), "Q4_0", imatrix=loaded)
    with file.read(src) as f, file.read(str(tmp_path / "out.gguf")) as g:
        name = "blk.3.attn_q.weight"
        w = f.tensors[name].raw.view(np.float32)
        assert np.array_equal(g.tensors[name].raw, ggml_quantize(w, "Q4_0", imatrix=loaded[name]))
        assert g.tensors["blk.0.ffn_down.weight"].type == "Q4_1"  # the imatrix rule for the first n/8 layers
    assert summary.types["blk.0.ffn_down.weight"] == "Q4_1"


def test_bad_imatrix_file(tmp_path):
    (tmp_path / "bad.dat").write_bytes(b"\x05\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="imatrix: .* is neither a GGUF imatrix nor a legacy"):
        load_imatrix(str(tmp_path / "bad.dat"))


# --------------------------------------------------------------------------- the command

def test_cli_quantize(tmp_path, capsys):
    from refquant.cli import main

    src = tiny_llama(str(tmp_path / "in.gguf"), n_layer=8, rows=8)
    out = tmp_path / "out.gguf"
    assert main(["quantize", src, str(out), "--type", "Q4_K_M"]) == 0
    printed = capsys.readouterr().out
    assert "Q4_K_M" in printed and "bpw" in printed
    with file.read(src) as f, file.read(str(out)) as g:
        assert g.metadata["general.file_type"] == 15 and g.metadata_types["general.file_type"] == U32
        assert g.metadata["general.quantization_version"] == 2
        t = g.tensors["blk.4.attn_q.weight"]
        assert t.type == "Q4_K"
        assert np.array_equal(t.raw, rg.quantize(f.tensors["blk.4.attn_q.weight"].raw.view(np.float32), "Q4_K"))


@pytest.mark.parametrize("args, message", [
    (["--type", "Q4_K_X"], "unknown file type 'Q4_K_X'"),
    (["--type", "Q4_0", "--imatrix", "/nonexistent/imatrix.gguf"], "imatrix: no such file"),
])
def test_cli_user_errors(tmp_path, capsys, args, message):
    from refquant.cli import main

    src = tiny_llama(str(tmp_path / "in.gguf"), n_layer=8)
    assert main(["quantize", src, str(tmp_path / "out.gguf"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.gguf").exists()


def test_cli_missing_and_corrupt_input(tmp_path, capsys):
    from refquant.cli import main

    assert main(["quantize", str(tmp_path / "nope.gguf"), str(tmp_path / "out.gguf"), "--type", "Q4_0"]) == 2
    assert "input: no such file" in capsys.readouterr().err
    good = open(tiny_llama(str(tmp_path / "in.gguf"), n_layer=8), "rb").read()
    for name, data in (("truncated.gguf", good[: len(good) // 2]), ("corrupt.gguf", b"GGUF" + b"\xff" * 60)):
        (tmp_path / name).write_bytes(data)
        assert main(["quantize", str(tmp_path / name), str(tmp_path / "out.gguf"), "--type", "Q4_0"]) == 2
        assert "not a valid GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "out.gguf").exists()
    assert sorted(os.listdir(tmp_path)) == ["corrupt.gguf", "in.gguf", "truncated.gguf"]  # no temporary left


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    """A crash while quantizing (here: the 5th tensor) writes nothing: the writer never starts."""
    src = tiny_llama(str(tmp_path / "in.gguf"), n_layer=8)
    (tmp_path / "out.gguf").write_bytes(b"previous")
    calls = {"n": 0}
    real = rg.quantize

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise MemoryError("simulated")
        return real(*a, **k)

    monkeypatch.setattr(rg, "quantize", flaky)
    with pytest.raises(MemoryError):
        convert.quantize_file(src, str(tmp_path / "out.gguf"), "Q8_0")
    assert (tmp_path / "out.gguf").read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["in.gguf", "out.gguf"]
