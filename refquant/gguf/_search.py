"""The scale searches of llama.cpp's k-quants, vectorized across blocks, bit-exact.

Every k-quant (and the imatrix paths of Q4_0 … Q5_1) picks its block scale by a small
search over candidate scales written in ``ggml/src/ggml-quants.c``. Those searches are
sequential float loops: a candidate scale is tried, integer codes L are rounded, running
sums ``Σ w·l``, ``Σ w·l²``, ``Σ w·l·x`` are accumulated element by element, and the best
candidate by a (weighted) error is kept. To agree with libggml bit for bit we

* do every operation in float32 in the order the C expression evaluates it
  (``w*l*l`` is ``(w*l)*l``; ``scale*L + min - x`` is ``((scale*L) + min) - x``;
  libggml is built without FMA contraction, so nothing is fused);
* keep each running sum sequential (``column_sum`` / ``sequential_sum`` of
  refquant.gguf._bytes: left to right, starting at 0), never NumPy's pairwise ``np.sum``;
* round with ``nearest_int`` — the C "magic number" trick, ties to even;
* keep C's comparisons (strict ``<`` / ``>``) so the first best candidate wins ties.

What we vectorize is the *independent* axis: the leading axis holds many blocks, each
searched on its own, so one Python step of a C loop advances every block at once.
Element-wise work inside a block (rounding all n codes for one candidate) is vectorized
too; only the running sums and the coordinate-descent passes stay loops. Where C's
candidate scales do not depend on each other (make_qx_quants) they are evaluated all at
once over (n, candidates, blocks) slices and only C's choice among them runs in order;
make_qkx2/3's candidates stay one after the other, since a winner's min shifts the next ones.

Inside, the searches work on the transposed layout (n, n_blocks) — "element i of every
block" is one contiguous row — so a running sum is n additions of whole rows, and a
coordinate-descent step reads and writes one row. The public functions take and return
(n_blocks, n) like the C arrays.

Shapes: ``x`` is (n_blocks, n) float32 — n = 16 or 32 weights of a sub-block, or the 8/16
sub-block scales of a super-block. Scalars per block come back as (n_blocks,).

Functions (C names, C argument order; the output pointers become return values)::

    nearest_int(f)                                              -> integer-valued float32
    make_qx_quants(x, nmax, rmse_type, qw=None)                 -> (scale, L int8 in 0..2·nmax-1)
    make_q3_quants(x, nmax, do_rmse)                            -> (scale, L int8 in 0..2·nmax-1)
    make_qkx2_quants(x, nmax, weights, rmin, rdelta, nstep, use_mad)       -> (scale, the_min, L uint8)
    make_qkx3_quants(x, nmax, weights, rmin, rdelta, nstep, use_mad)       -> (scale, the_min, L uint8)
    make_qp_quants(x, nmax, quant_weights)                      -> (scale, L uint8 in 0..nmax)

Every function takes arrays of any array-API namespace (NumPy, CuPy, torch, array-api-strict).
Ref: ggml-org/ggml, src/ggml-quants.c — nearest_int, make_qx_quants, make_q3_quants,
make_qkx2_quants, make_qkx3_quants, make_qp_quants.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from typing import NamedTuple

from .._backend import device, is_numpy, namespace
from ._bytes import GROUP_MAX_EPS, Absmax, column_sum, columns, first_zero_sign, signed_absmax, uncolumns

__all__ = [
    "nearest_int", "round_bounded", "clamp", "running_max", "rdiv", "signed_absmax_of",
    "make_qx_quants", "make_q3_quants", "make_qkx2_quants", "make_qkx3_quants", "make_qp_quants",
    "QkxGrid", "QKX2_GRID_Q2_K", "QKX2_GRID_Q4_K", "QKX2_GRID_Q5_K", "QKX3_GRID",
]


class QkxGrid(NamedTuple):
    """make_qkx2/3_quants' candidates: iscale = (rmin + rdelta·is + nmax) / (max − min), is = 0 … nstep."""

    rmin: float
    rdelta: float
    nstep: int


# the grids libggml passes (ggml-quants.c), one name per call site
QKX2_GRID_Q2_K = QkxGrid(-0.5, 0.1, 15)  # quantize_row_q2_K_ref: make_qkx2_quants(16, 3, …, -0.5f, 0.1f, 15, true)
QKX2_GRID_Q4_K = QkxGrid(-1.0, 0.1, 20)  # quantize_row_q4_K_ref: make_qkx2_quants(32, 15, …, -1.f, 0.1f, 20, false)
QKX2_GRID_Q5_K = QkxGrid(-0.5, 0.1, 15)  # quantize_row_q5_K_ref: make_qkx2_quants(32, 31, …, -0.5f, 0.1f, 15, false)
QKX3_GRID = QkxGrid(-0.9, 0.05, 36)      # every imatrix path (q2_K, q4_K, q5_K, q4_1, q5_1 _impl): make_qkx3_quants(…, -0.9f, 0.05f, 36, false)
QX_TRIES = 9        # make_qx_quants: for (int is = -9; is <= 9; ++is), iscale = -(nmax + 0.1f*is)/max
QX_CANDIDATES = tuple(k for k in range(-QX_TRIES, QX_TRIES + 1) if k != 0)  # C's order; is = 0 is the first try
SEARCH_ELEMENTS = 1 << 18  # elements of one batched pass over (n, candidates, blocks): 1 MiB of float32
QP_TRIES = 4        # make_qp_quants: for (int is = -4; is <= 4; ++is), iscale = (0.1f*is + nmax)/max
CANDIDATE_STEP = 0.1  # the 0.1f of both loops
_MAGIC = 12582912.0                        # 1.5 * 2**23: adding it leaves round(f) in the low mantissa bits
_TWO_22 = 4194304.0                        # 2**22, the offset nearest_int subtracts from the mantissa field
_SAFE = 4194303.0                          # |f| <= this: nearest_int(f) == round-half-even(f) (C's assert)


def rdiv(a: float, y: Any) -> Any:
    """``a / y`` for a Python scalar ``a``: one correctly rounded float32 division, as in C.

    (torch evaluates ``scalar / tensor`` as ``reciprocal(tensor) * scalar`` — two roundings.)
    """
    xp = namespace(y)
    return xp.full_like(y, a) / y


def _f32(v: float) -> float:
    """A Python float holding exactly the float32 value C computes (for literals and constant folding)."""
    return float(np.float32(v))


# ---------------------------------------------------------------------------------------
# Rounding and summation with C semantics
# ---------------------------------------------------------------------------------------

def nearest_int(f: Any) -> Any:
    """ggml's ``nearest_int``: float32 -> nearest integer, ties to even (as float32 values).

        val = f + 12582912.f          (float32 add: the one rounding, to an integer, ties-to-even)
        i   = bits(val) & 0x7fffff    (mantissa field) ;  nearest_int = i - 0x400000

    For |f| <= 4194303 (the range C asserts) this is exactly round-half-even(f), which is
    what we compute. Outside it the C code still runs (asserts are off in release builds)
    and returns the mantissa field of ``val`` minus 2**22; we reproduce that too, as well
    as NaN -> 0 and ±inf -> -2**22, so that degenerate blocks give the same bytes as libggml.

    f: any shape, float32 -> same shape, float32 holding integers.

    Example (ties to even; then NaN and +inf through the bit trick):
        >>> nearest_int(np.float32([0.5, 1.5, -2.5, 2.6])).tolist(), nearest_int(np.float32([np.nan, np.inf])).tolist()
        ([0.0, 2.0, -2.0, 3.0], [0.0, -4194304.0])
    """
    xp = namespace(f)
    fast = xp.round(f)                                    # round half to even
    if f.size == 0 or (float(xp.max(f)) <= _SAFE and float(xp.min(f)) >= -_SAFE):  # False for NaN
        return fast
    val = f + _MAGIC                                      # float32: rounds f to an integer (ties to even)
    regular = (val >= 8388608.0) & (val < 16777216.0)     # val in [2**23, 2**24): the field is val - 2**23
    # Out of range, NaN or inf: emulate the bit pattern arithmetic in float64 (exact here).
    a = xp.abs(xp.astype(val, xp.float64))
    finite_nz = xp.isfinite(a) & (a > 0)
    safe = xp.where(finite_nz, a, xp.ones_like(a))
    k = xp.floor(xp.log2(safe))                           # exponent, then fix log2's rounding near 2**k
    p = xp.pow(xp.full_like(k, 2.0), k)
    k = xp.where(safe < p, k - 1, xp.where(safe >= 2 * p, k + 1, k))
    p = xp.pow(xp.full_like(k, 2.0), k)
    mant = (safe / p - 1.0) * 8388608.0                   # the 23-bit mantissa field, exactly
    mant = xp.where(finite_nz, mant, xp.zeros_like(mant))  # 0 and ±inf have an empty mantissa
    wild = mant - _TWO_22
    wild = xp.where(xp.isnan(a), xp.zeros_like(wild), wild)  # NaN: mantissa 0x400000 -> 0
    return xp.where(regular, fast, xp.astype(wild, f.dtype))


def signed_absmax_of(v: Any, hi: Any, lo: Any, axis: int) -> Any:
    """signed_absmax(v, axis) from the exact max ``hi`` and min ``lo`` along ``axis`` (keepdims shapes).

    The element of largest magnitude is ``hi`` when hi > −lo and ``lo`` when hi < −lo: only
    one sign reaches it, so whichever of its copies C meets first has that value. A tie
    (+a and −a both present) is decided by position, and a NaN would ride along in a max:
    those arrays take signed_absmax's argmax instead. Max and min reduce without the |v|
    temporary or the argmax, several times faster. Zero results are +0.0, as there.

    >>> v = np.float32([[2, -3, 1], [-0.0, 0, 0], [1, -2, 2]])
    >>> signed_absmax_of(v, v.max(1, keepdims=True), v.min(1, keepdims=True), 1).signed.tolist()
    [[-3.0], [0.0], [-2.0]]
    """
    xp = namespace(v)
    neg_lo = -lo
    decided = ((hi != neg_lo) | (hi == 0)) & (hi == hi) & (lo == lo)    # False on a tie or a NaN
    if not bool(xp.all(decided)):
        return signed_absmax(v, axis=axis)
    first_hi = hi > neg_lo
    return Absmax(xp.where(first_hi, hi, neg_lo) + 0.0, xp.where(first_hi, hi, lo) + 0.0)


def clamp(x: Any, lo: float | None, hi: float | None) -> Any:
    """C's ``MAX(lo, MIN(hi, x))`` (either bound may be None).

    NumPy arrays go straight to the ``np.clip`` ufunc (array-api-compat's ``clip`` wrapper
    adds broadcasting passes that cost more than the clamp itself in the search loops).
    An upper bound alone clips from −inf: the same values bit for bit (NaN and −0.0
    included), where ``np.clip(x, None, hi)`` runs np.minimum's slower loop (~3x).
    """
    if is_numpy(x):
        return np.clip(x, -np.inf if lo is None and hi is not None else lo, hi)
    return namespace(x).clip(x, lo, hi)


def running_max(v: Any, axis: int) -> Any:
    """C's ``m = 0; for ...: if (v > m) m = v;`` along ``axis``: max(0, v) where NaN never wins.

    (``xp.max`` would propagate a NaN; the C comparison skips it.)
    """
    xp = namespace(v)
    return xp.max(xp.where(v > 0, v, xp.zeros_like(v)), axis=axis)


def round_bounded(f: Any) -> Any:
    """``nearest_int`` for arguments bounded by construction (|f| <= nmax + 1 << 2**22).

    Then the magic-number trick is plain round-half-even, and the range check can go.
    Used where the bound is evident: iscale·x with iscale = ±(nmax + δ)/max|x|.
    """
    return namespace(f).round(f)


# ---------------------------------------------------------------------------------------
# Symmetric codes: make_qx_quants, make_q3_quants
# ---------------------------------------------------------------------------------------

def _qx_weights(x: Any, rmse_type: int, qw: Any) -> Any:
    """The weight of each element in make_qx_quants' least squares (C's ternary chain)."""
    xp = namespace(x)
    if qw is not None:
        return qw
    if rmse_type == 1:
        return x * x
    if rmse_type == 2:
        return xp.ones_like(x)
    if rmse_type == 3:
        return xp.abs(x)
    return xp.sqrt(xp.abs(x))


def _qx_candidate_sums(xp: Any, xc: Any, w: Any, wx: Any, iscales: Any, nmax: int, rounding) -> tuple[Any, Any]:
    """Σ w·x·l and Σ w·l² of every candidate of make_qx_quants at once: (n, B), (K, B) -> (K, B), (K, B).

    l = clamp(round(iscale_k·x), -nmax, nmax-1) for each candidate k; each sum runs left to
    right over the n elements (column_sum over the (n, K·b) layout), as C's loop does for
    one candidate. Blocks go in slices of b so that the (n, K, b) temporaries stay cache-sized.
    """
    n, B = xc.shape
    K = iscales.shape[0]
    step = max(1, SEARCH_ELEMENTS // (n * K))
    sums_x, sums_2 = [], []
    for lo in range(0, B, step):
        hi = min(B, lo + step)
        b = hi - lo
        l = clamp(rounding(iscales[None, :, lo:hi] * xc[:, None, lo:hi]), -nmax, nmax - 1)  # (n, K, b)
        wl = w[:, None, lo:hi] * l                                        # C: w*l*l is (w*l)*l
        sums_x.append(column_sum(xp.reshape(wx[:, None, lo:hi] * l, (n, K * b))))  # (K·b,) C: sumlx += w*x[i]*l
        sums_2.append(column_sum(xp.reshape(wl * l, (n, K * b))))        # (K·b,) C: suml2 += w*l*l
    def gather(parts):                                                   # [(K·b,)] slices -> (K, B)
        return xp.concat([xp.reshape(p, (K, -1)) for p in parts], axis=1)
    return gather(sums_x), gather(sums_2)


def make_qx_quants(x: Any, nmax: int, rmse_type: int, qw: Any = None) -> tuple[Any, Any]:
    """Symmetric codes with a searched scale (ggml ``make_qx_quants``).

        iscale = -nmax / max            (max: the signed value of largest |x|; codes run
                                          l = clamp(round(iscale·x), -nmax, nmax-1))
        scale  = Σ w·x·l / Σ w·l²       (the weighted least-squares scale for those codes)

    Then 18 more candidates iscale = -(nmax + 0.1·is)/max, is = -9..9 (is ≠ 0), are tried;
    a candidate replaces the best when (Σwxl)² / Σwl² grows, i.e. when its least-squares
    fit explains more of Σ w·x² (the weighted error is Σwx² - (Σwxl)²/Σwl²).
    Weights w: ``qw`` if given, else by ``rmse_type``: 1 -> x², 2 -> 1, 3 -> |x|, other -> √|x|.
    rmse_type 0 skips the search (scale = 1/iscale); a negative rmse_type returns early
    with the mean of the first least-squares scale and 1/iscale.

    x: (B, n) float32, qw: (B, n) float32 or None
    -> scale (B,) float32 (ŵ = scale·(L - nmax)), L (B, n) int8 in 0..2·nmax-1 (offset by nmax)
    A block with max |x| < GROUP_MAX_EPS gives scale 0, L 0.
    """
    xp = namespace(x, qw)
    xc = columns(x)                                                 # (n, B)
    extremes = signed_absmax_of(xc, xp.max(xc, axis=0, keepdims=True), xp.min(xc, axis=0, keepdims=True), 0)
    amax, mx = (v[0, :] for v in extremes)                        # (B,), (B,) the first largest |x|, signed
    zero = amax < GROUP_MAX_EPS                                   # (B,) "all zero" blocks
    mx_safe = xp.where(zero, xp.ones_like(mx), mx)                # avoid 0/0 in blocks we discard
    # |iscale·x| <= nmax + 0.9 for finite x. Q3_K's second search runs over block scales that
    # can be NaN (an imatrix ~1e38 makes Σw infinite, then Σwxl/Σwl² = inf/inf): C's
    # nearest_int gives 0 there, round() would give NaN, so those take the exact emulation.
    rounding = round_bounded if bool(xp.all(xp.isfinite(xc))) else nearest_int

    def codes(iscale):                                            # iscale (B,) -> l (n, B) in -nmax..nmax-1
        return clamp(rounding(iscale[None, :] * xc), -nmax, nmax - 1)

    iscale = rdiv(-nmax, mx_safe)                                # (B,) C: -nmax / max
    l = codes(iscale)                                             # (n, B)
    if rmse_type == 0:
        scale = rdiv(1, iscale)
    else:
        w = _qx_weights(xc, abs(rmse_type), None if qw is None else columns(qw))  # (n, B)
        wx = w * xc                                               # C: w*x[i]*l is (w*x)*l
        sumlx = column_sum(wx * l)                                   # (B,) C: sumlx += w*x[i]*l
        suml2 = column_sum(w * l * l)                                # (B,) C: suml2 += w*l*l
        scale = xp.where(suml2 != 0, sumlx / xp.where(suml2 != 0, suml2, xp.ones_like(suml2)),
                         xp.zeros_like(suml2))
        if rmse_type < 0:
            scale = xp.where(suml2 > 0, 0.5 * (scale + rdiv(1, iscale)), rdiv(1, iscale))
        else:
            # C tries is = -9..9 (is != 0) in turn; the candidates do not depend on each other,
            # only the choice does: all sums at once, then C's sequential choice on (K, B) sums
            neg_num = xp.asarray([-_f32(nmax + _f32(_f32(CANDIDATE_STEP) * k)) for k in QX_CANDIDATES],
                                 dtype=xp.float32, device=device(xc))   # (K,) C: -(nmax + 0.1f*is)
            iscales = neg_num[:, None] / mx_safe[None, :]                 # (K, B) C: -(nmax + 0.1f*is)/max
            sumlx_k, suml2_k = _qx_candidate_sums(xp, xc, w, wx, iscales, nmax, rounding)  # (K, B), (K, B)
            best = scale * sumlx                                          # (B,)
            best_iscale = iscale
            for k in range(len(QX_CANDIDATES)):
                sx, s2 = sumlx_k[k, :], suml2_k[k, :]
                better = (s2 > 0) & (sx * sx > best * s2)                 # (B,) C: sumlx*sumlx > best*suml2
                if not bool(xp.any(better)):
                    continue
                scale = xp.where(better, sx / xp.where(better, s2, xp.ones_like(s2)), scale)
                best = xp.where(better, scale * sx, best)
                best_iscale = xp.where(better, iscales[k, :], best_iscale)
            l = codes(best_iscale)                                        # the winner's codes, rounded again
    scale = xp.where(zero, xp.zeros_like(scale), scale)
    L = xp.where(zero[None, :], xp.zeros_like(l), l + nmax)
    return scale, xp.astype(uncolumns(L), xp.int8)


def _descend(xp: Any, xc: Any, w: Any, L: Any, sumlx: Any, suml2: Any, lo: int | None, hi: int,
             need_sl2: bool, store=None, active: Any = None) -> tuple[Any, Any, Any]:
    """Up to 5 coordinate-descent passes over the codes (make_q3_quants, make_qp_quants).

    Element i in turn: take it out of the sums, give it the code round(x_i·Σwl²/Σwxl)
    (clamped to lo..hi) that the current least-squares scale suggests, and keep the change
    only if (Σwxl)²/Σwl² grows. In C a pass that changes nothing ends the search; since
    such a pass leaves the state (hence every later pass) unchanged, we may instead drop
    each block from the work as soon as one of its passes changes nothing — the next pass
    runs on the blocks still moving only (gathered, then put back).
    xc, w, L: (n, B); sumlx, suml2: (B,). ``need_sl2``: make_qp_quants also requires
    Σwl² > 0 before trying (make_q3_quants requires it of the new sum); ``store``: the C
    type conversion of writing a code back (make_qp_quants' uint8_t); ``active``: (B,) the
    blocks that can move at all (default: every block), e.g. from _may_descend.
    """
    n, B = L.shape
    if active is None:
        active = xp.ones((B,), dtype=xp.bool)
    for _ in range(5):
        idx = xp.nonzero(active)[0]                                       # (A,) blocks still moving
        if idx.shape[0] == 0:
            break
        xa, wa, La = xp.take(xc, idx, axis=1), xp.take(w, idx, axis=1), xp.take(L, idx, axis=1)  # (n, A)
        sx, s2 = xp.take(sumlx, idx), xp.take(suml2, idx)                 # (A,)
        rows = [La[i, :] for i in range(n)]
        # element i's code is only rewritten at step i, after its terms are read: the terms
        # w*x[i]*L[i] and w*L[i]*L[i] of the whole pass can be formed up front, (n, A) each
        wxa = wa * xa                                                     # (n, A) C: w*x[i]
        wxl, wll = wxa * La, wa * La * La                                 # (n, A) C: w*x[i]*L[i], w*L[i]*L[i]
        moved = xp.zeros(sx.shape, dtype=xp.bool)                         # (A,) did this pass change the block
        for i in range(n):
            wi, xi, li, wxi = wa[i, :], xa[i, :], rows[i], wxa[i, :]      # (A,)
            slx = sx - wxl[i, :]                                          # C: sumlx - w*x[i]*L[i]
            sl2 = s2 - wll[i, :]                                          # C: suml2 - w*L[i]*L[i]
            ok = (slx > 0) & (sl2 > 0) if need_sl2 else slx > 0
            if not bool(xp.any(ok)):
                continue
            new_l = nearest_int(xi * sl2 / xp.where(ok, slx, xp.ones_like(slx)))
            new_l = clamp(new_l, lo, hi)
            slx = slx + wxi * new_l                                       # C: slx += w*x[i]*new_l
            sl2 = sl2 + wi * new_l * new_l                                # C: sl2 += w*new_l*new_l
            take = ok & (new_l != li) & (slx * slx * s2 > sx * sx * sl2)
            if not need_sl2:
                take = take & (sl2 > 0)
            if not bool(xp.any(take)):
                continue
            rows[i] = xp.where(take, new_l if store is None else store(new_l), li)
            sx = xp.where(take, slx, sx)
            s2 = xp.where(take, sl2, s2)
            moved = moved | take
        # put the moving blocks back: position b reads slot rank(b) of the compacted
        # arrays if it was active, else its old value (a gather: the array API has no scatter)
        rank = xp.cumulative_sum(xp.astype(active, xp.int64)) - 1        # (B,)
        src = xp.where(active, rank, idx.shape[0] + xp.arange(B, dtype=xp.int64))
        L = xp.take(xp.concat([xp.stack(rows, axis=0), L], axis=1), src, axis=1)
        sumlx = xp.take(xp.concat([sx, sumlx]), src)
        suml2 = xp.take(xp.concat([s2, suml2]), src)
        still = xp.zeros((B,), dtype=xp.bool)
        active = xp.take(xp.concat([moved, still]), src)                  # (B,) only blocks that moved go on
    return L, sumlx, suml2


def _may_descend(terms: Any) -> Any:
    """(n, B) the terms w·x·l of Σwxl -> (B,) False for blocks whose descent cannot change a code.

    A change at element i needs slx = Σwxl − w·x_i·l_i > 0. When no term is positive, the
    float32 running sum of the non-positive terms is, by monotone rounding, at most each of
    them: |Σwxl| ≥ |w·x_i·l_i|, so slx ≤ 0 at every i and the first pass changes nothing,
    which is where the C loop stops. (NaN terms keep their block in the descent.)
    """
    xp = namespace(terms)
    return xp.any(~(terms <= 0), axis=0)


def make_q3_quants(x: Any, nmax: int, do_rmse: bool) -> tuple[Any, Any]:
    """Symmetric codes refined by coordinate descent (ggml ``make_q3_quants``; Q3_K without imatrix).

    Start from l = clamp(round(-nmax·x/max), -nmax, nmax-1). With ``do_rmse``, weights are
    w = x² and up to 5 passes visit each element in turn: remove it from the sums, give it
    the code round(x·Σwl²/Σwxl) that the current least-squares scale suggests, and keep
    the change only if (Σwxl)²/Σwl² grows. A pass that changes nothing ends the search.
    scale = Σwxl / Σwl². Without ``do_rmse``: scale = 1/iscale.

    Note the sign: a change is only tried while Σwxl > 0, and the first codes make
    x·l < 0 when the largest-magnitude weight is positive — so in practice the descent
    only moves codes of blocks whose largest-magnitude weight is negative.

    x: (B, n) float32 -> scale (B,) float32, L (B, n) int8 in 0..2·nmax-1 (ŵ = scale·(L - nmax))
    """
    xp = namespace(x)
    xc = columns(x)                                                         # (n, B)
    extremes = signed_absmax_of(xc, xp.max(xc, axis=0, keepdims=True), xp.min(xc, axis=0, keepdims=True), 0)
    amax, mx = (v[0, :] for v in extremes)                                # (B,), (B,)
    zero = amax < GROUP_MAX_EPS
    mx_safe = xp.where(zero, xp.ones_like(mx), mx)
    iscale = rdiv(-nmax, mx_safe)                                        # (B,)
    l = clamp(round_bounded(iscale[None, :] * xc), -nmax, nmax - 1)       # (n, B) |iscale·x| <= nmax
    if not do_rmse:
        scale = rdiv(1, iscale)
    else:
        w = xc * xc                                                       # (n, B)
        terms = w * xc * l                                                # (n, B) C: w*x[i]*l
        sumlx = column_sum(terms)                                         # (B,)
        suml2 = column_sum(w * l * l)                                        # (B,)
        l, sumlx, suml2 = _descend(xp, xc, w, l, sumlx, suml2, -nmax, nmax - 1, need_sl2=False,
                                   active=_may_descend(terms))
        scale = xp.where(suml2 > 0, sumlx / xp.where(suml2 > 0, suml2, xp.ones_like(suml2)),
                         xp.zeros_like(suml2))
    scale = xp.where(zero, xp.zeros_like(scale), scale)
    L = xp.where(zero[None, :], xp.zeros_like(l), l + nmax)
    return scale, xp.astype(uncolumns(L), xp.int8)


def _as_uint8(l: Any) -> Any:
    """C's store of an int into ``uint8_t``: modulo 256 (only a negative code, from a
    negative input to make_qp_quants, ever wraps)."""
    xp = namespace(l)
    return xp.remainder(l, 256.0)


# ---------------------------------------------------------------------------------------
# Asymmetric codes with a min: make_qkx2_quants, make_qkx3_quants
# ---------------------------------------------------------------------------------------

def _make_qkx(x: Any, nmax: int, weights: Any, rmin: float, rdelta: float, nstep: int,
              use_mad: bool, empty_if_equal: bool) -> tuple[Any, Any, Any]:
    """Shared body of make_qkx2_quants / make_qkx3_quants (they differ only in details
    named at the call sites: default weights and the "empty range" test)."""
    xp = namespace(x, weights)
    xc = columns(x)                                                 # (n, B)
    w = xc * xc if weights is None else columns(weights)            # (n, B) qkx3: NULL weights -> x²
    # C: min = max = x[0]; if (x[i] < min) min = x[i]; ... — exact values, but a zero min/max
    # keeps the sign of the *first* zero (−0 < +0 is false), which reaches the stored m of Q4_1/Q5_1
    mn = first_zero_sign(xc, xp.min(xc, axis=0, keepdims=True), axis=0)[0, :]  # (B,)
    x_min = mn
    mx = first_zero_sign(xc, xp.max(xc, axis=0, keepdims=True), axis=0)[0, :]  # (B,)
    # C: sum_w = w[0]; sum_x = sum_w*x[0]; then += over i >= 1 (the sum starts at element 0, not at +0)
    sum_w = column_sum(w, from_zero=False)                                 # (B,)
    sum_x = column_sum(w * xc, from_zero=False)                            # (B,)
    mn = xp.where(mn > 0, xp.zeros_like(mn), mn)                  # the min is never above 0
    empty = (mx == mn) if empty_if_equal else (mx <= mn)          # (B,) nothing to quantize

    def error(scale, min_, L):                                    # C: diff = scale*L + min - x; w*|diff| or w*diff²
        diff = scale[None, :] * L + min_[None, :] - xc
        diff = xp.abs(diff) if use_mad else diff * diff
        return column_sum(w * diff)

    span = xp.where(empty, xp.ones_like(mx), mx - mn)             # (B,) max - min (1 where empty: unused)
    iscale = rdiv(nmax, span)                                    # (B,)
    scale = rdiv(1, iscale)
    L = clamp(nearest_int(iscale[None, :] * (xc - mn[None, :])), 0, nmax)  # (n, B)
    best = error(scale, mn, L)                                    # (B,)
    # the winner's codes are rounded again at the end from its iscale and the min they were
    # rounded against (the same float32 operations), instead of being copied at every win
    best_iscale, best_shift = iscale, mn                          # (B,), (B,)
    if nstep >= 1:
        xm = xc - mn[None, :]                                     # (n, B) x - min, redone when a min changes
        for step in range(nstep + 1):
            # C reuses `min` for the next candidate after a win: both the range (max - min)
            # and the shift x - min follow the best min found so far.
            num = _f32(_f32(_f32(rmin) + _f32(_f32(rdelta) * step)) + nmax)  # C: rmin + rdelta*is + nmax (float32)
            span = xp.where(empty, xp.ones_like(mx), mx - mn)
            iscale_is = rdiv(num, span)                          # (B,)
            f = iscale_is[None, :] * xm                           # (n, B)
            # float rounding is monotonic, so each block's f lies between iscale·(min x - min)
            # and iscale·(max - min): when those bounds are in nearest_int's exact range,
            # plain rounding is nearest_int (checked on (B,) vectors, not on f)
            lo, hi = iscale_is * (x_min - mn), iscale_is * (mx - mn)
            exact = float(xp.min(lo)) >= -_SAFE and float(xp.max(hi)) <= _SAFE
            Laux = clamp(round_bounded(f) if exact else nearest_int(f), 0, nmax)  # (n, B)
            wl = w * Laux
            sum_l = column_sum(wl)                                   # C: sum_l  += w*l
            sum_l2 = column_sum(wl * Laux)                           # C: sum_l2 += w*l*l
            sum_xl = column_sum(wl * xc)                             # C: sum_xl += w*l*x[i]
            D = sum_w * sum_l2 - sum_l * sum_l                    # (B,) determinant of the 2x2 normal equations
            ok = D > 0
            D_safe = xp.where(ok, D, xp.ones_like(D))
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D_safe
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D_safe
            refit = this_min > 0                                  # a positive min is not allowed: refit scale alone
            l2_safe = xp.where(sum_l2 != 0, sum_l2, xp.ones_like(sum_l2))
            this_scale = xp.where(refit, sum_xl / l2_safe, this_scale)
            this_min = xp.where(refit, xp.zeros_like(this_min), this_min)
            cur = error(this_scale, this_min, Laux)               # (B,)
            better = ok & (cur < best)
            if not bool(xp.any(better)):
                continue
            best_iscale = xp.where(better, iscale_is, best_iscale)
            best_shift = xp.where(better, mn, best_shift)
            best = xp.where(better, cur, best)
            scale = xp.where(better, this_scale, scale)
            mn = xp.where(better, this_min, mn)
            xm = xc - mn[None, :]
        # nearest_int is what every candidate rounded with (round_bounded only where it is equal)
        L = clamp(nearest_int(best_iscale[None, :] * (xc - best_shift[None, :])), 0, nmax)  # (n, B)
    scale = xp.where(empty, xp.zeros_like(scale), scale)
    L = xp.where(empty[None, :], xp.zeros_like(L), L)
    # C returns *the_min = -min: a non-negative offset, ŵ = scale·L - the_min
    return scale, -mn, xp.astype(uncolumns(L), xp.uint8)


def make_qkx2_quants(x: Any, nmax: int, weights: Any, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[Any, Any, Any]:
    """Asymmetric codes with a searched scale and min (ggml ``make_qkx2_quants``; the K-quants' ref path).

        min = min(0, min x),  first try scale = (max - min)/nmax,  L = clamp(round((x - min)/scale), 0, nmax)
        ŵ = scale·L + min,    error E = Σ w·|ŵ - x| (use_mad) or Σ w·(ŵ - x)²

    Then for is = 0..nstep the candidate iscale = (rmin + rdelta·is + nmax)/(max - min)
    rounds new codes, and (scale, min) are refit to them by weighted least squares —
    the 2x2 normal equations of min_{s,m} Σ w (s·l + m - x)² — with the min forced to ≤ 0
    (if the fit wants a positive min, m = 0 and s = Σwlx/Σwl²). The candidate with the
    smallest error E wins (strict '<': the earliest best is kept), and its min becomes
    the shift for the candidates after it.

    x, weights: (B, n) float32 -> scale (B,), the_min (B,) = -min ≥ 0, L (B, n) uint8 in 0..nmax;
    ŵ = scale·L - the_min. A block with max == min gives scale 0, L 0.
    """
    if weights is None:
        raise ValueError("weights: make_qkx2_quants needs weights, shape (n_blocks, n); got None")
    return _make_qkx(x, nmax, weights, rmin, rdelta, nstep, use_mad, empty_if_equal=True)


def make_qkx3_quants(x: Any, nmax: int, weights: Any, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[Any, Any, Any]:
    """``make_qkx2_quants`` as used with an importance matrix (ggml ``make_qkx3_quants``).

    The same search; the differences are C details kept here: ``weights=None`` means
    w = x², and the empty-range test is ``max <= min``. (The imatrix paths of Q2_K, Q4_K,
    Q5_K, Q4_1 and Q5_1 call it with rmin=-0.9, rdelta=0.05, nstep=36, use_mad=False.)

    x: (B, n) float32, weights: (B, n) float32 or None
    -> scale (B,), the_min (B,) (≥ 0; ŵ = scale·L - the_min), L (B, n) uint8 in 0..nmax
    """
    return _make_qkx(x, nmax, weights, rmin, rdelta, nstep, use_mad, empty_if_equal=False)


# ---------------------------------------------------------------------------------------
# Positive codes for the sub-block scales: make_qp_quants
# ---------------------------------------------------------------------------------------

def make_qp_quants(x: Any, nmax: int, quant_weights: Any) -> tuple[Any, Any]:
    """Quantize non-negative values (the sub-block scales or mins) to 0..nmax (ggml ``make_qp_quants``).

    1. iscale = nmax/max x; try 8 more candidates (0.1·is + nmax)/max, is = ±1..±4,
       keeping the one with the smallest weighted error Σ w (x - l/iscale)² (strict '<').
    2. With that iscale round l = min(nmax, round(iscale·x)), then up to 5 coordinate-descent
       passes as in make_q3_quants (change one code if (Σwxl)²/Σwl² grows).
    3. scale = Σwxl / Σwl² (the least-squares scale of the final codes).

    x, quant_weights: (B, n) float32 -> scale (B,) float32, L (B, n) uint8; x ≈ scale·L.
    A block with max x < GROUP_MAX_EPS gives scale 0, L 0.
    """
    xp = namespace(x, quant_weights)
    xc = columns(x)                                                         # (n, B)
    w = columns(quant_weights)
    mx = running_max(xc, axis=0)                                          # C: max = MAX(max, x[i]) from 0
    zero = mx < GROUP_MAX_EPS                                             # (B,)
    mx_safe = xp.where(zero, xp.ones_like(mx), mx)
    iscale = rdiv(nmax, mx_safe)                                         # (B,)
    L0 = _as_uint8(nearest_int(iscale[None, :] * xc))                     # (n, B) stored in uint8_t L[]
    scale0 = rdiv(1, iscale)
    diff = xc - scale0[None, :] * L0
    best_mse = column_sum(w * diff * diff)                                   # C: w*diff*diff
    for step in range(-QP_TRIES, QP_TRIES + 1):
        if step == 0:
            continue
        iscale_is = rdiv(_f32(_f32(_f32(CANDIDATE_STEP) * step) + nmax), mx_safe)  # C: (0.1f*is + nmax)/max
        scale_is = rdiv(1, iscale_is)
        l = clamp(nearest_int(iscale_is[None, :] * xc), None, nmax)     # C: MIN(nmax, l)
        diff = xc - scale_is[None, :] * l
        mse = column_sum(w * diff * diff)
        better = mse < best_mse
        best_mse = xp.where(better, mse, best_mse)
        iscale = xp.where(better, iscale_is, iscale)
    l = clamp(nearest_int(iscale[None, :] * xc), None, nmax)            # (n, B) int l = MIN(nmax, ...)
    L = _as_uint8(l)                                                      # uint8_t L[i] = l
    # the sums take C's int l, not the stored uint8_t: they differ for a negative x (IQ2_XXS
    # passes one negated magnitude), where l < 0 wraps in L; + 0 makes a −0.0 the int's +0
    lf = l + 0.0
    sumlx = column_sum(w * xc * lf)
    suml2 = column_sum(w * lf * lf)
    L, sumlx, suml2 = _descend(xp, xc, w, L, sumlx, suml2, None, nmax, need_sl2=True, store=_as_uint8)
    scale = xp.where(suml2 > 0, sumlx / xp.where(suml2 > 0, suml2, xp.ones_like(suml2)), xp.zeros_like(suml2))
    scale = xp.where(zero, xp.zeros_like(scale), scale)
    L = xp.where(zero[None, :], xp.zeros_like(L), L)
    return scale, xp.astype(uncolumns(L), xp.uint8)
