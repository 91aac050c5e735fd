"""GPTQ vs AWQ at 3 bits: a block-by-block driver on refquant's layer-level functions.

    python exercises/gptq_vs_awq_3bit/solution.py           the quick setting (README.md), writes
                                                            solution_results.json
    python exercises/gptq_vs_awq_3bit/solution.py --full    also the longer run (all 30 blocks)

The driver, for either method: embed the calibration windows; for block i = 0, 1, ...:
collect the inputs of block i's linears *from the model whose blocks 0..i-1 are already
quantized*, quantize block i, and run the quantized block i to get block i+1's inputs.
"""

import json
import pathlib
import sys
import time

import numpy as np

from refquant import awq, blockwise, gptq
from refquant.model import data, load_model, perplexity
from refquant.model.calibration import embedded_windows

METHODS = ("gptq", "gptq_act_order", "awq")
# the linears quantized together, in the order the block uses them: each stage sees the inputs
# produced with the stages before it already quantized (GPTQ's "true sequential")
STAGES = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",))
NO_CLIP = ("attn_q", "attn_k")   # llm-awq does not clip q and k (softmax(q·k) amplifies it)

QUICK = dict(blocks=(0, 1), calib_tokens=64, window=64, eval_tokens=128, eval_window=128)
FULL = dict(blocks=tuple(range(30)), calib_tokens=512, window=256, eval_tokens=1024, eval_window=256)


def _name(i, kind):
    return f"blk.{i}.{kind}.weight"


def _gptq_block(model, i, hs, result, bits, group_size, act_order):
    for stage in STAGES:
        current = model.with_weights(result) if result else model
        H = {kind: None for kind in stage}

        def see(name, x):
            kind = name.split(".")[2]
            if kind in H:
                if H[kind] is None:
                    H[kind] = gptq.Hessian(int(x.shape[1]))
                H[kind].add(x)

        for h in hs:                      # one window at a time: H is a running mean
            current.block(i, h, capture=see)
        for kind in stage:
            W = model.weights[_name(i, kind)]
            r = gptq.gptq_quantize(W, H[kind].H, bits, group_size, act_order=act_order, partial_group=True)
            result[_name(i, kind)] = r.W_hat


def _awq_block(model, i, hs, result, bits, group_size):
    current = model.with_weights(result) if result else model
    feats = {}
    for h in hs:
        current.block(i, h, capture=lambda name, x: feats.setdefault(name.split(".")[2], []).append(x))
    X = {k: np.concatenate(v, axis=0) for k, v in feats.items()}           # (T_total, in) per linear
    W = {k: model.weights[_name(i, k)] for k in X}
    groups = [(("attn_q", "attn_k", "attn_v"), "attn_norm"), (("ffn_gate", "ffn_up"), "ffn_norm"),
              (("ffn_down",), "ffn_up")]
    c = model.config
    if c.n_head == c.n_head_kv:          # o after v only without grouped-query attention
        groups.insert(1, (("attn_output",), "attn_v"))
    s_in = {k: np.ones(Wk.shape[1], np.float32) for k, Wk in W.items()}
    s_out = {k: np.ones(Wk.shape[0], np.float32) for k, Wk in W.items()}
    for targets, absorber in groups:
        found = awq.search_scale(X[targets[0]], [W[k] for k in targets], bits, group_size, partial_group=True)
        for k in targets:
            s_in[k] = found.s
        if absorber in W:                # a linear absorbs 1/s in its rows; a norm gain needs no weight here
            s_out[absorber] = found.s
    for k, Wk in W.items():
        W_folded = Wk * s_in[k][None, :] / s_out[k][:, None]              # diag(1/s_out) W diag(s_in)
        if k not in NO_CLIP:
            clip = awq.search_clip(W_folded, X[k] / s_in[k][None, :], bits, group_size, partial_group=True)
            W_folded = awq.apply_clip(W_folded, clip.max_val, group_size)
        Q = awq.awq_group_quantize(W_folded, bits, group_size, partial_group=True)[3]
        result[_name(i, k)] = Q * s_out[k][:, None] / s_in[k][None, :]    # what the unfolded model multiplies by


def quantize_blocks(model, calib_tokens, method, bits=3, group_size=128, window=64, blocks=(0, 1)):
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    hs = embedded_windows(model, calib_tokens, window)                     # [(window, d)] per window
    result = {}
    for i in blocks:
        if method == "awq":
            _awq_block(model, i, hs, result, bits, group_size)
        else:
            _gptq_block(model, i, hs, result, bits, group_size, act_order=method == "gptq_act_order")
        quantized = model.with_weights(result)
        hs = [quantized.block(i, h) for h in hs]                           # block i+1 sees quantized block i
    return result


def measure(model, setting, bits=3, group_size=128):
    calib = np.asarray(model.tokenize(data.calibration_text()))[:setting["calib_tokens"]]
    evals = np.asarray(model.tokenize(data.evaluation_text()))[:setting["eval_tokens"]]
    ppl = lambda m: perplexity(m, evals, window=setting["eval_window"]).ppl  # noqa: E731
    out = {"float": ppl(model),
           "rtn": ppl(model.with_weights(blockwise.rtn_quantize_model(model, bits, group_size, blocks=setting["blocks"])))}
    for method in METHODS:
        t0 = time.perf_counter()
        W_hat = quantize_blocks(model, calib, method, bits, group_size, setting["window"], setting["blocks"])
        out[method] = ppl(model.with_weights(W_hat))
        print(f"{method}: {out[method]:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return out


if __name__ == "__main__":
    model = load_model()
    path = pathlib.Path(__file__).with_name(pathlib.Path(__file__).stem + "_results.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results["quick"] = measure(model, QUICK)
    if "--full" in sys.argv:
        results["full"] = {"setting": {k: (len(v) if k == "blocks" else v) for k, v in FULL.items()},
                           "ppl": measure(model, FULL)}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
