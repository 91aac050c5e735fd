"""GPTQ / AWQ: speed against llm-compressor, and the perplexity table on SmolLM2-135M.

    python benchmarks/run.py gptq                         # speed (cases() below)
    python benchmarks/bench_gptq.py --results [--xp cupy] # perplexity table (Markdown)

Speed: one 4096 x 4096 layer, 4-bit, G = 128, asymmetric, blocksize 128: refquant's NumPy
``gptq_quantize`` against llm-compressor's torch ``quantize_weight`` on the CPU, both given
the same H and the same up-front scales (llm-compressor's only mode), plus refquant's
default mode (each group's scale computed when the loop reaches it). H comes from 2N
synthetic correlated tokens (REFQUANT_BENCH_GPTQ_N=2048 sets N for a quick run): the GPTQ step costs the same whatever number of tokens built
H; accumulating H over 128 x 2048 tokens is a separate case (one 2048-token batch timed).

Drivers: ``python benchmarks/bench_gptq.py --drivers [--blocks 4 --calib-tokens 512 --save W.npz]``
times the model-level GPTQ (plain and act-order) and AWQ drivers on the first blocks of
SmolLM2 (4-bit, G = 128) and can save every Ŵ, to compare two versions bit for bit.

Results: SmolLM2-135M-Instruct (the shipped Q4_1 GGUF decoded to float32 is the baseline),
calibration on the pydoc calibration split, perplexity on the pydoc evaluation split
(``refquant.model.perplexity``, windows of 512, protocol "all").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

N = int(os.environ.get("REFQUANT_BENCH_GPTQ_N", 4096))  # layer size (N x N); smaller for a quick look
G, BITS, TOKENS_FOR_H, BATCH = 128, 4, 2 * N, 2048


def _layer(seed: int = 0):
    from refquant import gptq

    rng = np.random.default_rng(seed)
    W = (rng.standard_t(5, (N, N)) * 0.02).astype(np.float32)
    mix = (np.eye(N) + rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32)  # correlated channels
    h = gptq.Hessian(N)
    for k in range(0, TOKENS_FOR_H, BATCH):
        h.add(rng.standard_normal((BATCH, N)).astype(np.float32) @ mix)
    X = rng.standard_normal((BATCH, N)).astype(np.float32) @ mix
    return W, h.H, X


def cases():
    import run
    from refquant import gptq

    W, H, X = _layer()
    try:
        from refquant.testing import llmcompressor as L

        s, z = L.observer_qparams(W, BITS, G, symmetric=False)
        anchor = lambda: L.llmc_gptq(W, H, s, z, BITS, G)  # noqa: E731
        import torch
        from llmcompressor.modifiers.gptq.helpers import accumulate_hessian

        lin = torch.nn.Linear(N, N, bias=False)
        Xt = torch.from_numpy(X)

        def anchor_h():
            accumulate_hessian(Xt[None], lin, torch.zeros((N, N)), torch.zeros(()))
    except ImportError:
        s, z = gptq.minmax_params(W[:, :G], BITS, False)
        anchor = anchor_h = None
    yield run.Case("gptq-awq", f"GPTQ {N}x{N}, static groups (llm-compressor's mode)",
                   lambda: gptq.gptq_quantize(W, H, BITS, G, s=s, z=z, signed=True, zero_before_round=True),
                   "llm-compressor quantize_weight (torch CPU)", anchor)
    yield run.Case("gptq-awq", f"GPTQ {N}x{N}, groups found in the loop", lambda: gptq.gptq_quantize(W, H, BITS, G),
                   "llm-compressor quantize_weight (torch CPU)", anchor)

    def ours_h():
        h = gptq.Hessian(N)
        h.add(X)

    yield run.Case("gptq-awq", f"Hessian: one {BATCH}-token batch, {N} inputs", ours_h,
                   "llm-compressor accumulate_hessian (torch CPU)", anchor_h)


# ----------------------------------------------------------------------------- results

METHODS = ("baseline", "rtn4", "gptq4", "gptq4-act", "awq4", "rtn3", "gptq3", "gptq3-act", "awq3")


def bits_per_weight(model, bits: int | None, group_size: int = G) -> float:
    """Bits per block-linear weight: b-bit codes + an fp16 scale and a b-bit zero per group
    (a shorter last group where G does not divide the row, 576 = 4·128 + 64)."""
    if bits is None:
        return 4 + (16 + 16) / 32  # Q4_1: 4-bit codes, fp16 d and m per 32
    total_w = total_bits = 0
    for name in model.linear_names():
        n_out, n_in = model.weights[name].shape
        n_groups = math.ceil(n_in / group_size)
        total_w += n_out * n_in
        total_bits += n_out * (n_in * bits + n_groups * (16 + bits))
    return total_bits / total_w


def quantize(method: str, model, calib, progress=None, blocks=None):
    """{name: Ŵ} of a method named like 'gptq4-act' (family, bits, act-order)."""
    from refquant import blockwise

    if method == "baseline":
        return {}
    bits = int(method.split("-")[0][-1])
    if method.startswith("rtn"):
        return blockwise.rtn_quantize_model(model, bits, G, blocks=blocks)
    if method.startswith("gptq"):
        return blockwise.gptq_quantize_model(model, calib, bits, G, act_order=method.endswith("-act"),
                                             progress=progress, blocks=blocks).weights
    return blockwise.awq_quantize_model(model, calib, bits, G, progress=progress, blocks=blocks).weights


def results(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GPTQ/AWQ perplexity table on SmolLM2-135M")
    ap.add_argument("--results", action="store_true")
    ap.add_argument("--xp", default="numpy", choices=["numpy", "cupy", "torch"])
    ap.add_argument("--model", default=None, help="GGUF path (default: the shipped SmolLM2)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--calib-windows", type=int, default=64, help="calibration windows of 512 tokens")
    ap.add_argument("--eval-windows", type=int, default=None, help="evaluation windows of 512 (default: all)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--blocks", type=int, default=None, help="quantize only the first N blocks (a smoke test)")
    args = ap.parse_args(argv)

    from refquant.model import load_model
    from refquant.model.data import calibration_text, evaluation_text, source
    from refquant.model.ppl import perplexity

    xp = None
    if args.xp == "cupy":
        import array_api_compat.cupy as xp
    elif args.xp == "torch":
        import array_api_compat.torch as xp
    model = load_model(args.model, xp=xp)
    calib = np.asarray(model.tokenize(calibration_text()), dtype=np.int64)[: args.calib_windows * 512]
    evaluation = np.asarray(model.tokenize(evaluation_text()), dtype=np.int64)
    progress = None
    try:
        from tqdm.auto import tqdm

        progress = lambda it, desc="", total=None: tqdm(it, desc=desc, total=total, file=sys.stderr)  # noqa: E731
    except ImportError:
        pass
    rows = []
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        blocks = None if args.blocks is None else list(range(args.blocks))
        weights = quantize(method, model, calib, progress, blocks)
        seconds = time.perf_counter() - t0
        ppl = perplexity(model.with_weights(weights) if weights else model, evaluation, window=512,
                         max_windows=args.eval_windows)
        bits = None if method == "baseline" else int(method.split("-")[0][-1])
        rows.append(dict(method=method, bpw=bits_per_weight(model, bits), ppl=ppl.ppl, n_tokens=ppl.n_tokens,
                         seconds=seconds))
        print(f"| {method} | {rows[-1]['bpw']:.3f} | {ppl.ppl:.3f} | {seconds:.1f} |", flush=True)
    print(f"# calibration {len(calib)} tokens, evaluation {rows[0]['n_tokens'] if rows else 0} scored tokens "
          f"of {source()}, backend {args.xp}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _drivers():
    """(GPTQ driver, AWQ driver) -> {name: Ŵ}: refquant.blockwise's, or the layer modules' of
    trees before it (kept so the same command times both sides of that change)."""
    try:
        from refquant import blockwise

        return (lambda *a, **k: blockwise.gptq_quantize_model(*a, **k).weights,
                lambda *a, **k: blockwise.awq_quantize_model(*a, **k).weights)
    except ImportError:
        from refquant import awq, gptq

        return gptq.gptq_quantize_model, awq.awq_quantize_model


def drivers(argv=None) -> int:
    """Wall time of the model-level drivers on a fixed small setting; optionally save every Ŵ."""
    ap = argparse.ArgumentParser(description="time model-level GPTQ/AWQ on SmolLM2's first blocks")
    ap.add_argument("--drivers", action="store_true")
    ap.add_argument("--blocks", type=int, default=4, help="quantize blocks 0..N-1")
    ap.add_argument("--calib-tokens", type=int, default=512, help="calibration tokens (one window of 512)")
    ap.add_argument("--save", default=None, help="write every Ŵ to this .npz")
    args = ap.parse_args(argv)

    from refquant.model import load_model
    from refquant.model.data import calibration_text

    gptq_model, awq_model = _drivers()
    model = load_model()
    calib = np.asarray(model.tokenize(calibration_text()), dtype=np.int64)[: args.calib_tokens]
    blocks = list(range(args.blocks))
    runs = {"gptq4": lambda: gptq_model(model, calib, BITS, G, blocks=blocks),
            "gptq4-act": lambda: gptq_model(model, calib, BITS, G, act_order=True, blocks=blocks),
            "awq4": lambda: awq_model(model, calib, BITS, G, blocks=blocks)}
    saved = {}
    print(f"# {len(calib)} calibration tokens, blocks 0..{args.blocks - 1}, load {os.getloadavg()[0]:.2f}")
    for name, run in runs.items():
        t0 = time.perf_counter()
        weights = run()
        print(f"| {name} | {time.perf_counter() - t0:.1f} s |", flush=True)
        saved.update({f"{name}/{n}": np.asarray(w) for n, w in weights.items()})
    print(f"# load {os.getloadavg()[0]:.2f} at the end", flush=True)
    if args.save:
        np.savez(args.save, **saved)
    return 0


if __name__ == "__main__":
    raise SystemExit(drivers() if "--drivers" in sys.argv else results())
