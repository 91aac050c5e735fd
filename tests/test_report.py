"""refquant.report's framework: measuring, the registry, the Pareto front, the outputs.

Fake methods on a tiny synthetic model keep these fast and independent of the families;
tests/test_cli.py runs the real methods end to end on the first blocks of SmolLM2.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant import report
from refquant.report import Context, Quantized, Row


class TinyModel:
    """The part of refquant.model's interface the report uses: .weights and .with_weights."""

    def __init__(self, weights):
        self.weights = weights

    def with_weights(self, changed):
        return TinyModel({**self.weights, **changed})


def fake_model(rng, xp=np, blocks=2, d=64, ff=128):
    w = {"token_embd.weight": rng.standard_normal((96, d)), "output_norm.weight": np.ones(d)}
    for i in range(blocks):
        w[f"blk.{i}.attn_norm.weight"] = np.ones(d)
        for kind, shape in (("attn_q", (d, d)), ("attn_k", (d // 2, d)), ("attn_v", (d // 2, d)),
                            ("attn_output", (d, d)), ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)),
                            ("ffn_down", (d, ff))):
            w[f"blk.{i}.{kind}.weight"] = rng.standard_normal(shape) * 0.05
    return TinyModel({k: xp.asarray(v.astype(np.float32)) for k, v in w.items()})


def fake_perplexity(base):
    """A stand-in for perplexity: 10 at the baseline, growing with the squared weight error."""
    def evaluate(m):
        err = sum(float(np.sum((np.asarray(m.weights[k], dtype=np.float64) - np.asarray(base.weights[k])) ** 2))
                  for k in base.weights)
        return 10.0 + 100.0 * err
    return evaluate


def rtn(step, bits):
    """A fake method: round every linear weight to a grid of ``step``, stored at ``bits`` bits."""
    def method(model, ctx):
        names = report.block_linear_names(model.weights)
        w = {n: np.round(model.weights[n] / step) * step for n in names}
        return Quantized(w, sum(v.size for v in w.values()) * bits // 8)
    method.__doc__ = f"round to multiples of {step}"
    return method


def missing_module(model, ctx):
    """a method whose module name is mistyped"""
    import refquant.no_such_family  # noqa: F401


def broken(model, ctx):
    """a method that fails"""
    raise RuntimeError("boom")


FAKES = {"baseline": report.METHODS["baseline"], "fine": rtn(0.01, 8), "coarse": rtn(0.05, 4),
         "missing": missing_module, "broken": broken}


def test_run_methods_fills_every_column(rng):
    model = fake_model(rng)
    rows = report.run_methods(["fine", "coarse"], model, Context(), fake_perplexity(model), methods=FAKES)
    assert [r.method for r in rows] == ["baseline", "fine", "coarse"]  # baseline always first
    base, fine, coarse = rows
    assert base.bits_per_weight == 32 and base.rel_error == 0 and base.delta_perplexity == 0
    assert fine.bits_per_weight == 8 and coarse.bits_per_weight == 4
    assert 0 < fine.rel_error < coarse.rel_error < 1
    assert base.perplexity == 10 < fine.perplexity < coarse.perplexity
    assert coarse.delta_perplexity == pytest.approx(coarse.perplexity - 10)
    assert all(r.status == "ok" and r.seconds >= 0 and r.description for r in rows)


def test_model_bytes_hand_worked(rng):
    model = fake_model(rng, blocks=1, d=64, ff=128)
    rows = report.run_methods(["coarse"], model, Context(), fake_perplexity(model), methods=FAKES)
    # linears: q 64·64 + k,v 2·32·64 + o 64·64 + gate,up 2·128·64 + down 64·128 = 45056 weights at 4 bits
    linear = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64
    # kept: token_embd 96·64 as float16, two norms of 64 as float32
    kept = 96 * 64 * 2 + 2 * 64 * 4
    n_params = linear + 96 * 64 + 2 * 64
    assert rows[1].memory_mb == pytest.approx((linear // 2 + kept) / 1e6)
    assert rows[0].memory_mb == pytest.approx(n_params * 4 / 1e6)
    # bpw: the whole model's bits over all of its parameters; q.bpw: the quantized tensors' only
    assert rows[1].model_bits_per_weight == pytest.approx(8 * (linear // 2 + kept) / n_params)
    assert rows[1].bits_per_weight == 4 and rows[1].tensors == "block linears"
    assert rows[0].model_bits_per_weight == 32 and rows[0].tensors == "all tensors"


def with_embedding(step, bits):
    """A fake llama.cpp-like mixture: the linears as ``rtn`` does, and the token embedding too, at 8 bits."""
    def method(model, ctx):
        q = rtn(step, bits)(model, ctx)
        W = model.weights["token_embd.weight"]
        return Quantized({**q.weights, "token_embd.weight": np.round(W / step) * step}, q.nbytes + W.size)
    method.__doc__ = f"round to multiples of {step}, the embedding at 8 bits"
    return method


def test_bpw_compares_the_same_tensor_set(rng):
    """A method that also quantizes the embedding has the higher q.bpw (its 8-bit embedding
    counts in) but the smaller model: bpw, the plot's axis and the Pareto front's, follows MB."""
    model = fake_model(rng, blocks=1, d=64, ff=128)
    methods = {**FAKES, "linears-4": rtn(0.05, 4), "all-4": with_embedding(0.05, 4)}
    rows = {r.method: r for r in report.run_methods(["linears-4", "all-4"], model, Context(),
                                                    fake_perplexity(model), methods=methods)}
    lin, mix = rows["linears-4"], rows["all-4"]
    assert mix.bits_per_weight > lin.bits_per_weight and mix.memory_mb < lin.memory_mb
    assert mix.model_bits_per_weight < lin.model_bits_per_weight
    assert mix.tensors == "block linears + token_embd" and lin.tensors == "block linears"
    ranked = sorted(rows.values(), key=lambda r: r.memory_mb)
    assert ranked == sorted(rows.values(), key=lambda r: r.model_bits_per_weight)
    assert "all-4" in [r.method for r in report.pareto_front(list(rows.values()))]


def test_failed_methods_are_rows_not_crashes(rng):
    """A mistyped import is no "unavailable" row: it fails, named, like any other error."""
    model = fake_model(rng)
    rows = report.run_methods(["missing", "broken", "fine"], model, Context(), fake_perplexity(model), methods=FAKES)
    status = {r.method: r.status for r in rows}
    assert status["missing"] == "failed: ModuleNotFoundError: No module named 'refquant.no_such_family'"
    assert status["broken"].startswith("failed: RuntimeError: boom")
    assert status["fine"] == "ok"
    with pytest.raises(RuntimeError, match="boom"):
        report.run_methods(["broken"], model, Context(), fake_perplexity(model), methods=FAKES, keep_going=False)


def test_relative_error_hand_worked():
    W = {"a": np.array([[3.0, 4.0]], np.float32), "b": np.array([[0.0, 0.0]], np.float32)}
    # ‖W − Ŵ‖² = 1 (a) + 4 (b) = 5, ‖W‖² = 25  ->  sqrt(5/25)
    assert report.relative_error(W, {"a": np.array([[3.0, 5.0]]), "b": np.array([[2.0, 0.0]])}) == pytest.approx(math.sqrt(0.2))
    assert report.relative_error(W, {}) == 0.0


def test_relative_error_backend_parity(xp, rng):
    model = fake_model(rng)
    changed = rtn(0.05, 4)(model, Context()).weights
    expected = report.relative_error(model.weights, changed)
    on_xp = {k: xp.asarray(np.asarray(v)) for k, v in model.weights.items()}
    got = report.relative_error(on_xp, {k: xp.asarray(np.asarray(v)) for k, v in changed.items()})
    assert got == pytest.approx(expected, rel=1e-12)  # float64 sums; only the summation order may differ


@pytest.mark.parametrize("method", ["INT8", "INT4-G128", "NF4", "NF4-DQ", "HQQ-4-G64", "MXFP4", "NVFP4", "FP8-E4M3"])
def test_method_bytes_backend_parity(method, xp, rng):
    """The bytes counted on any backend's codes and statistics are NumPy's (array-API dtype widths)."""
    model = fake_model(rng, blocks=1)
    on_xp = TinyModel({k: xp.asarray(np.asarray(v)) for k, v in model.weights.items()})
    assert report.METHODS[method](on_xp, Context()).nbytes == report.METHODS[method](model, Context()).nbytes


def test_block_linear_names_in_block_order(rng):
    names = report.block_linear_names(fake_model(rng, blocks=12).weights)
    assert len(names) == 12 * 7
    assert names[:2] == ["blk.0.attn_q.weight", "blk.0.attn_k.weight"]
    assert names[-1] == "blk.11.ffn_down.weight"  # numeric, not lexical, block order
    assert not any("norm" in n or "embd" in n for n in names)


points = st.lists(st.tuples(st.sampled_from([2.0, 3.0, 4.0, 4.5, 5.5, 8.0, 8.5, 32.0]),
                            st.floats(1, 100, allow_nan=False)), min_size=1, max_size=12)


@given(points)
def test_pareto_front_is_exactly_the_undominated_rows(pts):
    rows = [Row(f"m{i}", "", model_bits_per_weight=b, perplexity=p) for i, (b, p) in enumerate(pts)]
    front = report.pareto_front(rows)

    def point(r):
        return r.model_bits_per_weight, r.perplexity

    def dominated(r):
        return any(point(o)[0] <= point(r)[0] and o.perplexity <= r.perplexity and point(o) != point(r) for o in rows)

    assert all(not dominated(r) for r in front)
    # every undominated point is on the front (up to exact duplicates, of which one is kept)
    assert {point(r) for r in rows if not dominated(r)} == {point(r) for r in front}
    assert [r.model_bits_per_weight for r in front] == sorted(r.model_bits_per_weight for r in front)
    assert all(a.perplexity > b.perplexity for a, b in zip(front, front[1:]))


def test_pareto_front_skips_rows_without_numbers():
    rows = [Row("a", "", 4.0, perplexity=10.0), Row("b", "", status="failed: boom"), Row("c", "", 2.0, perplexity=math.nan)]
    assert [r.method for r in report.pareto_front(rows)] == ["a"]


def _rows(rng):
    model = fake_model(rng)
    return report.run_methods(["fine", "coarse", "missing"], model, Context(), fake_perplexity(model), methods=FAKES)


PROTOCOL = {"model": "tiny", "evaluation": "100 tokens", "window": "32"}


def test_markdown_and_csv_hold_every_row(rng):
    rows = _rows(rng)
    md = report.to_markdown(rows, PROTOCOL)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # header + one line per method
    assert all(f"| {r.method} |" in md for r in rows)
    assert "Protocol: model tiny; evaluation 100 tokens; window 32." in md
    assert report.COLUMN_NOTE in md and "whole model" in report.COLUMN_NOTE and "'tensors'" in report.COLUMN_NOTE
    assert "| missing | — |" in md and "failed: ModuleNotFoundError" in md
    parsed = list(csv.DictReader(io.StringIO(report.to_csv(rows))))
    assert [p["method"] for p in parsed] == [r.method for r in rows]
    for p, r in zip(parsed, rows):
        if r.status == "ok":
            assert float(p["perplexity"]) == pytest.approx(r.perplexity, rel=1e-5)
            assert float(p["bits_per_weight"]) == r.bits_per_weight and p["tensors"] == r.tensors
            assert float(p["model_bits_per_weight"]) == pytest.approx(r.model_bits_per_weight, rel=1e-5)
        else:
            assert p["perplexity"] == "nan" and p["status"] == r.status


def test_write_outputs_writes_three_files_and_no_leftovers(rng, tmp_path):
    rows = _rows(rng)
    paths = report.write_outputs(rows, PROTOCOL, str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.csv", "report.md", "report.png"]
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_print_table_plain_when_not_a_terminal(rng):
    buf = io.StringIO()
    rows = _rows(rng)
    report.print_table(rows, PROTOCOL, file=buf)
    assert buf.getvalue() == report.to_markdown(rows, PROTOCOL)


def test_parse_methods():
    assert report.parse_methods(None, quick=False) == list(report.DEFAULT_METHODS)
    assert set(report.DEFAULT_METHODS) == set(report.METHODS) - set(report.IQUANT_METHODS)  # --iquants adds them
    assert report.parse_methods(None, quick=True, iquants=True) == [*report.QUICK_METHODS, *report.IQUANT_METHODS]
    assert report.parse_methods("iq1_m,int8", quick=False, iquants=True) == ["IQ1_M", "INT8", "IQ3_M", "IQ2_M", "TQ2_0"]
    assert report.parse_methods(None, quick=True) == list(report.QUICK_METHODS)
    assert report.parse_methods("q4_k_m, int8", quick=False) == ["Q4_K_M", "INT8"]  # case-insensitive
    with pytest.raises(ValueError, match="^unknown method Q9_9; known: baseline"):
        report.parse_methods("Q4_K_M,Q9_9", quick=False)
    with pytest.raises(ValueError, match="unknown method ','"):
        report.parse_methods(",", quick=False)


def test_every_registered_method_describes_itself():
    assert set(report.QUICK_METHODS) <= set(report.METHODS)
    for name, fn in report.METHODS.items():
        assert report.describe(fn), name


def test_real_per_tensor_methods_on_the_fake_model(rng):
    """The registry's INT8, INT4-G128, NF4 and NF4-DQ on a synthetic model: byte accounting as
    each format stores it, and errors in the expected order."""
    model = fake_model(rng, blocks=1, d=64, ff=128)
    names = report.block_linear_names(model.weights)
    n = sum(model.weights[k].size for k in names)
    rows_out = sum(model.weights[k].shape[0] for k in names)
    got = {m: report.METHODS[m](model, Context()) for m in ("INT8", "INT4-G128", "NF4", "NF4-DQ")}
    assert all(set(q.weights) == set(names) for q in got.values())
    # INT8: a code byte per weight + a float16 scale per output row
    assert got["INT8"].nbytes == n + 2 * rows_out
    # INT4, G=128 over rows of 64 or 128 inputs: one group per row -> 4 bits + (16 + 4) bits per row
    groups = sum(model.weights[k].shape[0] * -(-model.weights[k].shape[1] // 128) for k in names)
    assert got["INT4-G128"].nbytes == (4 * n + 20 * groups) // 8
    # NF4: half a byte per weight + a float32 absmax per 64; double quantization: a byte per 64,
    # a float32 absmax per 256 blocks (rounded up per tensor) and the float32 mean
    assert got["NF4"].nbytes == n // 2 + 4 * (n // 64)
    dq_extra = sum(4 * -(-(model.weights[k].size // 64) // 256) + 4 for k in names)
    assert got["NF4-DQ"].nbytes == n // 2 + n // 64 + dq_extra
    err = {m: report.relative_error(model.weights, q.weights) for m, q in got.items()}
    assert err["INT8"] < 0.01 < err["INT4-G128"] < 0.2 and err["NF4"] < 0.2


def test_group_bytes_from_the_shape_equal_the_packed_codes(rng):
    """GPTQ and AWQ hand back Ŵ only: their bytes come from the shape (uniform.model_size_bytes
    per span), INT4-G128's from the packed codes (uniform.stored_bytes). Both count the same
    layout, a last shorter group included (96 = 64 + 32 inputs with G = 64)."""
    for shape, G in (((8, 96), 64), ((6, 576), 128), ((4, 128), 128), ((3, 40), 64)):
        W = rng.standard_normal(shape).astype(np.float32)
        _, packed = report._rtn_group(W, 4, G)
        assert report._group_bytes(W, 4, G) == packed
        n_groups = shape[0] * -(-shape[1] // G)
        assert packed == (4 * W.size + 20 * n_groups + 7) // 8  # 4-bit codes, a float16 scale and 4-bit z per group


def test_selected_tensors_only(rng):
    model = fake_model(rng, blocks=3)
    ctx = Context(tensors=__import__("re").compile(r"^blk\.1\.ffn"))
    q = report.METHODS["INT8"](model, ctx)
    assert sorted(q.weights) == ["blk.1.ffn_down.weight", "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight"]
    assert report._selected_blocks(model, ctx) == [1]


def test_tensor_set_names_what_was_quantized(rng):
    weights = fake_model(rng, blocks=3).weights
    linears = report.block_linear_names(weights)
    assert report.tensor_set(weights, weights) == "all tensors"
    assert report.tensor_set(weights, linears[:3]) == "3 of 21 block linears"
    assert report.tensor_set(weights, [*linears, "token_embd.weight"]) == "block linears + token_embd"
    norms = [n for n in weights if "norm" in n]
    assert report.tensor_set(weights, norms) == "blk.0.attn_norm + blk.1.attn_norm + 2 other tensors"
    assert report.tensor_set(weights, set(norms) - {"blk.0.attn_norm.weight"}) == \
        "blk.1.attn_norm + blk.2.attn_norm + output_norm"
    assert report.tensor_set(weights, []) == "none"


@pytest.mark.parametrize("scheme", ["INT8", "INT4-G128", "NF4", "NF4-DQ"])
def test_stored_bytes_agree_with_the_bits_per_weight_helpers(scheme, rng):
    """The bytes the report measures (packed codes and statistics) against the library's
    closed-form accounting: uniform.bits_per_weight, nf4.bits_per_parameter."""
    from refquant import nf4, uniform

    W = rng.standard_normal((32, 512)).astype(np.float32)  # 512 = 4 groups of 128, 256 NF4 blocks of 64
    if scheme.startswith("NF4"):
        dq = scheme == "NF4-DQ"
        nbytes = nf4.stored_bytes(*nf4.quantize_4bit(W, 64, double_quant=dq))
        assert 8 * nbytes == W.size * nf4.bits_per_parameter(64, dq) + (32 if dq else 0)  # + the float32 μ
        return
    _, nbytes = report._rtn_channel(W, 8) if scheme == "INT8" else report._rtn_group(W, 4, 128)
    expected = uniform.bits_per_weight(8, 512) if scheme == "INT8" else uniform.bits_per_weight(4, 128, zero_bits=4)
    assert 8 * nbytes == W.size * expected


@pytest.mark.gpu
def test_methods_on_cupy_match_numpy(rng):
    cupy = pytest.importorskip("cupy")
    import array_api_compat.cupy as cp_xp

    model = fake_model(rng)
    on_gpu = TinyModel({k: cp_xp.asarray(cupy.asarray(v)) for k, v in model.weights.items()})
    for m in ("INT8", "INT4-G128", "NF4"):
        cpu, gpu = report.METHODS[m](model, Context()), report.METHODS[m](on_gpu, Context())
        assert cpu.nbytes == gpu.nbytes
        for k, w in cpu.weights.items():
            np.testing.assert_array_equal(np.asarray(w), cupy.asnumpy(gpu.weights[k]))
        assert report.relative_error(on_gpu.weights, gpu.weights) == pytest.approx(
            report.relative_error(model.weights, cpu.weights), rel=1e-12)


NEW_FORMATS = ("HQQ-4-G64", "MXFP4", "NVFP4", "FP8-E4M3")


def _library_bytes(method, W):
    """Each new row's bytes for one weight, counted by its own module's stored-bytes function."""
    from refquant import fp8, hqq, mx

    if method == "HQQ-4-G64":
        return hqq.hqq_stored_bytes(hqq.hqq_quantize(W, 4, 64))
    if method == "MXFP4":
        return mx.mx_stored_bytes(mx.mx_quantize(W, "fp4_e2m1", "floor"))
    if method == "NVFP4":
        return mx.nvfp4_stored_bytes(mx.nvfp4_quantize(W, tensor_scale="amax"))
    return fp8.stored_bytes(fp8.quantize(W, "e4m3", "row"))


@pytest.mark.parametrize("method", NEW_FORMATS)
def test_new_format_rows_count_the_library_bytes(method, rng):
    """HQQ, MXFP4, NVFP4 and FP8 rows: every block linear quantized, the bytes the sum of each
    module's own accounting, and that accounting the format's closed form (bits per weight)."""
    model = fake_model(rng, blocks=1, d=64, ff=128)
    names = report.block_linear_names(model.weights)
    q = report.METHODS[method](model, Context())
    assert sorted(q.weights) == sorted(names)
    assert q.nbytes == sum(_library_bytes(method, model.weights[n]) for n in names)
    n = sum(model.weights[k].size for k in names)
    rows_out = sum(model.weights[k].shape[0] for k in names)
    closed_form = {"HQQ-4-G64": n // 2 + 4 * (n // 64),        # 4-bit codes, float16 s and z per 64
                   "MXFP4": n // 2 + n // 32,                  # E2M1 nibbles, an E8M0 byte per 32
                   "NVFP4": n // 2 + n // 16 + 4 * len(names),  # + an E4M3 byte per 16, float32 t per tensor
                   "FP8-E4M3": n + 4 * rows_out}                # a byte per weight, float32 s per row
    assert q.nbytes == closed_form[method]
    err = report.relative_error(model.weights, q.weights)
    assert 0 < err < (0.05 if method == "FP8-E4M3" else 0.2)


def test_new_format_rows_measure_their_bits(rng):
    """Through run_methods: q.bpw is 8 · the library's bytes / weights (4.5, 4.25, ≈4.5, ≈8)."""
    model = fake_model(rng, blocks=1, d=64, ff=128)
    rows = {r.method: r for r in report.run_methods(list(NEW_FORMATS), model, Context(), fake_perplexity(model))
            if r.method != "baseline"}
    assert list(rows) == list(NEW_FORMATS)
    assert all(r.status == "ok" and r.tensors == "block linears" for r in rows.values())
    assert rows["HQQ-4-G64"].bits_per_weight == 4.5 and rows["MXFP4"].bits_per_weight == 4.25
    assert 4.5 < rows["NVFP4"].bits_per_weight < 4.51 and 8 < rows["FP8-E4M3"].bits_per_weight < 8.6
    assert set(NEW_FORMATS) <= set(report.DEFAULT_METHODS)


def test_hqq_row_stores_float16_scale_and_zero(rng):
    """The HQQ row's Ŵ is (q - z)·s with s and z at float16, as hqq keeps them after quantizing."""
    from refquant import hqq
    from refquant._rounding import to_fp16

    model = fake_model(rng, blocks=1, d=64, ff=128)
    W = model.weights["blk.0.ffn_up.weight"]
    r = hqq.hqq_quantize(W, 4, 64)
    expected = hqq.hqq_dequantize(r._replace(s=to_fp16(r.s), z=to_fp16(r.z)))
    got = report.METHODS["HQQ-4-G64"](model, Context()).weights["blk.0.ffn_up.weight"]
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, hqq.hqq_dequantize(r))  # the float16 rounding does change Ŵ


# ---------------------------------------------------------------------------------------
# --speed: structure only (timings are never asserted); fake kernels on the fake model, then
# the command end to end on a one-block SmolLM2
# ---------------------------------------------------------------------------------------

def _kernel(method, **marks):
    """A fake method carrying the marks report.speed_kernel reads (gguf_ftype / bnb_kind)."""
    def wrapped(model, ctx):
        return method(model, ctx)
    wrapped.__doc__ = method.__doc__
    for k, v in marks.items():
        setattr(wrapped, k, v)
    return wrapped


SPEED_FAKES = {**FAKES, "gguf-q8": _kernel(rtn(0.01, 8), gguf_ftype="Q8_0"),
               "gguf-iq1": _kernel(rtn(0.1, 2), gguf_ftype="IQ1_M", gguf_imatrix=True),
               "bnb-nf4": _kernel(rtn(0.05, 4), bnb_kind="nf4"), "plain": rtn(0.05, 4)}
IMATRICES: dict = {}  # ftype -> the imatrix the fake _speed_file was given
# tokens/s of the fake kernels: (prompt, generation)
FAKE_TPS = {"F32": (100.0, 10.0), "F16": (200.0, 20.0), "BF16": (150.0, 15.0), "Q8_0": (300.0, 30.0),
            "IQ1_M": (250.0, 35.0),
            "float32": (400.0, 40.0), "bfloat16": (100.0, 50.0), "nf4": (50.0, 25.0)}


@pytest.fixture
def fake_kernels(monkeypatch):
    """llama.cpp and bitsandbytes replaced by table lookups; the GGUF file by a file of 10⁶ · n bytes."""
    from refquant import speed

    written = []

    def speed_file(src, dst, ftype, ctx, imatrix=None):
        written.append(ftype)
        IMATRICES[ftype] = imatrix
        with open(dst, "wb") as f:
            f.write(b"\0" * (1000 * len(written)))

    monkeypatch.setattr(report, "_speed_file", speed_file)
    monkeypatch.setattr(speed, "llama_cpp_speed",
                        lambda path, kernel, protocol: speed.Speed(kernel, *FAKE_TPS[path.rsplit("/", 1)[1][:-5]], 1.5))
    monkeypatch.setattr(speed, "linear_stack_speed",
                        lambda weights, kind, protocol: speed.Speed(f"{kind}: {len(weights)} linears", *FAKE_TPS[kind], 2.5))
    return written


def _speed_run(rng, names):
    model = fake_model(rng)
    rows = report.run_methods(names, model, Context(), fake_perplexity(model), methods=SPEED_FAKES)
    return rows, report.measure_speed([r.method for r in rows], model, Context(), "unused.gguf", methods=SPEED_FAKES)


def test_measure_speed_gives_every_row_a_figure_or_a_reason(rng, fake_kernels):
    rows, sp = _speed_run(rng, ["gguf-q8", "bnb-nf4", "plain"])
    assert fake_kernels == ["F32", "F16", "BF16", "Q8_0"]  # the baselines' files, then the row's
    assert list(sp.baselines) == ["llama.cpp F32", "llama.cpp F16", "llama.cpp BF16", "torch float32", "torch bfloat16"]
    assert sp.rows["gguf-q8"].generation == 30.0 and sp.rows["baseline"] == sp.baselines["llama.cpp F32"]
    assert sp.rows["bnb-nf4"].kernel == "nf4: 14 linears of blocks 0-1"  # --quick off: 8 blocks, the model has 2
    assert not sp.rows["plain"].ok and sp.rows["plain"].missing == report.SPEED_MISSING_DEFAULT
    assert sp.reference("gguf-q8") == sp.baselines["llama.cpp F16"]
    assert sp.reference("bnb-nf4") == sp.baselines["torch bfloat16"] and sp.reference("plain") is None
    assert sp.file_mb["llama.cpp F32"] == 0.001 and sp.file_mb["gguf-q8"] == 0.004
    assert sp.protocol.stack_blocks == 2 and {"machine", "threads", "load", "kernels"} <= set(sp.notes)


def test_measure_speed_times_only_the_kernels_needed(rng, fake_kernels):
    _, sp = _speed_run(rng, ["bnb-nf4"])
    assert fake_kernels == ["F32", "F16", "BF16"]  # the baseline row's llama.cpp F32, and its references
    assert "torch bfloat16" in sp.baselines and "gguf-q8" not in sp.rows
    model = fake_model(rng)
    sp = report.measure_speed(["plain"], model, Context(quick=True), "unused.gguf", methods=SPEED_FAKES)
    assert sp.baselines == {} and not sp.rows["plain"].ok and sp.protocol.stack_blocks == 2


def test_measure_speed_writes_an_imatrix_rows_file_with_its_imatrix(rng, fake_kernels, monkeypatch):
    """A row quantized with the calibration imatrix (IQ2_M, IQ1_M need one) is timed on a file written
    with that imatrix; the other files get none."""
    sentinel = {"blk.0.ffn_down.weight": np.ones(4, np.float32)}
    monkeypatch.setattr(report, "calibration_imatrix", lambda model, ctx: sentinel)
    _, sp = _speed_run(rng, ["gguf-q8", "gguf-iq1"])
    assert fake_kernels == ["F32", "F16", "BF16", "Q8_0", "IQ1_M"]
    assert IMATRICES["IQ1_M"] is sentinel and all(IMATRICES[t] is None for t in ("F32", "F16", "BF16", "Q8_0"))
    assert sp.rows["gguf-iq1"].ok and sp.rows["gguf-iq1"].generation == 35.0


def test_markdown_and_csv_with_speed(rng, fake_kernels):
    rows, sp = _speed_run(rng, ["gguf-q8", "bnb-nf4", "plain", "missing"])
    md = report.to_markdown(rows, PROTOCOL, sp)
    header = md.splitlines()[0]
    assert header == "| " + " | ".join(report.columns(sp)) + " |" and "| pp t/s | tg t/s | time (s) |" in header
    assert "| gguf-q8 |" in md and "| 300 | 30.0 |" in md.split("\n\n")[0]  # the main table's speed cells
    assert "| 50.0‡ | 25.0‡ |" in md  # a bitsandbytes stack, marked
    assert "| plain |" in md and "| n/a | n/a |" in md
    # ×base: Q8_0 over llama.cpp F16 (300/200, 30/20), NF4 over torch bfloat16 (50/100, 25/50)
    assert "| gguf-q8 | llama.cpp Q8_0 file | 300 | 30.0 | 1.50× | 1.50× | 1.50 |" in md
    assert "| bnb-nf4 | nf4: 14 linears of blocks 0-1 | 50.0 | 25.0 | 0.50× | 0.50× | 2.50 |" in md
    assert f"- **plain**: n/a, {report.SPEED_MISSING_DEFAULT}" in md and report.SPEED_NOTE in md
    assert "Speed: machine " in md and "load 1-minute load average" in md
    parsed = {p["method"]: p for p in csv.DictReader(io.StringIO(report.to_csv(rows, sp)))}
    assert float(parsed["gguf-q8"]["generation_tokens_per_s"]) == 30.0 and parsed["gguf-q8"]["speed_load"] == "1.5"
    assert parsed["plain"]["speed_kernel"].startswith("n/a: no CPU kernel") and parsed["plain"]["prompt_tokens_per_s"] == "nan"
    assert set(report.SPEED_CSV_FIELDS) <= set(parsed["baseline"])


def test_without_speed_the_outputs_are_unchanged(rng):
    rows = _rows(rng)
    assert report.columns() == report.COLUMNS and "t/s" not in report.to_markdown(rows, PROTOCOL)
    assert not set(report.SPEED_CSV_FIELDS) & set(report.to_csv(rows).splitlines()[0].split(","))


def _png_width(path) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(24)[16:20], "big")  # IHDR width


def test_plot_gains_a_speed_panel(rng, fake_kernels, tmp_path):
    rows, sp = _speed_run(rng, ["gguf-q8", "bnb-nf4"])
    report.plot(rows, str(tmp_path / "one.png"))
    report.plot(rows, str(tmp_path / "two.png"), speed=sp)
    assert _png_width(tmp_path / "two.png") > 1.5 * _png_width(tmp_path / "one.png")
    points = report._speed_points(sp)  # llama.cpp files only: the bitsandbytes stack is no whole model
    assert [p[3] for p in points] == ["F32", "F16", "BF16", "gguf-q8"] and points[3][:3] == (0.004, 300.0, 30.0)


def test_every_gguf_and_bnb_method_has_a_kernel():
    kinds = {n: report.speed_kernel(m) for n, m in report.METHODS.items()}
    assert kinds["Q4_K_M"] == ("gguf", "Q4_K_M") and kinds["NF4"] == ("bnb", "nf4")
    assert kinds["NF4-DQ"] == ("bnb", "nf4-dq") and kinds["INT8"] == ("bnb", "int8")
    assert kinds["GPTQ-4-G128"] is None and "CUDA" in report.SPEED_MISSING["GPTQ-4-G128"]


def _first_block(src, dst):
    """SmolLM2 cut to block 0 (tensors byte for byte, block_count 1), with refquant's own writer."""
    from refquant.gguf import file as gf

    with gf.read(src) as f:
        metadata = {**f.metadata, "llama.block_count": 1}
        keep = [t for n, t in f.tensors.items() if not n.startswith("blk.") or n.startswith("blk.0.")]
        gf.write(dst, metadata, keep, metadata_types=f.metadata_types)


@pytest.mark.slow
def test_report_speed_quick_end_to_end(smollm2_path, tmp_path):
    """`refquant report --quick --speed` as a user runs it: the columns, the Speed section, a
    reason where no kernel runs; on one block of SmolLM2 (its perplexity is meaningless)."""
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    pytest.importorskip("bitsandbytes")
    model = str(tmp_path / "one-block.gguf")
    _first_block(smollm2_path, model)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "refquant.cli", "report", "--quick", "--speed", "--model", model,
                           "--methods", "Q8_0,NF4,INT4-G128,IQ1_M", "--tokens", "32", "--window", "32", "--no-progress",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "report.md").read_text()
    assert md in proc.stdout and "| pp t/s | tg t/s |" in md
    for label in ("F32 baseline | llama.cpp F32 file", "F16 baseline | llama.cpp F16 file",
                  "BF16 baseline | llama.cpp BF16 file", "Q8_0 | llama.cpp Q8_0 file",
                  "float32 baseline | torch Linear, float32: 7 linears of block 0",
                  "IQ1_M | llama.cpp IQ1_M file", "NF4 | bitsandbytes Linear4bit NF4"):
        assert f"| {label}" in md, label
    assert f"- **INT4-G128**: n/a, {report.SPEED_MISSING['INT4-G128']}" in md
    rows = {r["method"]: r for r in csv.DictReader(open(out / "report.csv", newline=""))}
    for m in ("baseline", "Q8_0", "IQ1_M", "NF4"):  # IQ1_M: its file written with the calibration imatrix
        assert float(rows[m]["prompt_tokens_per_s"]) > 0 and float(rows[m]["generation_tokens_per_s"]) > 0
    assert rows["INT4-G128"]["speed_kernel"].startswith("n/a:")
    assert not list(tmp_path.glob("**/refquant-speed-*"))  # the timed files are gone


# ---------------------------------------------------------------------------------------
# the i-quant rows (--iquants): IQ3_M, IQ2_M, IQ1_M with the calibration text's imatrix, TQ2_0
# ---------------------------------------------------------------------------------------

# blk.5.ffn_down: past the first n/8 layers and 1536 (= 6·256) wide, so the mixtures give it their
# own i-quant (IQ3_M -> IQ3_S, IQ2_M -> IQ2_S, IQ1_M -> IQ1_M, TQ2_0 -> TQ2_0; llama_tensor_get_type,
# checked against llama.cpp in tests/test_gguf_recipes_iq.py); SmolLM2's 576-wide rows fall back to IQ4_NL
IQ_TENSOR = "blk.5.ffn_down.weight"
IQ_OWN_TYPE = {"IQ3_M": "IQ3_S", "IQ2_M": "IQ2_S", "IQ1_M": "IQ1_M", "TQ2_0": "TQ2_0"}


def test_iquant_rows_are_what_libggml_writes_with_the_calibration_imatrix(smollm2_path):
    """Each row's Ŵ and bytes for an i-quant tensor of SmolLM2 equal libggml's ggml_quantize_chunk
    (then to_float) of the same weights with the imatrix compute_imatrix gives on the same text."""
    import re

    from refquant.gguf import recipes
    from refquant.imatrix import compute_imatrix
    from refquant.model import data, load_model
    from refquant.testing.ggml import ggml_dequantize, ggml_quantize

    model = load_model(smollm2_path)
    calib = list(model.tokenize(data.calibration_text()))[:512]
    ctx = Context(calib_tokens=calib, tensors=re.compile(re.escape(IQ_TENSOR)))
    qw = compute_imatrix(model, calib, chunk_size=512).values()[IQ_TENSOR]
    W = np.asarray(model.weights[IQ_TENSOR], dtype=np.float32)
    for name, own in IQ_OWN_TYPE.items():
        with_imatrix = name != "TQ2_0"
        assert recipes.tensor_types(model, name, has_imatrix=with_imatrix)[IQ_TENSOR] == own
        q = report.METHODS[name](model, ctx)
        raw = ggml_quantize(W, own, imatrix=qw if with_imatrix else None)
        assert list(q.weights) == [IQ_TENSOR] and q.nbytes == raw.nbytes, name
        np.testing.assert_array_equal(q.weights[IQ_TENSOR], ggml_dequantize(raw, own).reshape(W.shape), err_msg=name)


def test_iquant_rows_need_calibration_tokens(rng):
    with pytest.raises(ValueError, match="calib_tokens"):
        report.METHODS["IQ1_M"](fake_model(rng), Context(calib_tokens=[]))


@pytest.mark.slow
def test_report_quick_iquants_end_to_end(smollm2_path, tmp_path):
    """`refquant report --quick --iquants` as a user runs it, on one i-quant tensor of SmolLM2
    (--tensors): every row ok, its bits the stored type's (libggml's row size), fewer bits more error."""
    import subprocess
    import sys

    from refquant.testing.ggml import ggml_row_size

    tensors = r"^blk\.20\.ffn_down\."
    proc = subprocess.run([sys.executable, "-m", "refquant.cli", "report", "--quick", "--iquants", "--methods", "TQ2_0",
                           "--tensors", tensors, "--tokens", "256", "--window", "256", "--no-progress",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "report.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["baseline", "TQ2_0", "IQ3_M", "IQ2_M", "IQ1_M"]  # --methods first, then --iquants' rest
    assert all(r["status"] == "ok" and r["tensors"] == "1 of 210 block linears" for m, r in rows.items() if m != "baseline")
    for name, own in IQ_OWN_TYPE.items():
        assert float(rows[name]["bits_per_weight"]) == pytest.approx(8 * ggml_row_size(own, 1536) / 1536), name
    err = {m: float(r["rel_error"]) for m, r in rows.items()}
    assert 0 < err["IQ3_M"] < err["IQ2_M"] < err["IQ1_M"] < 1
    ppl = {m: float(r["perplexity"]) for m, r in rows.items()}
    assert all(math.isfinite(v) for v in ppl.values()) and ppl["IQ3_M"] < ppl["IQ1_M"]
