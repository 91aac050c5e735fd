"""llama.cpp's i-quant, ternary and 1-2 bit mixtures (IQ2_XXS … IQ3_M, IQ1_S/M, TQ1_0/TQ2_0, MXFP4_MOE,
Q1_0, Q2_0): per-tensor types, fallbacks and refusals, and whole files, against llama.cpp itself.

The oracle is ``llama_model_quantize`` (llama-cpp-python) in a child process, given the same
importance matrix as refquant (a deterministic synthetic one: seeded positive values per column,
written as a llama-imatrix GGUF file that both read). Three kinds of model files:

* the synthetic Llamas of test_gguf_recipes (several head / row / tying layouts): the tables;
* "SmolLM2 rows": the real SmolLM2-135M file with every matrix cut to its first ROWS rows (its
  own Q4_1 / Q8_0 bytes, so both quantizers decode the real weights): the same names, row
  lengths, layer count and metadata as the whole model, so the same mixture, tensor by tensor —
  and a file small enough to quantize byte for byte in NumPy within CI time (the whole model's
  ~130M weights take NumPy hours: its IQ4_NL / IQ3_S searches cost ~5-30 µs a weight);
* a small Llama with SmolLM2's tokenizer, which llama.cpp loads and runs from refquant's file.

A whole-file test needs every block type of its mixture; a type whose codec has not landed yet
is skipped by name (refquant.gguf.CODECS), never counted as a pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import refquant.gguf as rg
from refquant.gguf import convert, file, recipes
from refquant.gguf.recipes import ModelInfo

from test_gguf_recipes import CONFIGS, tiny_llama, write_gguf_imatrix  # noqa: E402  (tests/ is on sys.path)

# rows kept of every SmolLM2 matrix: the IQ1 / IQ2 searches cost ~15-70 ms a super-block in NumPy, so CI keeps two
ROWS = 4 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 2  # 1 row would be a 1-D tensor to ggml
# the mixtures also run without an imatrix: the one whose rules read has_imatrix, and some that refuse
WITHOUT_IMATRIX = ("IQ3_XXS", "IQ2_M", "IQ1_M")
# the layouts of test_gguf_recipes that tell these mixtures apart: n_gqa >= 4, an untied token_embd,
# rows of 96 (every 256-block type falls back) with n_gqa = 2
TABLE_CONFIGS = ("gqa4-tied", "gqa1-untied", "rows96-tied-8layers")

LLAMA_QUANTIZE = r"""
import ctypes, json, sys
import numpy as np
import llama_cpp
from refquant.gguf.imatrix import load_imatrix
llama_cpp.llama_backend_init()
codes = {}
for src, dst, ftype, imatrix in json.loads(sys.argv[1]):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype; p.allow_requantize = True; p.nthread = 1
    keep = []
    if imatrix:
        values = load_imatrix(imatrix)
        table = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()   # NULL-name terminated
        for i, (name, v) in enumerate(values.items()):
            v = np.ascontiguousarray(v, np.float32); keep.append(v)
            table[i].name = name.encode(); table[i].size = v.size
            table[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        p.imatrix = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    codes[dst] = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
print(json.dumps(codes))
"""


def llama_quantize(jobs: list[tuple[str, str, int, str | None]]) -> dict[str, int]:
    """llama.cpp's quantizer on (src, dst, llama_ftype, imatrix file | None) jobs, one child process:
    {dst: return code} (0: written; llama.cpp refuses with 1, e.g. a missing imatrix)."""
    pytest.importorskip("llama_cpp")
    done = subprocess.run([sys.executable, "-c", LLAMA_QUANTIZE, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_imatrix(tensors: dict[str, tuple[str, tuple]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded positive importances per column for every matrix llama-imatrix would see (not token_embd)."""
    rng = np.random.default_rng(seed)
    return {n: rng.gamma(1.0, 1.0, shape[-1]).astype(np.float32) + np.float32(1e-3)
            for n, (_, shape) in tensors.items()
            if recipes.allows_quantization(n, shape) and recipes.category(n) != "token_embd"}


def entries(path: str) -> dict[str, tuple[str, tuple]]:
    with file.read(path) as f:
        return {n: (t.type, tuple(t.shape)) for n, t in f.tensors.items()}


def types_of(path: str) -> dict[str, str]:
    with file.read(path) as f:
        return {n: t.type for n, t in f.tensors.items()}


def missing_codecs(types) -> list[str]:
    return sorted({t for t in types if t not in rg.CODECS})


# --------------------------------------------------------------------------- the tables, synthetic Llamas

@pytest.fixture(scope="module")
def oracle(smollm2_path, tmp_path_factory) -> dict:
    """Every llama.cpp quantization of this module, in one child process: llama.cpp builds the IQ1 / IQ2
    neighbour maps once per process, which takes it tens of seconds. {dst: return code}, and the files."""
    folder = tmp_path_factory.mktemp("oracle")
    table_jobs, table_keys = table_runs(folder)
    rows_src, rows_imatrix = smollm2_rows(smollm2_path, folder)
    rows_out = {ftype: str(folder / f"rows-{ftype}.gguf") for ftype in WHOLE_FILE}
    small_src = small_llama(str(folder / "small.gguf"), smollm2_path)
    small_imatrix = str(folder / "small.imatrix.gguf")
    write_gguf_imatrix(small_imatrix, synthetic_imatrix(entries(small_src), seed=3))
    small_out = {ftype: str(folder / f"small-{ftype}.gguf") for ftype in LOADED}
    jobs = [*table_jobs,
            *[(rows_src, dst, recipes.FTYPES[f][0], rows_imatrix) for f, dst in rows_out.items()],
            *[(small_src, dst, recipes.FTYPES[f][0], small_imatrix) for f, dst in small_out.items()]]
    codes = llama_quantize(jobs)
    return {"codes": codes, "tables": table_keys, "rows": (rows_src, rows_imatrix, rows_out),
            "small": (small_src, small_imatrix, small_out)}


@pytest.fixture(scope="module")
def llama_tables(oracle):
    """{(config, ftype, with imatrix): (src, {tensor: type} | None when llama.cpp refused)}."""
    codes = oracle["codes"]
    return {(cfg, ftype, im): (src, types_of(dst) if codes[dst] == 0 else None)
            for cfg, ftype, im, src, dst in oracle["tables"]}


def table_runs(folder):
    """The synthetic Llamas' jobs: every IQ mixture with an imatrix, WITHOUT_IMATRIX also without."""
    jobs, keys = [], []
    for cfg in TABLE_CONFIGS:
        src = tiny_llama(str(folder / f"{cfg}.gguf"), **CONFIGS[cfg])
        imatrix = str(folder / f"{cfg}.imatrix.gguf")
        write_gguf_imatrix(imatrix, synthetic_imatrix(entries(src)))
        for ftype in recipes.IQ_MIXTURES:
            for with_imatrix in (True, False) if ftype in WITHOUT_IMATRIX else (True,):
                dst = str(folder / f"{cfg}-{ftype}-{int(with_imatrix)}.gguf")
                jobs.append((src, dst, recipes.FTYPES[ftype][0], imatrix if with_imatrix else None))
                keys.append((cfg, ftype, with_imatrix, src, dst))
    return jobs, keys


@pytest.mark.parametrize("cfg", TABLE_CONFIGS)
def test_every_iq_mixture_matches_llama_cpp(cfg, llama_tables):
    n_compared = 0
    for ftype in recipes.IQ_MIXTURES:
        for with_imatrix in (True, False) if ftype in WITHOUT_IMATRIX else (True,):
            src, theirs = llama_tables[cfg, ftype, with_imatrix]
            with file.read(src) as f:
                if theirs is None:  # llama.cpp refused: no imatrix for an IQ1/IQ2 tensor, or Q1_0 without a fallback
                    with pytest.raises(ValueError, match="imatrix: .* needs an importance matrix|qtype: no fallback"):
                        recipes.tensor_types(f, ftype, has_imatrix=with_imatrix)
                    continue
                ours = recipes.tensor_types(f, ftype, has_imatrix=with_imatrix)
            assert list(ours) == list(theirs), f"{ftype}: tensor order"
            bad = [(n, ours[n], theirs[n]) for n in theirs if ours[n] != theirs[n]]
            assert not bad, f"{ftype}, imatrix={with_imatrix}: {bad[:4]}"
            n_compared += 1
    assert n_compared >= len(recipes.IQ_MIXTURES)  # most mixtures ran on llama.cpp's side


def test_iq_rules_by_hand():
    info = ModelInfo(n_layer=16, n_head=4, n_head_kv=4)
    shape = (8, 512)
    t = recipes.tensor_type
    # IQ2_M: attn_v IQ3_S (n_gqa 1), ffn_down IQ3_S in the first n/8 = 2 layers, then the default IQ2_S
    assert t("blk.0.attn_v.weight", shape, "IQ2_M", info) == "IQ3_S"
    assert [t(f"blk.{i}.ffn_down.weight", shape, "IQ2_M", info, i_ffn=i) for i in (1, 2)] == ["IQ3_S", "IQ2_S"]
    # IQ1_M: attn_output IQ2_XXS, ffn_down Q2_K in the first 2 layers, the output Q5_K
    assert t("blk.3.attn_output.weight", shape, "IQ1_M", info) == "IQ2_XXS"
    assert t("blk.0.ffn_down.weight", shape, "IQ1_M", info) == "Q2_K"
    assert t("output.weight", shape, "IQ1_M", info) == "Q5_K"
    # IQ3_XXS: attn_v IQ3_S without an imatrix, IQ3_XXS with one; ffn_down Q4_K / Q3_K without one
    assert t("blk.5.attn_v.weight", shape, "IQ3_XXS", info) == "IQ3_S"
    assert t("blk.5.attn_v.weight", shape, "IQ3_XXS", info, has_imatrix=True) == "IQ3_XXS"
    assert [t(f"blk.{i}.ffn_down.weight", shape, "IQ3_XXS", info, i_ffn=i) for i in (1, 2)] == ["Q4_K", "Q3_K"]
    # IQ3_XS: ffn_gate / ffn_up IQ3_XXS only in the middle layers [n/8, 7n/8)
    assert [t(f"blk.{i}.ffn_up.weight", shape, "IQ3_XS", info, i_ffn=i) for i in (1, 2, 13, 14)] == \
        ["IQ3_S", "IQ3_XXS", "IQ3_XXS", "IQ3_S"]
    # a dense model under MXFP4_MOE: every matrix Q8_0; a 3-D expert tensor MXFP4
    assert t("blk.0.ffn_up.weight", shape, "MXFP4_MOE", info) == "Q8_0"
    assert t("blk.0.ffn_up_exps.weight", (8, 64, 512), "MXFP4_MOE", info) == "MXFP4"
    # fallbacks: the 256-block i-quants -> IQ4_NL, ternary / Q2_0 -> Q4_0, Q1_0 has none
    assert [recipes.fallback(q, 96) for q in ("IQ2_XXS", "IQ3_S", "IQ1_M", "TQ1_0", "Q2_0")] == \
        ["IQ4_NL", "IQ4_NL", "IQ4_NL", "Q4_0", "Q4_0"]
    assert recipes.fallback("Q2_0", 576) == "Q2_0"                     # 576 = 9 blocks of 64
    assert recipes.fallback("IQ3_S", 80) == "F16"
    with pytest.raises(ValueError, match="qtype: no fallback is defined for Q1_0"):
        recipes.fallback("Q1_0", 576)


# --------------------------------------------------------------------------- SmolLM2, row by row

@pytest.fixture(scope="module")
def smollm2_rows_file(oracle):
    return oracle["rows"][:2]


def smollm2_rows(smollm2_path, folder):
    """SmolLM2 with every matrix cut to its first ROWS rows (real bytes), and its synthetic imatrix file."""
    path = str(folder / "smollm2-rows.gguf")
    with file.read(smollm2_path) as f:
        tensors = []
        for name, t in f.tensors.items():
            shape = tuple(t.shape)
            raw = np.asarray(t.raw)
            if len(shape) >= 2:
                raw = raw.reshape(shape[0], -1)[:ROWS]                       # (ROWS, row_bytes)
                shape = (ROWS, *shape[1:])
            tensors.append((name, t.type, shape, raw.reshape(-1)))
        file.write(path, f.metadata, tensors, metadata_types=f.metadata_types)
    imatrix = str(folder / "smollm2-rows.imatrix.gguf")
    write_gguf_imatrix(imatrix, synthetic_imatrix(entries(path), seed=1))
    return path, imatrix


WHOLE_FILE = ["IQ2_M", "IQ3_M", "IQ1_M"]


@pytest.fixture(scope="module")
def smollm2_llama_outputs(oracle):
    outputs = oracle["rows"][2]
    assert all(oracle["codes"][dst] == 0 for dst in outputs.values()), oracle["codes"]
    return outputs


@pytest.mark.parametrize("ftype", WHOLE_FILE)
def test_smollm2_rows_file_is_byte_identical_to_llama_quantize(ftype, smollm2_rows_file, smollm2_llama_outputs,
                                                              tmp_path):
    src, imatrix = smollm2_rows_file
    theirs = smollm2_llama_outputs[ftype]
    with file.read(src) as f:
        types = recipes.tensor_types(f, ftype, has_imatrix=True)
    assert types == types_of(theirs)                                  # the mixture of the whole SmolLM2
    if missing_codecs(types.values()):
        pytest.skip(f"{ftype} needs the codecs of {missing_codecs(types.values())}, not in refquant.gguf.CODECS yet")
    ours = tmp_path / "ours.gguf"
    convert.quantize_file(src, str(ours), ftype, imatrix=imatrix)
    if ours.read_bytes() == open(theirs, "rb").read():
        return
    # llama-cpp-python 0.3.36 carries ggml 0.25.3, newer than the libggml 0.20.2 refquant's codecs follow:
    # where the two ggml versions quantize a row differently, ours must be libggml 0.20.2's bytes
    rows = differing_rows(str(ours), theirs)
    assert rows and all(ours_is_libggml(src, str(ours), imatrix, name, r) for name, r in rows), rows[:4]
    assert ftype in GGML_VERSION_GAP, f"{ftype}: {len(rows)} rows differ from llama.cpp, all libggml 0.20.2's"


# mixtures whose files differ from llama.cpp's in a few rows that ggml 0.25.3 quantizes differently from
# 0.20.2: IQ1_M (SmolLM2 rows: 1 row of blk.19.ffn_down, scale bytes 14 and 49 of one super-block)
GGML_VERSION_GAP = ("IQ1_M",)


def differing_rows(a: str, b: str) -> list[tuple[str, int]]:
    """(tensor, row) where two files with the same tensors and types hold different bytes."""
    out = []
    with file.read(a) as fa, file.read(b) as fb:
        assert list(fa.tensors) == list(fb.tensors) and list(fa.metadata) == list(fb.metadata)
        assert all(np.array_equal(np.asarray(fa.metadata[k]), np.asarray(fb.metadata[k])) for k in fa.metadata)
        for name, t in fa.tensors.items():
            u = fb.tensors[name]
            assert (t.type, tuple(t.shape)) == (u.type, tuple(u.shape)), name
            ra, rb = np.asarray(t.raw).reshape(t.shape[0], -1), np.asarray(u.raw).reshape(t.shape[0], -1)
            out += [(name, int(r)) for r in np.flatnonzero((ra != rb).any(axis=1))]
    return out


def ours_is_libggml(src: str, ours: str, imatrix: str, name: str, row: int) -> bool:
    """Row ``row`` of ``name`` in our file is what libggml 0.20.2's ggml_quantize_chunk writes for it."""
    from refquant.gguf.imatrix import load_imatrix
    from refquant.testing.ggml import ggml_quantize

    with file.read(src) as f, file.read(ours) as g:
        t, q = f.tensors[name], g.tensors[name]
        x = rg.dequantize(np.asarray(t.raw).reshape(t.shape[0], -1)[row : row + 1], t.type)     # (1, n)
        mine = np.asarray(q.raw).reshape(q.shape[0], -1)[row]
        return bool(np.array_equal(ggml_quantize(x, rg.ggml_type(q.type).id, load_imatrix(imatrix)[name])[0], mine))


def test_smollm2_iq_mixtures_by_type(smollm2_rows_file, smollm2_llama_outputs):
    """What SmolLM2's shapes make of the mixtures: its 576-wide rows take the fallbacks."""
    counts = {f: {} for f in ("IQ2_M", "IQ3_M", "IQ1_M")}
    for ftype in counts:
        for t in types_of(smollm2_llama_outputs[ftype]).values():
            counts[ftype][t] = counts[ftype].get(t, 0) + 1
    # 30 layers: ffn_down (1536 wide) in the first 30/8 = 3 layers IQ3_S / Q4_K / Q2_K, the other 27 the
    # default type; every 576-wide matrix (180) IQ4_NL, but IQ3_M's attn_v and attn_output are Q4_K, which
    # falls back to Q5_0 (60), IQ1_M's attn_v Q2_K -> Q4_0 (30); the tied token_embd Q8_0 (576 % 256), 61 norms F32
    assert counts["IQ2_M"] == {"F32": 61, "Q8_0": 1, "IQ4_NL": 180, "IQ3_S": 3, "IQ2_S": 27}
    assert counts["IQ3_M"] == {"F32": 61, "Q8_0": 1, "IQ4_NL": 120, "Q5_0": 60, "Q4_K": 3, "IQ3_S": 27}
    assert counts["IQ1_M"] == {"F32": 61, "Q8_0": 1, "IQ4_NL": 150, "Q4_0": 30, "Q2_K": 3, "IQ1_M": 27}  # attn_v Q2_K


def test_smollm2_refusals_match_llama_cpp(smollm2_rows_file, tmp_path):
    """Without an imatrix llama.cpp refuses IQ2_M / IQ1_M (their ffn_down types need one) and accepts IQ3_XXS
    (on SmolLM2 its rules send ffn_down to Q3_K / Q4_K); refquant the same."""
    src, _ = smollm2_rows_file
    codes = llama_quantize([(src, str(tmp_path / f"{f}.gguf"), recipes.FTYPES[f][0], None)
                            for f in ("IQ2_M", "IQ1_M", "IQ3_XXS")])
    assert [codes[str(tmp_path / f"{f}.gguf")] != 0 for f in ("IQ2_M", "IQ1_M", "IQ3_XXS")] == [True, True, False]
    with file.read(src) as f:
        for ftype in ("IQ2_M", "IQ1_M"):
            with pytest.raises(ValueError, match=f"imatrix: {ftype} needs an importance matrix"):
                recipes.tensor_types(f, ftype)
        assert recipes.tensor_types(f, "IQ3_XXS") == types_of(str(tmp_path / "IQ3_XXS.gguf"))


# --------------------------------------------------------------------------- a file llama.cpp loads

def small_llama(path: str, smollm2_path: str, n_layer=2, n_embd=32, n_ff=256, n_head=4, n_head_kv=1, seed=2):
    """A Llama llama.cpp can load and run: SmolLM2's tokenizer (49152 tokens, tied embeddings), n_embd = 32
    (its matrices take the IQ4_NL / Q5_0 fallbacks) and ffn_down rows of n_ff = 256 (the i-quants proper)."""
    rng = np.random.default_rng(seed)
    with file.read(smollm2_path) as f:
        keys = [k for k in f.metadata if k.startswith("tokenizer.")]
        metadata = {k: f.metadata[k] for k in keys}
        types = {k: f.metadata_types[k] for k in keys}
        n_vocab = len(f.metadata["tokenizer.ggml.tokens"])
    U32 = file.ValueType.UINT32
    hparams = {"general.architecture": "llama", "general.name": "small", "llama.block_count": n_layer,
               "llama.context_length": 128, "llama.embedding_length": n_embd, "llama.feed_forward_length": n_ff,
               "llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_head_kv,
               "llama.rope.dimension_count": n_embd // n_head, "llama.attention.layer_norm_rms_epsilon": 1e-5,
               "general.file_type": 0}
    metadata = {**hparams, **metadata}
    types.update({k: U32 for k, v in hparams.items() if isinstance(v, int)})
    types["llama.attention.layer_norm_rms_epsilon"] = file.ValueType.FLOAT32
    n_kv = n_embd // n_head * n_head_kv
    tensors = []

    def add(name, shape, scale=0.05):
        w = (rng.standard_t(4, shape) * scale).astype(np.float32) if len(shape) > 1 else np.ones(shape, np.float32)
        tensors.append((name, "F32", shape, w.view(np.uint8).reshape(-1)))

    add("token_embd.weight", (n_vocab, n_embd))
    add("output_norm.weight", (n_embd,))
    for i in range(n_layer):
        for part, shape in (("attn_norm", (n_embd,)), ("attn_q", (n_embd, n_embd)), ("attn_k", (n_kv, n_embd)),
                            ("attn_v", (n_kv, n_embd)), ("attn_output", (n_embd, n_embd)), ("ffn_norm", (n_embd,)),
                            ("ffn_gate", (n_ff, n_embd)), ("ffn_up", (n_ff, n_embd)), ("ffn_down", (n_embd, n_ff))):
            add(f"blk.{i}.{part}.weight", shape)
    file.write(path, metadata, tensors, metadata_types=types)
    return path


LOADED = ["IQ3_M", "IQ2_M", "IQ1_M"]


@pytest.mark.parametrize("ftype", LOADED)
def test_small_llama_is_byte_identical_and_loads(ftype, oracle, tmp_path):
    src, imatrix, outputs = oracle["small"]
    theirs = outputs[ftype]
    assert oracle["codes"][theirs] == 0
    types = types_of(theirs)
    assert any(t.startswith("IQ") and t != "IQ4_NL" for t in types.values())   # the i-quants proper are in it
    if missing_codecs(types.values()):
        pytest.skip(f"{ftype} needs the codecs of {missing_codecs(types.values())}, not in refquant.gguf.CODECS yet")
    ours = tmp_path / "ours.gguf"
    convert.quantize_file(src, str(ours), ftype, imatrix=imatrix)
    rows = differing_rows(str(ours), theirs)                     # [] when the files are byte-identical
    assert all(ours_is_libggml(src, str(ours), imatrix, name, r) for name, r in rows), rows[:4]
    assert not rows or ftype in GGML_VERSION_GAP
    assert (ours.read_bytes() == open(theirs, "rb").read()) == (not rows)
    # llama.cpp loads refquant's file and evaluates a few tokens (a child process: llama.cpp aborts on errors)
    code = ("import sys, llama_cpp\n"
            "m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=32, verbose=False)\n"
            "toks = m.tokenize(b'The capital of France is')\n"
            "m.eval(toks)\n"
            "print(len(toks), m.n_vocab())\n")
    done = subprocess.run([sys.executable, "-c", code, str(ours)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    n_tokens, n_vocab = map(int, done.stdout.split())
    assert n_tokens > 3 and n_vocab == 49152


# --------------------------------------------------------------------------- the command

def test_cli_quantize_iq3_m_with_imatrix_and_refusals(tmp_path, capsys):
    from refquant.cli import main

    src = tiny_llama(str(tmp_path / "in.gguf"), n_layer=8, rows=2)
    imatrix = str(tmp_path / "imatrix.gguf")
    write_gguf_imatrix(imatrix, synthetic_imatrix(entries(src)))
    out = tmp_path / "out.gguf"
    assert main(["quantize", src, str(out), "--type", "IQ3_M", "--imatrix", imatrix]) == 0
    assert "IQ3_M" in capsys.readouterr().out
    with file.read(str(out)) as g:
        assert g.metadata["general.file_type"] == 27
        assert g.tensors["blk.4.ffn_up.weight"].type == "IQ3_S"
    # IQ2_M without an imatrix: one line naming the argument, no output file
    assert main(["quantize", src, str(tmp_path / "no.gguf"), "--type", "IQ2_M"]) == 2
    assert "imatrix: IQ2_M needs an importance matrix" in capsys.readouterr().err
    assert not (tmp_path / "no.gguf").exists()
