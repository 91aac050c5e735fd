"""Checker for LoRA's gradients by hand: against refquant.qlora.LoraLinear (the QLoRA layer
whose backward tests/test_qlora.py checks against torch autograd) and refquant.model.backward.

    EXERCISE=my_attempt python -m pytest exercises/lora_backward -q

Two levels of agreement, each with its reason:

* the maths (test_forward_and_gradients): the attempt's float32 results against the exact
  value (the same formulas in float64) within the worst-case float32 error of a product,
  |fl(P Q) − P Q| ≤ γ_K |P| |Q|, γ_K = K·u / (1 − K·u), u = 2⁻²⁴ (Higham, Accuracy and
  Stability, Thm 3.5), K the longest chain of roundings an element goes through. This bound
  holds for any summation order (BLAS blocking, FMA), so a correct formula never fails it;
  a wrong one (a transpose, a missing s, a missing branch) misses it by far on drawn inputs.
* the bits (test_bit_exact_with_qlora, test_real_layer): written in README.md's order, the
  same float32 operations run in the same order as LoraLinear's, so the results are equal
  bit for bit — signed zeros included (B = 0, LoRA's initialisation, makes them).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from refquant import nf4, qlora
from refquant.exercises import attempt, first_difference, load_attempt
from refquant.model import backward as bw
from refquant.model.llama import rms_norm

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

U32 = 2.0 ** -24         # float32 unit roundoff (round to nearest)
LAYER = "blk.0.attn_q.weight"
REAL_TOKENS = 16         # tokens of the held-out text through the real layer (short, for time)
REAL_RANK, REAL_ALPHA = 8, 16.0  # with rsLoRA: s = 16/√8, not a power of 2, so where s is applied shows
NOT_SOLUTION = "\n(the checker names what differs and a hint, never the formula: README.md has the hint ladder)"


def _gamma(k: int) -> float:
    return k * U32 / (1.0 - k * U32)


class _Dequantized(NamedTuple):
    """A frozen weight already decoded: what LoraLinear needs of a qlora.Quantized."""

    W: np.ndarray

    def dequantize(self) -> np.ndarray:
        return self.W


class Case(NamedTuple):
    x: np.ndarray   # (T, n_in)
    W: np.ndarray   # (n_out, n_in)
    A: np.ndarray   # (r, n_in)
    B: np.ndarray   # (n_out, r)
    dy: np.ndarray  # (T, n_out)
    s: float


class Parts(NamedTuple):
    """The exact (float64) pieces of y, dx, dA, dB: base parts, and the adapter's parts without s."""

    y_base: np.ndarray
    y_lora: np.ndarray
    dx_base: np.ndarray
    dx_lora: np.ndarray
    dA: np.ndarray
    dB: np.ndarray


def _exact(c: Case) -> Parts:
    """refquant's layer in float64 on the float32 inputs (s rounded to float32, as float32 code has it)."""
    f = [np.asarray(a, np.float64) for a in (c.x, c.W, c.A, c.B, c.dy)]
    x, W, A, B, dy = f
    y_base, lin = bw.linear_forward(x, W)
    dx_base = bw.linear_backward(dy, W, lin).dx
    lora_only = qlora.LoraLinear(_Dequantized(np.zeros_like(W)), qlora.Adapter(A, B, 1.0))
    y_lora, cache = lora_only.forward(x)
    dx_lora, (dA, dB) = lora_only.backward(dy, cache)
    return Parts(y_base, y_lora, dx_base, dx_lora, dA, dB)


def _bounds(c: Case) -> dict:
    """The worst-case float32 error of each result, element by element (module docstring)."""
    T, n_in = c.x.shape
    n_out, r = c.B.shape
    s = abs(float(np.float32(c.s)))
    x, W, A, B, dy = (np.abs(np.asarray(a, np.float64)) for a in (c.x, c.W, c.A, c.B, c.dy))
    # K: the inner length of each product, +1 per further rounding (the next product, ·s, the +)
    return {"y": _gamma(n_in + r + 3) * (x @ W.T + s * (x @ A.T) @ B.T),
            "dx": _gamma(n_out + r + 3) * (dy @ W + s * (dy @ B) @ A),
            "dA": _gamma(n_out + T + 2) * s * (dy @ B).T @ x,
            "dB": _gamma(T + n_in + 2) * s * dy.T @ (x @ A.T)}


# ----------------------------------------------------------------------------- drawn cases


# Entries: ±0 (either sign) or ±[2⁻⁸, 2]. No subnormals, and no product of four entries below
# float32's normal range: γ_K|P||Q| bounds relative rounding only; an underflowing product adds
# an absolute error the bound does not cover (Higham §3.1 assumes no underflow).
MIN_MAGNITUDE = 2.0 ** -8
entries = st.sampled_from([0.0, -0.0]) | st.builds(lambda sign, m: sign * m, st.sampled_from([-1.0, 1.0]),
                                                   st.floats(MIN_MAGNITUDE, 2.0, width=32))


def _f32(shape):
    return hnp.arrays(np.float32, shape, elements=entries)


@st.composite
def cases(draw) -> Case:
    """Shapes with distinct sides (a transpose shows), values of the layer, and the structure
    that matters: B = 0 (LoRA's start: dA = 0, dB ≠ 0), a padding token (a zero row of x),
    rsLoRA's or plain LoRA's scale."""
    n_in, n_out = draw(st.sampled_from([(5, 7), (7, 5), (9, 6), (6, 11), (16, 12)]))
    r = draw(st.sampled_from([1, 2, 3, 4]))
    T = draw(st.sampled_from([2, 3, 8, 10]))
    x, W, A, B, dy = (draw(_f32(sh)) for sh in ((T, n_in), (n_out, n_in), (r, n_in), (n_out, r), (T, n_out)))
    if draw(st.booleans()):
        B = np.zeros_like(B)
    if draw(st.booleans()):
        x[draw(st.integers(0, T - 1))] = 0.0
    alpha = draw(st.sampled_from([1.0, 8.0, 16.0, 32.0]))
    s = alpha / (math.sqrt(r) if draw(st.booleans()) else r)
    if s == 1.0:
        s = 2.0  # a scale of 1 would hide a forgotten s
    return Case(x, W, A, B, dy, s)


def _grads(result: Any, what: str = "lora_backward") -> tuple:
    """dx, dA, dB of the attempt's result; a dW in it is a failure of its own."""
    fields = getattr(result, "_fields", None)
    if (fields and "dW" in fields) or hasattr(result, "dW") or (isinstance(result, tuple) and len(result) == 4):
        pytest.fail(f"{what}: dW must not be computed: W is frozen (the 4-bit codes are not parameters); "
                    f"return LoraGrads(dx, dA, dB)", pytrace=False)
    if not (isinstance(result, tuple) and len(result) == 3):
        pytest.fail(f"{what}: expected LoraGrads(dx, dA, dB), got {type(result).__name__}", pytrace=False)
    return tuple(np.asarray(g) for g in result)


SYMBOLS = {"y": ("T", "n_out"), "dx": ("T", "n_in"), "dA": ("r", "n_in"), "dB": ("n_out", "r")}


def _sides(x: np.ndarray, B: np.ndarray) -> dict:
    """{symbol: length} of a case: T, n_in from x (T, n_in); n_out, r from B (n_out, r)."""
    return dict(zip(("T", "n_in", "n_out", "r"), (*x.shape, *B.shape)))


def _spell(shape: tuple, sides: dict) -> str:
    """(2, 5) -> "(r, n_in) = (2, 5)" where every length names one side only, else just (2, 5)."""
    names = []
    for n in shape:
        match = [k for k, v in sides.items() if v == n]
        if len(match) != 1:
            return str(tuple(shape))
        names.append(match[0])
    return f"({', '.join(names)}) = {tuple(shape)}"


def _shape_message(name: str, got: np.ndarray, expected_shape: tuple, sides: dict) -> str | None:
    if got.shape == expected_shape:
        return None
    symbolic = f"({', '.join(SYMBOLS[name])})"
    if got.shape == expected_shape[::-1]:
        return f"{name} is transposed: expected {symbolic}, got {_spell(got.shape, sides)}"
    return f"{name}: expected shape {symbolic} = {expected_shape}, got {_spell(got.shape, sides)}"


def _diagnose(name: str, got: np.ndarray, base: np.ndarray | None, lora: np.ndarray, s: float,
              bound: np.ndarray, hint: str, sides: dict) -> str | None:
    """None if got is within the float32 bound of base + s·lora, else what it looks like instead."""
    s = float(np.float32(s))
    base = np.zeros_like(lora) if base is None else base
    expected = base + s * lora
    shape = _shape_message(name, got, expected.shape, sides)
    if shape:
        return shape
    g = got.astype(np.float64)

    # the float64 reference itself is off by at most γ_K(2⁻⁵³)|P||Q| = bound·2⁻²⁹ (same K, u 2²⁹ times smaller)
    if np.all(np.abs(g - expected) <= bound * (1 + 2.0 ** -29)):
        return None
    # the guesses below only choose the message: a wrong scale changes the bound too, so allow the
    # bound of the largest scale in play, twice
    loose = 2 * bound * max(1.0, s, 1 / s) ** 2

    def close(target):
        return bool(np.all(np.abs(g - target) <= loose))

    if not np.all(np.isfinite(g)):
        return f"{name} has NaN or inf entries on finite inputs"
    guesses = [(base + lora, f"{name}: did you forget the scale s?"),
               (base + s * s * lora, f"{name}: the scale s is applied twice"), (-expected, f"{name}: the sign is flipped")]
    if np.any(base):
        frozen = ("W is frozen, but it still computes" if name == "y" else
                  "W is not trained, but the gradient still flows through it")
        guesses += [(s * lora, f"{name} is missing the frozen base's part: {frozen}"),
                    (base, f"{name} is missing the adapter's part")]
    for target, message in guesses:
        if np.any(target != expected) and close(target):
            return message
    worst = np.unravel_index(np.argmax(np.abs(g - expected) - bound), g.shape)
    return (f"{name}{list(map(int, worst))}: expected {expected[worst]:.7g} (± {bound[worst]:.2g}, the float32 "
            f"rounding bound), got {g[worst]:.7g}\nhint: {hint}")


@settings(max_examples=60)
@given(c=cases())
@example(c=Case(np.float32([[1, 2, 0, -1, 3]]).repeat(3, 0), np.arange(35, dtype=np.float32).reshape(7, 5) / 8,
                np.float32([[1, -1, 2, 0, 1], [0, 1, 1, -2, 1]]), np.float32(np.arange(14).reshape(7, 2) - 6) / 4,
                np.float32(np.arange(21).reshape(3, 7) % 3 - 1), 8.0))
def test_forward_and_gradients(c):
    exact, bounds = _exact(c), _bounds(c)
    y = np.asarray(attempt(ex.lora_forward, c.x, c.W, c.A, c.B, c.s))
    sides = _sides(c.x, c.B)
    msg = _diagnose("y", y, exact.y_base, exact.y_lora, c.s, bounds["y"],
                    "look at the shapes: (T, n_in) times (n_in, ...) (README step 2)", sides)
    assert msg is None, msg + NOT_SOLUTION
    dx, dA, dB = _grads(attempt(ex.lora_backward, c.dy, c.x, c.W, c.A, c.B, c.s))
    checks = [("dx", dx, exact.dx_base, exact.dx_lora, "the chain rule through both branches (README hint 1)"),
              ("dA", dA, None, exact.dA, "A sees the input x and the gradient that reaches u (README hint 2)"),
              ("dB", dB, None, exact.dB, "B sees u = x Aᵀ and dy (README hint 2)")]
    for name, got, base, lora, hint in checks:
        msg = _diagnose(name, got, base, lora, c.s, bounds[name], hint, sides)
        assert msg is None, msg + NOT_SOLUTION


def _bits(c: Case, what: str = "") -> list:
    """Every difference from LoraLinear's bits, as messages (empty: bit-exact)."""
    layer = qlora.LoraLinear(_Dequantized(c.W), qlora.Adapter(c.A, c.B, c.s))
    y_ref, cache = layer.forward(c.x)
    dx_ref, (dA_ref, dB_ref) = layer.backward(c.dy, cache)
    y = np.asarray(attempt(ex.lora_forward, c.x, c.W, c.A, c.B, c.s))
    dx, dA, dB = _grads(attempt(ex.lora_backward, c.dy, c.x, c.W, c.A, c.B, c.s))
    out = []
    for name, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("dA", dA, dA_ref), ("dB", dB, dB_ref)):
        if got.dtype != np.float32:
            out.append(f"{what}{name}: expected float32, got {got.dtype}")
            continue
        diff = first_difference(got, ref, what + name)
        if diff:
            out.append(diff)
    return out


@settings(max_examples=40)
@given(c=cases())
def test_bit_exact_with_qlora(c):
    diffs = _bits(c)
    assert not diffs, ("\n".join(diffs) + "\nwithin float32 rounding of the right value (test_forward_and_gradients), "
                       "but not the same bits: keep README.md's operation order (hint 3: where the scale is "
                       "applied, and which products are formed first)")


@pytest.mark.parametrize("alpha, r, rslora", [(16.0, 8, False), (16.0, 8, True), (32.0, 16, False),
                                              (32.0, 16, True), (8.0, 3, True), (1.0, 64, False)])
def test_scale(alpha, r, rslora):
    got = attempt(ex.lora_scale, alpha, r, rslora)
    expected = qlora.LoraConfig(r=r, alpha=alpha, use_rslora=rslora).scale
    assert isinstance(got, (float, np.floating)) and got == expected, (
        f"lora_scale({alpha}, {r}, rslora={rslora}): expected {expected}, got {got!r}\n"
        f"hint: {'rsLoRA divides by the square root of the rank' if rslora else 'plain LoRA divides by the rank'}")


class _Tracked(np.ndarray):
    """An array that logs the shape of every product it takes part in (then hands back plain arrays)."""

    log: list = []
    PRODUCTS = (np.dot, np.matmul, np.einsum, np.tensordot, np.inner, np.outer, np.vdot)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [i.view(np.ndarray) if isinstance(i, _Tracked) else i for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, _Tracked) else o for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        if ufunc is np.matmul:
            _Tracked.log.append(np.shape(result))
        return result

    def __array_function__(self, func, types, args, kwargs):
        plain = tuple(a.view(np.ndarray) if isinstance(a, _Tracked) else a for a in args)
        result = func(*plain, **kwargs)
        if func in _Tracked.PRODUCTS:
            _Tracked.log.append(np.shape(result))
        return result

    def dot(self, other, *args, **kwargs):
        result = self.view(np.ndarray).dot(other.view(np.ndarray) if isinstance(other, _Tracked) else other)
        _Tracked.log.append(np.shape(result))
        return result


def test_no_weight_gradient():
    # every side distinct, so a product of shape (n_out, n_in) can only be dyᵀ x, the gradient of W
    T, n_in, n_out, r = 3, 7, 5, 2
    rng = np.random.default_rng(0)
    x, W, A, B, dy = (rng.standard_normal(sh).astype(np.float32)
                      for sh in ((T, n_in), (n_out, n_in), (r, n_in), (n_out, r), (T, n_out)))
    _Tracked.log = []
    result = attempt(ex.lora_backward, dy.view(_Tracked), x.view(_Tracked), W, A, B, 2.0)
    _grads(result)
    assert (n_out, n_in) not in _Tracked.log, (
        f"lora_backward formed a ({n_out}, {n_in}) product of dy and x: dW must not be computed: W is frozen "
        f"(only A and B are trained; computing dyᵀx costs T·n_out·n_in multiplications for nothing)")


# ----------------------------------------------------------------------------- one real layer


def test_real_layer(smollm2, eval_tokens):
    """SmolLM2's blk.0.attn_q (576 x 576) on an NF4 base, the input of 16 real tokens: bit-exact with
    qlora.LoraLinear over the Quantized weight, and the gradients are the derivative of the loss
    L = Σ y ⊙ dy (central differences in float64 along a random direction)."""
    packed, state = nf4.quantize_4bit(np.asarray(smollm2.weights[LAYER], np.float32), 64, "nf4", True)
    q = qlora.Quantized(packed, state)
    W = q.dequantize()                                            # (576, 576) float32
    x = rms_norm(smollm2.embed(eval_tokens[:REAL_TOKENS]), smollm2.weights["blk.0.attn_norm.weight"],
                 smollm2.config.rms_eps).astype(np.float32)       # (16, 576)
    rng = np.random.default_rng(7)
    n_out, n_in = W.shape
    s = qlora.LoraConfig(r=REAL_RANK, alpha=REAL_ALPHA, use_rslora=True).scale
    A = rng.uniform(-1 / math.sqrt(n_in), 1 / math.sqrt(n_in), (REAL_RANK, n_in)).astype(np.float32)
    B = (0.02 * rng.standard_normal((n_out, REAL_RANK))).astype(np.float32)  # as after some training
    dy = rng.standard_normal((REAL_TOKENS, n_out)).astype(np.float32)
    c = Case(x, W, A, B, dy, s)

    # bit-exact with the QLoRA layer over the 4-bit weight itself (it decodes Ŵ on its own)
    layer = qlora.LoraLinear(q, qlora.Adapter(A, B, s))
    y_ref, cache = layer.forward(x)
    dx_ref, (dA_ref, dB_ref) = layer.backward(dy, cache)
    y = np.asarray(attempt(ex.lora_forward, x, W, A, B, s))
    dx, dA, dB = _grads(attempt(ex.lora_backward, dy, x, W, A, B, s))
    for name, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("dA", dA, dA_ref), ("dB", dB, dB_ref)):
        diff = first_difference(got, ref, f"{LAYER} {name}")
        assert diff is None, diff + "\nhint: the drawn cases pass? then compare your dtypes (float32 throughout)"

    # L(θ) = Σ y(θ) ⊙ dy is quadratic in θ = (x, A, B) (the product A·B), so the central difference
    # (L(θ+εv) − L(θ−εv)) / 2ε has no truncation error: only float64 rounding, far below the bound
    v = [rng.standard_normal(a.shape) for a in (x, A, B)]
    eps = 1e-3

    def loss(t):
        xs, As, Bs = (np.asarray(a, np.float64) + t * d for a, d in zip((x, A, B), v))
        return float(np.sum((xs @ W.astype(np.float64).T + s * (xs @ As.T) @ Bs.T) * dy))

    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    bounds = _bounds(c)
    directional = sum(float(np.sum(g.astype(np.float64) * d)) for g, d in zip((dx, dA, dB), v))
    tol = sum(float(np.sum(bounds[k] * np.abs(d))) for k, d in zip(("dx", "dA", "dB"), v)) + 1e-9 * abs(fd)
    assert abs(directional - fd) <= tol, (
        f"{LAYER}: ⟨(dx, dA, dB), v⟩ = {directional:.9g}, the finite difference of L = Σ y ⊙ dy gives "
        f"{fd:.9g} (tolerance {tol:.2g})")
