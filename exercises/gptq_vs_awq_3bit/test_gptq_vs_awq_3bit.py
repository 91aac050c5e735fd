"""Checker for the GPTQ / AWQ block-by-block driver and the 3-bit comparison.

    EXERCISE=my_attempt python -m pytest exercises/gptq_vs_awq_3bit -q

Quick setting (to stay near a minute on 2 cores): blocks 0 and 1, one calibration window
of 64 tokens, perplexity on one 128-token window. The driver runs once per method; the
checker watches the calls it makes to refquant.gptq.gptq_quantize and refquant.awq.search_scale
and rebuilds every input they should have received from the driver's own earlier results.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import pathlib

import numpy as np
import pytest

from refquant import awq, blockwise, gptq
from refquant.exercises import attempt_path, load_attempt
from refquant.model import perplexity
from refquant.model.calibration import embedded_windows

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder
RESULTS = attempt_path(pathlib.Path(__file__).parent).with_suffix("").as_posix() + "_results.json"

BITS, G = 3, 128
BLOCKS, N_CALIB, WINDOW = (0, 1), 64, 64
N_EVAL, EVAL_WINDOW = 128, 128
METHODS = ("gptq", "gptq_act_order", "awq")
KEYS = ("float", "rtn", *METHODS)
H_RTOL = 1e-5        # relative Frobenius: the same inputs summed in another float32 order
X_RTOL = 1e-6
AWQ_DIFFER = 0.01    # fraction of weights allowed to differ from refquant's AWQ driver (README.md)
PPL_RTOL = 1e-3      # the learner's reported quick perplexities vs the checker's measurement
# GPTQ on a 64-token Hessian is so sensitive to the order of float32 sums that the BLAS thread
# count alone moves its quick perplexity by ~5 % (30.79 with OMP_NUM_THREADS=1, 32.46 with 2
# threads, same machine). Single-threaded (as `refquant exercises check` runs) the methods are
# compared to 1e-3; with threads, only to this bound.
THREADED_RTOL = 0.10
SINGLE_THREAD = os.environ.get("OMP_NUM_THREADS") == "1"
# GPTQ's true-sequential stages, in the order a block uses them (IST-DASLab/gptq llama.py)
STAGES = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",))
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _name_of(model, W) -> str | None:
    for name in model.linear_names():
        ref = model.weights[name]
        if W is ref or (W.shape == ref.shape and np.shares_memory(W, ref)) or \
                (W.shape == ref.shape and np.array_equal(W, ref)):
            return name
    return None


@pytest.fixture(scope="module")
def runs(smollm2, calib_tokens):
    """{method: (result or the exception, gptq calls, search_scale calls)} — one driver run each."""
    calib = calib_tokens[:N_CALIB]
    out = {}
    real_gptq, real_scale = gptq.gptq_quantize, awq.search_scale
    sig_gptq, sig_scale = inspect.signature(real_gptq), inspect.signature(real_scale)
    for method in METHODS:
        g_calls, s_calls = [], []

        def spy_gptq(*args, **kwargs):
            bound = sig_gptq.bind(*args, **kwargs)
            bound.apply_defaults()
            r = real_gptq(*args, **kwargs)
            g_calls.append((bound.arguments, r))
            return r

        def spy_scale(*args, **kwargs):
            bound = sig_scale.bind(*args, **kwargs)
            bound.apply_defaults()
            s_calls.append(bound.arguments)
            return real_scale(*args, **kwargs)

        gptq.gptq_quantize, awq.search_scale = spy_gptq, spy_scale
        try:
            result = ex.quantize_blocks(smollm2, calib, method, BITS, G, WINDOW, BLOCKS)
        except Exception as e:  # noqa: BLE001 - reported by the tests that need this run
            result = e
        finally:
            gptq.gptq_quantize, awq.search_scale = real_gptq, real_scale
        out[method] = (result, g_calls, s_calls)
    return out


def _result(runs, method):
    result = runs[method][0]
    if isinstance(result, NotImplementedError):
        pytest.fail(f"quantize_blocks is not implemented yet ({result})", pytrace=False)
    if isinstance(result, Exception):
        raise result
    expected = {f"blk.{i}.{k}.weight" for i in BLOCKS for k in LINEARS}
    assert set(result) == expected, (f"{method}: expected Ŵ for the 7 linears of blocks {BLOCKS}; "
                                     f"missing {sorted(expected - set(result))[:3]}, extra {sorted(set(result) - expected)[:3]}")
    return result


def _stage_inputs(model, i, hs, replaced, kind):
    xs = []
    m = model.with_weights(replaced) if replaced else model
    for h in hs:
        m.block(i, h, capture=lambda name, x: xs.append(x) if name.split(".")[2] == kind else None)
    return xs


def _hessian(xs):
    acc = gptq.Hessian(int(xs[0].shape[1]))
    for x in xs:
        acc.add(x)
    return acc.H


@pytest.mark.parametrize("method", ["gptq", "gptq_act_order"])
def test_gptq_driver(smollm2, calib_tokens, runs, method):
    result = _result(runs, method)
    calls = {}
    for args, r in runs[method][1]:
        name = _name_of(smollm2, args["W"])
        assert name is not None, "gptq_quantize was given a weight that is none of the model's linears"
        calls[name] = (args, r)
    missing = [n for n in result if n not in calls]
    assert not missing, f"{missing[0]}: your driver never called gptq.gptq_quantize for it (call it through the module)"
    hs = embedded_windows(smollm2, calib_tokens[:N_CALIB], WINDOW)
    hs_float = list(hs)
    done: dict = {}
    for i in BLOCKS:
        for stage in STAGES:
            H = _hessian(_stage_inputs(smollm2, i, hs, done, stage[0]))
            for kind in stage:
                name = f"blk.{i}.{kind}.weight"
                args, r = calls[name]
                assert (args["bits"], args["group_size"], bool(args["act_order"]), bool(args["partial_group"])) == \
                    (BITS, G, method == "gptq_act_order", True), (
                    f"{name}: gptq_quantize called with bits={args['bits']}, group_size={args['group_size']}, "
                    f"act_order={args['act_order']}, partial_group={args['partial_group']}")
                err = _rel(args["H"], H)
                if err > H_RTOL:
                    pytest.fail(f"{name}: your H differs from the one of the right inputs by {err:.2g} (relative)\n"
                                f"hint: {_gptq_hint(smollm2, i, stage, kind, hs, hs_float, done, args['H'])}", pytrace=False)
                assert np.array_equal(result[name], r.W_hat), f"{name}: return gptq_quantize's W_hat for it"
            done.update({f"blk.{i}.{k}.weight": result[f"blk.{i}.{k}.weight"] for k in stage})
        quantized = smollm2.with_weights(done)
        hs = [quantized.block(i, h) for h in hs]
        hs_float = [smollm2.block(i, h) for h in hs_float]


def _gptq_hint(model, i, stage, kind, hs, hs_float, done, H_got) -> str:
    if i > 0 and _rel(H_got, _hessian(_stage_inputs(model, i, hs_float, {}, stage[0]))) <= 100 * H_RTOL:
        return f"block {i} saw the FLOAT model's outputs; it must see the outputs of the quantized blocks 0..{i - 1}"
    earlier = {n: w for n, w in done.items() if not n.startswith(f"blk.{i}.")}
    if stage != STAGES[0] and _rel(H_got, _hessian(_stage_inputs(model, i, hs, earlier, stage[0]))) <= 100 * H_RTOL:
        return (f"{kind}'s inputs were taken before block {i}'s earlier stages were quantized; capture per stage "
                "(true sequential)")
    return "H = the mean over windows of gptq.Hessian.add(x), x the stage's input captured in block i"


def test_awq_driver(smollm2, calib_tokens, runs):
    result = _result(runs, "awq")
    calls = runs["awq"][2]
    hs = embedded_windows(smollm2, calib_tokens[:N_CALIB], WINDOW)
    done: dict = {}
    for i in BLOCKS:
        for first in ("attn_q", "ffn_gate", "ffn_down"):
            name = f"blk.{i}.{first}.weight"
            mine = [c for c in calls if _name_of(smollm2, list(c["Ws"])[0]) == name]
            assert mine, f"{name}: your driver never called awq.search_scale for its group (call it through the module)"
            X = np.concatenate(_stage_inputs(smollm2, i, hs, done, first), axis=0)
            err = _rel(mine[0]["X"], X)
            assert err <= X_RTOL, (f"{name}: the X given to search_scale differs from the right inputs by {err:.2g}\n"
                                   f"hint: block {i}'s inputs come from the quantized blocks before it, captured with "
                                   f"block {i}'s own weights unchanged, all windows concatenated")
        done.update({n: w for n, w in result.items() if n.startswith(f"blk.{i}.")})
        hs = [smollm2.with_weights(done).block(i, h) for h in hs]
    ref = blockwise.awq_quantize_model(smollm2, calib_tokens[:N_CALIB], BITS, G, WINDOW, blocks=list(BLOCKS)).weights
    for name in sorted(ref, key=lambda n: (int(n.split(".")[1]), n)):
        W = smollm2.weights[name]
        differ = float(np.mean(np.abs(result[name] - ref[name]) > 1e-6 * np.abs(W).max()))
        assert differ <= AWQ_DIFFER, (f"{name}: {100 * differ:.1f} % of your AWQ weights differ from refquant's driver\n"
                                      "hint: the effective weight diag(s_out) Q(clip(W')) diag(s_in)⁻¹, "
                                      "W' = diag(1/s_out) W diag(s_in)")


def _measured(smollm2, eval_tokens, runs):
    tokens = eval_tokens[:N_EVAL]
    ppl = lambda m: perplexity(m, tokens, window=EVAL_WINDOW).ppl  # noqa: E731
    out = {"float": ppl(smollm2), "rtn": ppl(smollm2.with_weights(blockwise.rtn_quantize_model(smollm2, BITS, G, blocks=BLOCKS)))}
    out.update({m: ppl(smollm2.with_weights(_result(runs, m))) for m in METHODS})
    return out


def _load_results() -> dict:
    path = pathlib.Path(RESULTS)
    if not path.is_file():
        pytest.fail(f"no results file: write your numbers and analysis into {path.name} (README.md)", pytrace=False)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        pytest.fail(f"{path.name}: not valid JSON ({e})", pytrace=False)


def _ppl_table(table, where):
    assert isinstance(table, dict) and set(KEYS) <= set(table), f"{where}: expected the perplexities {KEYS}"
    for k in KEYS:
        v = table[k]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 1, f"{where}.{k}: expected a perplexity > 1, got {v!r}"
    assert table["float"] < min(table[m] for m in ("rtn", *METHODS)), f"{where}: the float model should be best"


def test_quick_perplexities(smollm2, eval_tokens, runs):
    measured = _measured(smollm2, eval_tokens, runs)
    reported = _load_results().get("quick")
    _ppl_table(reported, "quick")
    for k in KEYS:
        rtol = PPL_RTOL if SINGLE_THREAD or k in ("float", "rtn") else THREADED_RTOL
        assert reported[k] == pytest.approx(measured[k], rel=rtol), (
            f"quick.{k}: the checker measures {measured[k]:.4f}, your file says {reported[k]:.4f}")


def test_analysis():
    results = _load_results()
    full = results.get("full")
    assert isinstance(full, dict) and "ppl" in full and isinstance(full.get("setting"), dict), \
        "full: expected {\"setting\": {...}, \"ppl\": {...}} from your longer run"
    _ppl_table(full["ppl"], "full.ppl")
    a = results.get("analysis", {})
    ranked = sorted(METHODS, key=lambda m: full["ppl"][m])
    assert a.get("best") == ranked[0], f"analysis.best: the lowest full perplexity is {ranked[0]}'s, not {a.get('best')!r}"
    margin = 100 * (full["ppl"][ranked[1]] / full["ppl"][ranked[0]] - 1)
    assert isinstance(a.get("margin_pct"), (int, float)) and abs(a["margin_pct"] - margin) <= 0.05, (
        f"analysis.margin_pct: your full numbers give {margin:.2f} % (runner-up / best − 1), the file says "
        f"{a.get('margin_pct')!r}")
    assert len(str(a.get("why", "")).split()) >= 20, "analysis.why: explain in at least 20 words why"
