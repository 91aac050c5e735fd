"""Mixed precision on SmolLM2-135M: refquant's allocation against llama.cpp's Q4_K_M and Q3_K_M.

    python benchmarks/run.py allocate                         # the knapsack's speed (cases() below)
    python benchmarks/bench_allocate.py --results OUT_DIR     # the experiment (tens of minutes on 2 cores)

The experiment (every number is written to OUT_DIR/results.json as it is measured):

1. curvature (h, G, ē) of every linear on the calibration split, windows of 256;
   the sensitivity (predicted Δ mean NLL) of every tensor under every candidate type;
2. measured Δ mean NLL of a subset (one tensor quantized alone, 2 calibration windows)
   and the rank correlation of the proxy (and of the imatrix-only proxy) with it;
3. allocations at the bytes of llama.cpp's Q4_K_M and Q3_K_M mixtures of the same tensors,
   written as GGUF files by ``refquant.gguf.convert.quantize_file(types_override=...)`` next to
   the mixtures themselves (quantize_file's files are byte for byte llama-quantize's:
   tests/test_gguf_recipes.py); the same with an importance matrix (``refquant.imatrix``) for
   both sides at the Q4_K_M size;
4. perplexity on the evaluation split (windows of 512, protocol "all", the same token ids)
   by refquant's runtime and by llama.cpp (llama-cpp-python) loading each file;
5. a budget sweep (refquant's runtime only) for the Pareto plot, OUT_DIR/pareto.png.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIXTURES = ("Q3_K_M", "Q4_K_M")
SWEEP = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")  # llama.cpp mixtures measured for the plot (the two of
# MIXTURES are taken from their files' evaluation)


def cases():
    """The exact knapsack on a SmolLM2-sized instance (211 tensors, 6-12 options each)."""
    from run import Case

    from refquant import allocate as A

    rng = np.random.default_rng(0)
    block = 3456  # blocks of a 576 x 192 matrix: the gcd of SmolLM2's tensor sizes in 32-blocks
    costs, values = [], []
    for k in range(211):
        n_blocks = block * int(rng.choice([1, 3, 8]))
        sizes = np.array([18, 20, 22, 24, 34, 18])  # Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL bytes per 32
        costs.append(list(n_blocks * sizes))
        values.append(list(rng.gamma(2.0, 1.0) * 2.0 ** (-sizes / 4)))
    budget = int(sum(min(c) for c in costs) * 1.15)
    yield Case("allocate", "exact multiple-choice knapsack, 211 tensors x 6 types", lambda: A.knapsack(costs, values, budget),
               "none", None, "DP over the budget in gcd units")


def _save(out: dict, path: str) -> None:
    with open(path + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(path + ".tmp", path)


def results(out_dir: str, n_eval_windows: int, calib_windows: int, measure_windows: int) -> None:
    from refquant import allocate as A
    from refquant import imatrix as I
    from refquant.gguf import convert, recipes
    from refquant.model import data, load_model, perplexity
    from refquant.testing.llama import LlamaCpp, write_float32_gguf

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    out: dict = json.load(open(path)) if os.path.exists(path) else {}
    model = load_model()
    src = os.path.join(out_dir, "smollm2-f32.gguf")
    if not os.path.exists(src):  # the baseline: the shipped Q4_1 file decoded to float32, as a file
        write_float32_gguf({n: np.asarray(w) for n, w in model.weights.items()}, data.smollm2_path(), src)
    calib = np.array(model.tokenize(data.calibration_text()))
    eval_tokens = np.array(model.tokenize(data.evaluation_text()))[: 512 * n_eval_windows]

    curv_path = os.path.join(out_dir, "curvature.pkl")
    if os.path.exists(curv_path):  # a resumed run: the measured parts are kept
        with open(curv_path, "rb") as fh:
            curv = pickle.load(fh)
    else:
        t0 = time.perf_counter()
        curv = A.curvature(model, calib, window=256, max_windows=calib_windows)
        out["curvature_seconds"] = time.perf_counter() - t0
        with open(curv_path, "wb") as fh:
            pickle.dump(curv, fh)
    if "options" not in out:
        t0 = time.perf_counter()
        options = A.sensitivities(model, curv)
        out["sensitivity_seconds"] = time.perf_counter() - t0
        out["options"] = {n: [o._asdict() for o in opts] for n, opts in options.items()}
        _save(out, path)
    options = {n: [A.Option(**o) for o in opts] for n, opts in out["options"].items()}

    # the proxy against measured single-tensor deltas: a spread of kinds and depths, two types each
    subset = [f"blk.{i}.{k}.weight" for i, k in ((0, "attn_v"), (2, "ffn_down"), (5, "attn_q"), (8, "ffn_up"),
                                                  (11, "attn_output"), (14, "ffn_gate"), (17, "attn_k"),
                                                  (20, "ffn_down"), (23, "attn_v"), (26, "ffn_up"), (29, "ffn_down"))]
    subset.append("token_embd.weight")
    pairs = [(n, t) for n in subset for t in (("Q3_K", "Q5_K") if n.endswith("ffn_down.weight") else ("Q4_0", "Q5_1"))]
    if "measured" not in out:
        t0 = time.perf_counter()
        meas = A.measure_deltas(model, calib, pairs, window=256, max_windows=measure_windows)
        out["measure_seconds"] = time.perf_counter() - t0
        out["measured"] = [[n, t, v] for (n, t), v in meas.items()]
        _save(out, path)
    pred = {(n, o.qtype): o for n in options for o in options[n]}
    m = [v for _, _, v in out["measured"]]
    out["spearman_fisher"] = A.spearman([pred[n, t].predicted for n, t, _ in out["measured"]], m)
    out["spearman_imatrix"] = A.spearman([pred[n, t].imatrix_err for n, t, _ in out["measured"]], m)
    _save(out, path)

    evals = out.setdefault("evals", {})

    def evaluate(label: str, file: str | None, weights: dict | None) -> None:
        if label in evals:
            return
        swapped = model.with_weights(weights) if weights else model
        r = {"refquant_ppl": perplexity(swapped, eval_tokens, window=512).ppl}
        if file is not None:
            r["llama_cpp_ppl"] = perplexity(LlamaCpp(file, n_ctx=512).logits, eval_tokens, window=512).ppl
            r["file_bytes"] = os.path.getsize(file)
        evals[label] = r
        _save(out, path)
        print(label, r, flush=True)

    evaluate("float32", None, None)

    def file_weights(file: str) -> dict:
        from refquant.gguf import dequantize, file as gfile

        with gfile.read(file) as f:
            return {n: np.asarray(dequantize(np.asarray(t.raw), t.type), np.float32).reshape(t.shape)
                    for n, t in f.tensors.items() if t.type != "F32"}

    im_path = os.path.join(out_dir, "imatrix.gguf")
    if not os.path.exists(im_path):
        I.compute_imatrix(model, calib, chunk_size=512, max_chunks=8, datasets=[data.source()]).save(im_path)
    for ftype, with_im in [(f, False) for f in MIXTURES] + [("Q4_K_M", True)]:
        tag = "+imatrix" if with_im else ""
        theirs = os.path.join(out_dir, f"llama-{ftype}{tag}.gguf")
        if not os.path.exists(theirs):
            convert.quantize_file(src, theirs, ftype, im_path if with_im else None)
        evaluate(f"llama.cpp {ftype}{tag}", theirs, file_weights(theirs))
        opts = options
        if with_im:
            from refquant.gguf.imatrix import load_imatrix

            opts = A.sensitivities(model, curv, imatrix=load_imatrix(im_path))
        budget = A.mixture_bytes(model, ftype, opts)
        alloc = A.allocate(opts, budget)
        out[f"alloc {ftype}{tag}"] = {"types": alloc.types, "bytes": alloc.nbytes, "budget": budget,
                                      "predicted": alloc.predicted, "exact": alloc.exact, "seconds": alloc.seconds}
        _save(out, path)
        ours = os.path.join(out_dir, f"refquant-mix-{ftype}{tag}.gguf")
        if not os.path.exists(ours):
            convert.quantize_file(src, ours, A.ftype_for(alloc), im_path if with_im else None,
                                  types_override=alloc.types)
        evaluate(f"mix @ {ftype}{tag} size", ours, file_weights(ours))

    # the sweep: llama.cpp mixtures and allocations at their sizes, refquant's runtime only
    sweep = out.setdefault("sweep", {})
    for ftype in SWEEP:
        if ftype in sweep:
            continue
        types = recipes.tensor_types(model, ftype)
        names = list(options)
        budget = A.mixture_bytes(model, ftype, names)
        if ftype in MIXTURES:
            sweep[ftype] = {"bytes": budget, "alloc_bytes": out[f"alloc {ftype}"]["bytes"],
                            "llama_ppl": evals[f"llama.cpp {ftype}"]["refquant_ppl"],
                            "mix_ppl": evals[f"mix @ {ftype} size"]["refquant_ppl"]}
            continue
        theirs = {n: A.gguf_candidate(types[n]).fake_quantize(np.asarray(model.weights[n]), None) for n in names}
        alloc = A.allocate(options, budget)
        mine = {n: A.gguf_candidate(t).fake_quantize(np.asarray(model.weights[n]), None) for n, t in alloc.types.items()}
        sweep[ftype] = {"bytes": budget, "alloc_bytes": alloc.nbytes,
                        "llama_ppl": perplexity(model.with_weights(theirs), eval_tokens, window=512).ppl,
                        "mix_ppl": perplexity(model.with_weights(mine), eval_tokens, window=512).ppl}
        _save(out, path)
        print(ftype, sweep[ftype], flush=True)
    plot(out, os.path.join(out_dir, "pareto.png"))


def plot(out: dict, png: str) -> None:
    """Perplexity against the bytes of the quantized tensors: llama.cpp's mixtures, refquant's allocations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sweep = out["sweep"]
    keys = sorted(sweep, key=lambda k: sweep[k]["bytes"])
    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([sweep[k]["bytes"] / 1e6 for k in keys], [sweep[k]["llama_ppl"] for k in keys], "o-", label="llama.cpp mixture")
    ax.plot([sweep[k]["alloc_bytes"] / 1e6 for k in keys], [sweep[k]["mix_ppl"] for k in keys], "s-",
            label="refquant allocation at that size")
    for k in keys:
        ax.annotate(k, (sweep[k]["bytes"] / 1e6, sweep[k]["llama_ppl"]), xytext=(4, 4), textcoords="offset points",
                    fontsize=8)
    ax.axhline(out["evals"]["float32"]["refquant_ppl"], color="gray", ls="--", lw=1, label="float32")
    ax.set_xlabel("quantized tensors, MB")
    ax.set_ylabel("perplexity, evaluation split (refquant runtime)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", metavar="OUT_DIR", required=True)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--calib-windows", type=int, default=4)
    p.add_argument("--measure-windows", type=int, default=2)
    a = p.parse_args()
    results(a.results, a.eval_windows, a.calib_windows, a.measure_windows)


if __name__ == "__main__":
    main()
