"""refquant.allocate: the exact knapsack (against brute force), the proxy, the allocation on a tiny
model written as a GGUF file that llama.cpp loads, ``refquant quantize --target-*``, the report rows."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import allocate as A
from refquant import cli
from refquant.gguf import convert, file
from refquant.model import load_model, perplexity
from test_imatrix import tiny_model, write_tiny_model


# --------------------------------------------------------------------------- the knapsack

@st.composite
def instances(draw):
    """1-5 items of 1-4 options; costs share a drawn unit (the gcd the DP works in) or not; some
    options tie in cost or in value; the budget lies anywhere from the cheapest sum to the dearest."""
    unit = draw(st.sampled_from([1, 2, 18, 3456]))
    n = draw(st.integers(1, 5))
    costs = [draw(st.lists(st.integers(1, 12), min_size=1, max_size=4)) for _ in range(n)]
    costs = [[unit * c for c in cs] for cs in costs]
    values = [[draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.25, 10.0])) for _ in cs] for cs in costs]
    lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
    budget = draw(st.integers(lo, hi + unit))
    return costs, values, budget


def brute_force(costs, values, budget):
    best = math.inf
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        if sum(c[k] for c, k in zip(costs, choice)) <= budget:
            best = min(best, sum(v[k] for v, k in zip(values, choice)))
    return best


@given(instances())
def test_knapsack_is_optimal_and_within_budget(inst):
    costs, values, budget = inst
    sol = A.knapsack(costs, values, budget)
    assert sol.exact and sol.cost <= budget
    assert sol.cost == sum(c[k] for c, k in zip(costs, sol.choice))
    assert sol.value == pytest.approx(brute_force(costs, values, budget), rel=1e-12, abs=1e-12)


@given(instances())
def test_coarsened_knapsack_still_meets_the_budget(inst):
    costs, values, budget = inst
    sol = A.knapsack(costs, values, budget, max_states=3)
    assert sol.cost <= budget
    assert sol.value >= brute_force(costs, values, budget) - 1e-12  # never better than the optimum


def test_knapsack_extremes_and_refusal():
    costs = [[18, 22, 34], [20, 40], [5]]
    values = [[9.0, 3.0, 0.5], [4.0, 1.0], [0.0]]
    assert A.knapsack(costs, values, 10**9).choice == [2, 1, 0]        # everything affordable: the best
    assert A.knapsack(costs, values, 18 + 20 + 5).choice == [0, 0, 0]  # the minimum: the smallest
    with pytest.raises(ValueError, match="budget: 42 bytes is below the smallest allocation \\(43 bytes\\)"):
        A.knapsack(costs, values, 42)
    with pytest.raises(ValueError, match="costs: expected one non-empty list of options per item"):
        A.knapsack([[1], []], [[0.0], []], 10)


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30).astype(float), rng.standard_normal(30)  # ties in a
    assert A.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


@pytest.mark.parametrize("text, n", [("90MB", 90_000_000), ("1.5GiB", 3 * 2**29), ("4096", 4096), ("2 kB", 2000),
                                     ("7 MiB", 7 * 2**20)])
def test_parse_size(text, n):
    assert A.parse_size(text) == n


@pytest.mark.parametrize("text", ["", "ten MB", "5 parsecs", "0", "-3MB"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="--target-size: expected a"):
        A.parse_size(text, "--target-size")


# --------------------------------------------------------------------------- proxy and allocation on a model

@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(2).integers(0, 256, 2 * 64)


@pytest.fixture(scope="module")
def options(model, tokens):
    return A.sensitivities(model, A.curvature(model, tokens, window=64, max_windows=2))


def test_curvature_loss_is_the_perplexity_loss(model, tokens):
    curv = A.curvature(model, tokens, window=64, max_windows=2)
    assert curv.loss == pytest.approx(perplexity(model, tokens, window=64).nll, rel=1e-6)
    assert curv.n_rows == 128 and curv.n_scored == 126


def test_predicted_delta_is_quadratic_in_the_error(model, tokens):
    curv = A.curvature(model, tokens, window=64, max_windows=2)
    name = "blk.1.ffn_down.weight"
    W = np.asarray(model.weights[name])
    E = np.random.default_rng(3).standard_normal(W.shape).astype(np.float32) * 1e-2
    one, two = A.predicted_delta(name, W, W - E, curv), A.predicted_delta(name, W, W - 2 * E, curv)
    assert one > 0 and two == pytest.approx(4 * one, rel=1e-6)


def test_options_respect_llama_cpp_row_constraints(options, model):
    assert set(options) == set(A.quantizable(model.weights))  # no norms; the tied embedding is in
    for name, opts in options.items():
        n_per_row = model.weights[name].shape[-1]
        kquants = {o.qtype for o in opts} & {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}
        assert bool(kquants) == (n_per_row % 256 == 0), name  # 64-wide rows: 32-blocks only
        assert all(o.nbytes == A.tensor_nbytes(model.weights[name].shape, o.qtype) for o in opts)


def test_allocation_extremes(options):
    lo = sum(min(o.nbytes for o in opts) for opts in options.values())
    small = A.allocate(options, lo)
    assert small.nbytes == lo and all(r.nbytes == min(o.nbytes for o in options[r.name]) for r in small.rows)
    big = A.allocate(options, 10**12)
    assert all(r.predicted == min(o.predicted for o in options[r.name]) for r in big.rows)


def test_allocation_meets_the_mixture_budget(options, model):
    budget = A.mixture_bytes(model, "Q4_K_M")
    alloc = A.allocate(options, budget)
    assert alloc.exact and alloc.nbytes <= budget
    assert alloc.nbytes == sum(A.tensor_nbytes(model.weights[n].shape, t) for n, t in alloc.types.items())
    mixture = A.knapsack([[o.nbytes for o in options[n]] for n in options],  # the mixture is one feasible choice
                         [[o.predicted for o in options[n]] for n in options], budget)
    assert alloc.predicted == pytest.approx(mixture.value)
    assert "optimal" in alloc.table() and alloc.table().count("\n") == len(options) + 1


def test_allocated_file_has_the_planned_bytes_and_llama_cpp_loads_it(options, model, tmp_path):
    llama = pytest.importorskip("refquant.testing.llama")
    pytest.importorskip("llama_cpp")
    src = write_tiny_model(tmp_path / "tiny.gguf")
    alloc = A.allocate(options, A.mixture_bytes(model, "Q4_K_M"))
    dst = str(tmp_path / "mix.gguf")
    convert.quantize_file(src, dst, A.ftype_for(alloc), types_override=alloc.types)
    with file.read(dst) as f:
        assert {n: f.tensors[n].type for n in alloc.types} == alloc.types
        assert sum(f.tensors[n].nbytes for n in alloc.types) == alloc.nbytes
    ids = np.random.default_rng(4).integers(0, 256, 32)
    theirs = llama.LlamaCpp(dst, n_ctx=64, n_threads=1).logits(ids)
    ours = load_model(dst).forward(ids)
    assert theirs.shape == ours.shape and np.corrcoef(theirs.ravel(), ours.ravel())[0, 1] > 0.99


def test_report_rows(model, tokens):
    from refquant import report

    ctx = report.Context(calib_tokens=tokens, quick=True)
    for ftype in ("Q4_K_M", "Q3_K_M"):
        q = report.METHODS[f"mix @ {ftype} size"](model, ctx)
        assert set(q.weights) == set(A.quantizable(model.weights))
        assert q.nbytes <= A.mixture_bytes(model, ftype)


def _on_q4_1_grid(model):
    """The tiny model with every linear replaced by its Q4_1 decoding, as a Q4_1 source file is read."""
    grid = A.quantized_weights(model, {n: "Q4_1" for n in A.quantizable(model.weights)})
    return model.with_weights(grid)


def test_lossless_options_are_exactly_the_source_grid(model, tokens):
    source = _on_q4_1_grid(model)
    opts = A.sensitivities(source, A.curvature(source, tokens, window=64, max_windows=2),
                           candidates=("Q4_0", "Q4_1", "Q5_0", "Q8_0"))
    for name, o in opts.items():
        assert [x.qtype for x in o if x.lossless] == ["Q4_1"], name
        assert [x.predicted for x in o if x.lossless] == [0.0] and all(x.predicted > 0 for x in o if not x.lossless)
    fair = A.fair_options(opts)
    assert all("Q4_1" not in {x.qtype for x in o} for o in fair.values())
    kept = A.fair_options(opts, {"blk.0.attn_q.weight": "Q4_1"})
    assert {n for n, o in kept.items() if "Q4_1" in {x.qtype for x in o}} == {"blk.0.attn_q.weight"}


def test_report_rows_take_no_lossless_type_the_mixture_lacks(model, tokens):
    """Before fair_options the Q4_K_M row took Q4_1 (free on this grid) for every 32-block tensor."""
    from refquant import report
    from refquant.gguf import recipes

    source = _on_q4_1_grid(model)
    mixture = recipes.tensor_types(source, "Q4_K_M")
    assert "Q4_1" not in {mixture[n] for n in A.quantizable(source.weights)}
    q = report.METHODS["mix @ Q4_K_M size"](source, report.Context(calib_tokens=tokens, quick=True))
    unchanged = [n for n, w in q.weights.items() if np.array_equal(w, source.weights[n])]
    assert unchanged == [] and q.nbytes <= A.mixture_bytes(source, "Q4_K_M")


def test_uniform_candidate_counts_the_exercise_bytes():
    """The mixed_precision exercise's format as a Candidate: its bytes are what refquant packs."""
    from refquant import uniform as U

    W = np.random.default_rng(5).standard_normal((12, 192)).astype(np.float32)
    for bits in range(2, 9):
        qt = U.quantize(W, bits, symmetric=False, granularity="group", group_size=64, signed=False)
        packed = (U.pack_codes(qt.q.reshape(-1), bits, signed=False).nbytes + qt.s.astype(np.float16).nbytes
                  + U.pack_codes(qt.z.reshape(-1).astype(np.int32), bits, signed=False).nbytes)
        assert A.uniform_candidate(bits, 64).nbytes(W.shape) == packed, bits


# --------------------------------------------------------------------------- the command

def test_cli_dry_run_and_targets(tmp_path, capsys):
    src = write_tiny_model(tmp_path / "tiny.gguf")
    out = str(tmp_path / "out.gguf")
    assert cli.main(["quantize", src, out, "--target-bpw", "6", "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "blk.1.ffn_down.weight" in table and "optimal" in table and not os.path.exists(out)
    assert cli.main(["quantize", src, out, "--target-bpw", "5.2"]) == 0
    with file.read(src) as f_in, file.read(out) as f_out:
        n = sum(t.n_elements for t in f_in.tensors.values())
        assert 8 * sum(t.nbytes for t in f_out.tensors.values()) / n <= 5.2
    size = os.path.getsize(out) + 2000
    assert cli.main(["quantize", src, out, "--target-size", f"{size}B"]) == 0
    assert os.path.getsize(out) <= size
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    ([], "--type: required unless --target-bpw or --target-size is given"),
    (["--dry-run"], "--type: required unless --target-bpw or --target-size is given (--dry-run prints"),
    (["--target-bpw", "5", "--target-size", "1MB"], "--target-bpw, --target-size: give one budget, not both"),
    (["--target-bpw", "5", "--type", "Q4_0"], "--type: a target allocates one type per tensor"),
    (["--target-bpw", "1"], "--target-bpw: too small; the smallest allocation takes"),
    (["--target-bpw", "nan"], "--target-bpw: expected a positive number of bits per weight"),
    (["--target-size", "12 apples"], "--target-size: expected a byte count or a size with a unit"),
])
def test_cli_refuses(tmp_path, capsys, argv, message):
    src = write_tiny_model(tmp_path / "tiny.gguf")
    out = tmp_path / "out.gguf"
    assert cli.main(["quantize", src, str(out), *argv]) == 2
    assert message in capsys.readouterr().err and not out.exists()
