"""Mixed precision on SmolLM2-135M: refquant's allocation against llama.cpp's Q4_K_M and Q3_K_M.

    python benchmarks/run.py allocate                         # the knapsack's speed (cases() below)
    python benchmarks/bench_allocate.py --results OUT_DIR     # the experiment (tens of minutes on 2 cores)

The experiment (every number is written to OUT_DIR/results.json as it is measured):

1. curvature (h, G, ē) of every linear on the calibration split, windows of 256;
   the sensitivity (predicted Δ mean NLL) of every tensor under every candidate type;
2. measured Δ mean NLL of a subset (one tensor quantized alone, 2 calibration windows)
   and the rank correlation of the proxy (and of the imatrix-only proxy) with it;
3. allocations at the bytes of llama.cpp's Q4_K_M and Q3_K_M mixtures of the same tensors, with
   ``allocate.fair_options``: the source is a Q4_1 file, so re-encoding a linear as Q4_1 (and
   token_embd as Q8_0) is lossless; the allocator may take a lossless (tensor, type) pair only
   where the mixture has it too ("mix @ … size", the report rows), or nowhere ("…, no lossless type");
   written as GGUF files by ``refquant.gguf.convert.quantize_file(types_override=...)`` next to
   the mixtures themselves (quantize_file's files are byte for byte llama-quantize's:
   tests/test_gguf_recipes.py); the same with an importance matrix (``refquant.imatrix``) for
   both sides at the Q4_K_M size;
4. perplexity on the evaluation split (windows of 512, protocol "all", the same token ids)
   by refquant's runtime and by llama.cpp (llama-cpp-python) loading each file;
5. a budget sweep (refquant's runtime only) for the Pareto plot, OUT_DIR/pareto.png;
6. which re-encodings of the source are lossless, and each type's relative error on it.
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


class _Run:
    """One experiment's state: the model, its token ids, the results dict saved after every figure."""

    def __init__(self, out_dir: str, n_eval_windows: int):
        from refquant.model import data, load_model

        os.makedirs(out_dir, exist_ok=True)
        self.dir, self.path = out_dir, os.path.join(out_dir, "results.json")
        self.out: dict = json.load(open(self.path)) if os.path.exists(self.path) else {}
        self.out["machine"] = f"{os.uname().machine}, {os.cpu_count()} cores (shared)"
        self.model = load_model()
        self.calib = np.array(self.model.tokenize(data.calibration_text()))
        self.eval_tokens = np.array(self.model.tokenize(data.evaluation_text()))[: 512 * n_eval_windows]
        self.evals = self.out.setdefault("evals", {})

    def save(self) -> None:
        self.out.setdefault("load", []).append([time.strftime("%H:%M"), os.getloadavg()[0]])
        _save(self.out, self.path)

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def evaluate(self, label: str, file: str | None, weights: dict | None) -> None:
        """Perplexity on the evaluation split by refquant's runtime and (given a file) by llama.cpp."""
        from refquant.model import perplexity
        from refquant.testing.llama import LlamaCpp

        if label in self.evals:
            return
        swapped = self.model.with_weights(weights) if weights else self.model
        r = {"refquant_ppl": perplexity(swapped, self.eval_tokens, window=512).ppl}
        if file is not None:
            r["llama_cpp_ppl"] = perplexity(LlamaCpp(file, n_ctx=512).logits, self.eval_tokens, window=512).ppl
            r["file_bytes"] = os.path.getsize(file)
        self.evals[label] = r
        self.save()
        print(label, r, flush=True)


def _file_weights(path: str) -> dict:
    """Every quantized tensor of a GGUF file, decoded to float32."""
    from refquant.gguf import dequantize, file as gfile

    with gfile.read(path) as f:
        return {n: np.asarray(dequantize(np.asarray(t.raw), t.type), np.float32).reshape(t.shape)
                for n, t in f.tensors.items() if t.type != "F32"}


def _sensitivity(run: _Run, calib_windows: int):
    """Curvature (kept in curvature.pkl for a resumed run) and every tensor's options."""
    from refquant import allocate as A

    curv_path = run.file("curvature.pkl")
    if os.path.exists(curv_path):
        with open(curv_path, "rb") as fh:
            curv = pickle.load(fh)
    else:
        t0 = time.perf_counter()
        curv = A.curvature(run.model, run.calib, window=256, max_windows=calib_windows)
        run.out["curvature_seconds"] = time.perf_counter() - t0
        with open(curv_path, "wb") as fh:
            pickle.dump(curv, fh)
    if "options" not in run.out:
        t0 = time.perf_counter()
        options = A.sensitivities(run.model, curv)
        run.out["sensitivity_seconds"] = time.perf_counter() - t0
        run.out["options"] = {n: [o._asdict() for o in opts] for n, opts in options.items()}
        run.save()
    return curv, {n: [A.Option(**o) for o in opts] for n, opts in run.out["options"].items()}


def _source_grid(run: _Run, options: dict) -> None:
    """Which re-encodings of the (Q4_1-decoded) source are lossless, and each type's relative error
    Σ(W − Ŵ)² / ΣW² on one tensor of each row width: how far the source's grid favours a type."""
    from refquant import allocate as A

    lossless: dict = {}
    for opts in options.values():
        for o in opts:
            lossless[o.qtype] = lossless.get(o.qtype, 0) + int(o.lossless)
    run.out["lossless_pairs"] = lossless
    rel = {}
    for name in ("blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "token_embd.weight"):
        W = np.asarray(run.model.weights[name], np.float32)
        rel[name] = {o.qtype: float(np.sum((A.gguf_candidate(o.qtype).fake_quantize(W, None) - W) ** 2.0)
                                    / np.sum(W.astype(np.float64) ** 2)) for o in options[name]}
    run.out["reencode_rel_error"] = rel
    run.save()


def _proxy_quality(run: _Run, options: dict, measure_windows: int) -> None:
    """Measured single-tensor Δ on a spread of kinds and depths (two types each) against the proxies."""
    from refquant import allocate as A

    subset = [f"blk.{i}.{k}.weight" for i, k in ((0, "attn_v"), (2, "ffn_down"), (5, "attn_q"), (8, "ffn_up"),
                                                  (11, "attn_output"), (14, "ffn_gate"), (17, "attn_k"),
                                                  (20, "ffn_down"), (23, "attn_v"), (26, "ffn_up"), (29, "ffn_down"))]
    subset.append("token_embd.weight")
    pairs = [(n, t) for n in subset for t in (("Q3_K", "Q5_K") if n.endswith("ffn_down.weight") else ("Q4_0", "Q5_1"))]
    if "measured" not in run.out:
        t0 = time.perf_counter()
        meas = A.measure_deltas(run.model, run.calib, pairs, window=256, max_windows=measure_windows)
        run.out["measure_seconds"] = time.perf_counter() - t0
        run.out["measured"] = [[n, t, v] for (n, t), v in meas.items()]
    pred = {(n, o.qtype): o for n in options for o in options[n]}
    m = [v for _, _, v in run.out["measured"]]
    run.out["spearman_fisher"] = A.spearman([pred[n, t].predicted for n, t, _ in run.out["measured"]], m)
    run.out["spearman_imatrix"] = A.spearman([pred[n, t].imatrix_err for n, t, _ in run.out["measured"]], m)
    run.save()


def _head_to_head(run: _Run, src: str, options: dict, im_path: str | None = None) -> None:
    """llama.cpp's mixture and refquant's allocations at its bytes, as files, by both runtimes;
    with ``im_path``: both sides quantized with that importance matrix, at Q4_K_M's bytes."""
    from refquant import allocate as A
    from refquant.gguf import convert, recipes

    for ftype, with_im in [("Q4_K_M", True)] if im_path else [(f, False) for f in MIXTURES]:
        tag = "+imatrix" if with_im else ""
        theirs = run.file(f"llama-{ftype}{tag}.gguf")
        if not os.path.exists(theirs):
            convert.quantize_file(src, theirs, ftype, im_path if with_im else None)
        run.evaluate(f"llama.cpp {ftype}{tag}", theirs, _file_weights(theirs))
        mixture = recipes.tensor_types(run.model, ftype, has_imatrix=with_im)
        settings = {"": A.fair_options(options, mixture)}  # the report rows' setting
        if not with_im:
            settings[", no lossless type"] = A.fair_options(options)  # token_embd may not keep its Q8_0 either
        for setting, opts in settings.items():
            key = f"{ftype}{tag}{setting}"
            budget = A.mixture_bytes(run.model, ftype, opts)
            alloc = A.allocate(opts, budget)
            run.out[f"alloc {key}"] = {"types": alloc.types, "bytes": alloc.nbytes, "budget": budget,
                                       "predicted": alloc.predicted, "exact": alloc.exact, "seconds": alloc.seconds}
            run.save()
            ours = run.file(f"refquant-mix-{ftype}{tag}{setting.replace(', ', '-').replace(' ', '_')}.gguf")
            if not os.path.exists(ours):
                convert.quantize_file(src, ours, A.ftype_for(alloc), im_path if with_im else None,
                                      types_override=alloc.types)
            run.evaluate(f"mix @ {ftype}{tag} size{setting}", ours, _file_weights(ours))


def _sweep(run: _Run, options: dict) -> None:
    """llama.cpp mixtures and allocations (the report rows' setting) at their sizes, refquant's runtime."""
    from refquant import allocate as A
    from refquant.gguf import recipes
    from refquant.model import perplexity

    sweep = run.out.setdefault("sweep", {})
    for ftype in SWEEP:
        if ftype in sweep:
            continue
        types = recipes.tensor_types(run.model, ftype)
        opts = A.fair_options(options, types)
        budget = A.mixture_bytes(run.model, ftype, opts)
        if ftype in MIXTURES:
            sweep[ftype] = {"bytes": budget, "alloc_bytes": run.out[f"alloc {ftype}"]["bytes"],
                            "llama_ppl": run.evals[f"llama.cpp {ftype}"]["refquant_ppl"],
                            "mix_ppl": run.evals[f"mix @ {ftype} size"]["refquant_ppl"]}
            continue
        theirs = A.quantized_weights(run.model, {n: types[n] for n in opts})
        alloc = A.allocate(opts, budget)
        mine = A.quantized_weights(run.model, alloc.types)
        sweep[ftype] = {"bytes": budget, "alloc_bytes": alloc.nbytes,
                        "llama_ppl": perplexity(run.model.with_weights(theirs), run.eval_tokens, window=512).ppl,
                        "mix_ppl": perplexity(run.model.with_weights(mine), run.eval_tokens, window=512).ppl}
        run.save()
        print(ftype, sweep[ftype], flush=True)


def results(out_dir: str, n_eval_windows: int, calib_windows: int, measure_windows: int) -> None:
    from refquant import allocate as A
    from refquant import imatrix as I
    from refquant.gguf.imatrix import load_imatrix
    from refquant.model import data
    from refquant.testing.llama import write_float32_gguf

    run = _Run(out_dir, n_eval_windows)
    src = run.file("smollm2-f32.gguf")
    if not os.path.exists(src):  # the baseline: the shipped Q4_1 file decoded to float32, as a file
        write_float32_gguf({n: np.asarray(w) for n, w in run.model.weights.items()}, data.smollm2_path(), src)
    curv, options = _sensitivity(run, calib_windows)
    _source_grid(run, options)
    run.evaluate("float32", None, None)
    _head_to_head(run, src, options)
    _sweep(run, options)
    plot(run.out, run.file("pareto.png"))
    _proxy_quality(run, options, measure_windows)
    im_path = run.file("imatrix.gguf")
    if not os.path.exists(im_path):
        I.compute_imatrix(run.model, run.calib, chunk_size=512, max_chunks=8, datasets=[data.source()]).save(im_path)
    _head_to_head(run, src, A.sensitivities(run.model, curv, imatrix=load_imatrix(im_path)), im_path)


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
