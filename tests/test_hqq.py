"""refquant.hqq against the hqq package (0.2.8, its default legacy proximal solver) and torchao's HQQ.

On the torch backend refquant.hqq runs the same float32 operations in the same order as both
libraries and matches them bit for bit (codes, scales, zero-points, Ŵ). On NumPy two primitives
differ in the last bit: ``|x|^(p-1)`` (torch's vectorised Sleef powf vs libm's powf: ~1.5% of values
differ by an ulp) and the group mean (torch's vectorised sum order vs NumPy's pairwise sum); the codes
and scales still agree and the zero-points agree to a few ulps (tested on real SmolLM2 rows).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refquant import hqq as H
from refquant._backend import from_numpy, to_numpy

torch = pytest.importorskip("torch")
pytest.importorskip("hqq")
from refquant.testing.hqq import _import as _import_hqq, hqq_oracle_quantize  # noqa: E402
from refquant.testing.torchao import torchao_hqq  # noqa: E402

GROUP_KINDS = ("ordinary", "constant", "narrow", "outlier", "two_values", "grid")


@st.composite
def hqq_weights(draw, G=64, max_rows=4, max_groups=3):
    """(rows, groups·G) float32 weights at LLM scale (σ ≈ 0.02); each group's structure is drawn:
    constant (span 0: hqq's σ = 1 guard, torchao's 2e4 clamp), narrow (span < 1e-4: hqq's guard only),
    one outlier, two values, values already on a uniform grid (ties of round(Wσ + z))."""
    rows, groups = draw(st.integers(1, max_rows)), draw(st.integers(1, max_groups))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((rows, groups, G)) * 0.02).astype(np.float32)
    for r in range(rows):
        for g in range(groups):
            kind = draw(st.sampled_from(GROUP_KINDS))
            if kind == "constant":
                W[r, g] = draw(st.sampled_from((0.0, 0.01, -0.03)))
            elif kind == "narrow":
                W[r, g] = 0.01 + W[r, g] * 1e-3
            elif kind == "outlier":
                W[r, g, draw(st.integers(0, G - 1))] = draw(st.sampled_from((0.5, -1.0, 3.0)))
            elif kind == "two_values":
                W[r, g] = np.where(rng.random(G) < 0.5, -0.02, 0.03)
            elif kind == "grid":
                W[r, g] = np.round(W[r, g] * 400) / 400
    return W.reshape(rows, groups * G)


@pytest.fixture(scope="module", autouse=True)
def _hqq_loaded():
    _import_hqq()  # ~10 s once: hqq.core.quantize imports transformers


@pytest.mark.parametrize("bits", H.BITS)
@settings(max_examples=25, deadline=None)
@given(W=hqq_weights())
def test_torch_backend_is_bit_exact_with_hqq(bits, W):
    ref = hqq_oracle_quantize(W, bits, 64)
    r = H.hqq_quantize(torch.from_numpy(W), bits, 64)
    assert np.array_equal(r.q.numpy(), ref.q) and np.array_equal(r.s.numpy(), ref.s)
    assert np.array_equal(r.z.numpy(), ref.z) and np.array_equal(H.hqq_dequantize(r).numpy(), ref.W_hat)


@pytest.mark.parametrize("bits", H.BITS)
@settings(max_examples=25, deadline=None)
@given(W=hqq_weights())
def test_torch_backend_is_bit_exact_with_torchao(bits, W):
    ref = torchao_hqq(W, bits, 64)
    r = H.hqq_quantize(torch.from_numpy(W), bits, 64, convention="torchao")
    rows = W.shape[0]
    assert np.array_equal(r.q.numpy().reshape(W.shape), ref.q)
    assert np.array_equal(r.s.numpy().reshape(rows, -1), ref.s) and np.array_equal(r.z.numpy().reshape(rows, -1), ref.z)


def test_conventions_differ_where_documented():
    # a narrow group (span 1e-5): hqq sets σ = 1 (a coarse grid), torchao keeps 15/1e-5 clamped to 2e4
    W = np.float32([[0.01 + 1e-5 * (i % 2) for i in range(64)]])
    assert H.hqq_quantize(W, 4, 64, optimize=False).s.item() == 1.0
    assert H.hqq_quantize(W, 4, 64, optimize=False, convention="torchao").s.item() == np.float32(1 / np.float32(2e4))


@pytest.mark.parametrize("bits", H.BITS)
def test_numpy_backend_on_real_rows(bits, real_rows):
    ref = hqq_oracle_quantize(real_rows, bits, 64)
    r = H.hqq_quantize(real_rows, bits, 64)
    assert np.array_equal(r.q, ref.q) and np.array_equal(r.s, ref.s)
    # pow and mean differ in the last bit (module docstring). z is the mean of terms Q - (W - W_e)σ of
    # size up to q_max, so each iteration may move it by an ulp on that scale, and the loop carries it
    # on: at most one ulp of max(|z|, q_max) per iteration (measured: 2 ulps in 2 at 8 bits, 5 in 20 at 1)
    assert r.iterations == ref_iterations(real_rows, bits)
    q_max = np.float32(2**bits - 1)
    assert np.all(np.abs(r.z - ref.z) <= r.iterations * np.spacing(np.maximum(np.abs(ref.z), q_max)))


def ref_iterations(W, bits):
    """Iterations of our loop on the torch backend, which is bit-exact with hqq (tested above)."""
    return H.hqq_quantize(torch.from_numpy(W), bits, 64).iterations


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(W=hqq_weights())
def test_array_api_strict_matches_numpy(xp, W):
    if xp.__name__.endswith("torch"):
        return  # the torch backend is checked against hqq itself above
    r = H.hqq_quantize(from_numpy(W, xp=xp), 4, 64)
    assert np.array_equal(to_numpy(H.hqq_dequantize(r)), H.hqq_dequantize(H.hqq_quantize(W, 4, 64)))


def slow_shrink(x: float, beta: float, p: float) -> float:
    """sign(x) · max(|x| - |x|^(p-1)/β, 0), one float32 value at a time."""
    a = np.float32(abs(x))
    if a == 0:
        return 0.0
    # the power through a 1-element array: NumPy's float32 power on arrays runs its SIMD loop (AVX-512
    # SVML where the CPU has it), while np.float32 scalars call libm's powf; on AVX-512 machines the two
    # differ in the last bit for about a quarter of the inputs. This test is about the formula, not powf.
    power = (np.array([a], np.float32) ** np.float32(p - 1))[0]
    t = np.float32(a - np.float32(1.0 / beta) * power)
    return float(np.copysign(max(t, np.float32(0)), x))


@given(st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=16), st.sampled_from((0.7, 1.0)))
def test_shrink_matches_slow_loop(values, p):
    x = np.float32(values)
    assert H.shrink_lp(x, 10.0, p).tolist() == [slow_shrink(v, 10.0, p) for v in x.tolist()]


def test_early_stop_and_iteration_count():
    W = (np.random.default_rng(0).standard_normal((8, 128)) * 0.02).astype(np.float32)
    stopped = H.hqq_quantize(W, 2, 64)
    full = H.hqq_quantize(W, 2, 64, H.ProximalParams(early_stop=False))
    assert stopped.iterations < full.iterations == 20


@pytest.mark.parametrize("bits", H.BITS)
def test_stored_bytes_are_hqqs_packed_sizes(bits):
    torch_, Quantizer = _import_hqq()
    W = (np.random.default_rng(1).standard_normal((8, 640)) * 0.02).astype(np.float32)  # 80 groups
    W_q, meta = Quantizer.quantize(torch.from_numpy(W.copy()), nbits=bits, group_size=64, optimize=True, axis=1,
                                   bitpack=True, device="cpu")
    scale_zero = 2 * meta["scale"].numel() * 2  # float16 scale and zero per group
    assert H.hqq_stored_bytes(H.hqq_quantize(W, bits, 64)) == W_q.numel() * W_q.element_size() + scale_zero


def test_hqq_one_bit_packer_drops_groups_we_count_them():
    # hqq packs 8 groups' 1-bit codes per byte row with int(n / 8) rows: 60 groups keep only 56
    torch_, Quantizer = _import_hqq()
    W = (np.random.default_rng(2).standard_normal((6, 640)) * 0.02).astype(np.float32)  # 60 groups
    W_q, _ = Quantizer.quantize(torch.from_numpy(W.copy()), nbits=1, group_size=64, axis=1, bitpack=True, device="cpu")
    assert W_q.shape[0] == 60 // 8 and H.hqq_stored_bytes(H.hqq_quantize(W, 1, 64)) == 8 * 64 + 60 * 4


def test_report_entry_point_on_real_rows(real_rows):
    r = H.hqq_quantize_matrix(real_rows)
    rtn_error = np.abs(real_rows - H.hqq_dequantize(H.hqq_quantize(real_rows, optimize=False))).mean()
    assert r.W_hat.shape == real_rows.shape and r.stored_bytes * 8 / real_rows.size == 4.5  # 4 + 32/64
    assert np.abs(real_rows - r.W_hat).mean() < rtn_error  # the solver improves on min-max rounding


@pytest.mark.parametrize("call, message", [
    (lambda: H.hqq_quantize(np.ones((2, 64), np.float32), bits=5), "bits: HQQ packs"),
    (lambda: H.hqq_quantize(np.ones((2, 64), np.float32), bits=9), "bits: expected an integer in 1..8"),
    (lambda: H.hqq_quantize(np.ones((2, 100), np.float32)), "W: last dimension 100 is not a multiple"),
    (lambda: H.hqq_quantize(np.ones(64, np.float32)), "W: expected a matrix"),
    (lambda: H.hqq_quantize(np.float32([[np.nan] * 64])), "W: contains NaN or Inf"),
    (lambda: H.hqq_quantize(np.ones((2, 64), np.float32), convention="awq"), "convention: expected one of"),
    (lambda: H.hqq_quantize(np.ones((2, 64), np.float32), group_size=0), "group_size: expected an integer >= 1"),
    (lambda: H.hqq_quantize(np.ones((2, 64), np.float32), params=H.ProximalParams(lp_norm=1.5)),
     "params.lp_norm: expected a finite number in"),
    (lambda: H.hqq_quantize(np.ones((2, 64), np.float32), params=H.ProximalParams(kappa=1.0)),
     "params.kappa: expected a finite number > 1"),
    (lambda: H.hqq_quantize(np.ones((2, 64), np.float32), params={"beta": 10}), "params: expected a ProximalParams"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
