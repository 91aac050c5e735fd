"""refquant on a CUDA GPU: the same code paths on CuPy, checked against NumPy and timed.

    python benchmarks/gpu.py [--size 4096] [--repeat 5] [--out results.md]

Needs CuPy and a CUDA device; uses torch (CUDA) and bitsandbytes (CUDA) as anchors when
they are installed. For every case it

1. runs refquant's function on a NumPy array and on the same array moved to CuPy, and
   compares the results (bit-exact where the arithmetic is elementwise; for GPTQ, whose
   matrix products cuBLAS sums in another order than the CPU BLAS, the agreement of the
   codes and the largest difference of the dequantized weights);
2. times NumPy (CPU), CuPy (GPU), and the anchor (torch CUDA / bitsandbytes CUDA), with a
   device synchronisation inside every timed call.

The GPU-marked tests (``pytest -m gpu``) are the assertions; this script prints the figures
recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback

import numpy as np


def _sync():
    import cupy

    cupy.cuda.Device().synchronize()


def best_time(fn, repeat: int, gpu: bool) -> float:
    fn()
    if gpu:
        _sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if gpu:
            _sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def _torch_sync():
    import torch

    torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="rows = cols of the test matrix")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    args = ap.parse_args(argv)

    import cupy as cp
    from array_api_compat import array_namespace

    import refquant.gguf as G
    from refquant import nf4, uniform as U
    from refquant._backend import to_numpy

    n = args.size
    rng = np.random.default_rng(0)
    W = (rng.standard_t(4, size=(n, n)) * 0.02).astype(np.float32)
    Wg = cp.asarray(W)
    xpc = array_namespace(Wg)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    lines = [f"# {time.strftime('%Y-%m-%d')} — {name}; host {platform.processor() or platform.machine()}, "
             f"CuPy {cp.__version__}, NumPy {np.__version__}",
             "",
             "| case | parity (CuPy vs NumPy) | NumPy CPU (ms) | CuPy GPU (ms) | anchor | anchor (ms) | NumPy/CuPy | anchor/CuPy |",
             "|---|---|---:|---:|---|---:|---:|---:|"]

    def row(case, parity, f_np, f_cp, anchor_name=None, f_anchor=None, anchor_sync=None):
        t_np = best_time(f_np, max(1, args.repeat // 2), gpu=False)
        t_cp = best_time(f_cp, args.repeat, gpu=True)
        t_an = None
        if f_anchor is not None:
            def timed():
                f_anchor()
                anchor_sync()
            t_an = best_time(timed, args.repeat, gpu=False)
        an = f"{t_an*1e3:.2f}" if t_an else "—"
        ratio_an = f"{t_an/t_cp:.2f}" if t_an else "—"
        line = (f"| {case} | {parity} | {t_np*1e3:.1f} | {t_cp*1e3:.2f} | {anchor_name or '—'} | {an} | "
                f"{t_np/t_cp:.1f} | {ratio_an} |")
        print(line, flush=True)
        lines.append(line)

    def exact(a, b) -> str:
        a, b = to_numpy(a), to_numpy(b)
        same = a.shape == b.shape and np.array_equal(a.view(np.uint8) if a.dtype == np.uint8 else a, b, equal_nan=True)
        if same:
            return f"bit-exact ({a.size:,} values)"
        diff = int(np.sum(a != b)) if a.shape == b.shape else -1
        return f"DIFFERS ({diff:,} of {a.size:,})"

    try:
        import torch

        have_torch = torch.cuda.is_available()
    except ImportError:
        have_torch = False
    try:
        import bitsandbytes.functional as bnbF

        have_bnb = have_torch
    except Exception:  # noqa: BLE001 - any import problem means no bnb anchor
        have_bnb = False

    cases = []

    # --- uniform: per-channel INT8 fake-quant (torch convention), group INT4 quantize ---------
    def uniform_cases():
        f = lambda x: U.fake_quantize(x, 8, symmetric=True, granularity="channel", axis=0, convention="torch")  # noqa: E731
        parity = exact(f(W), f(Wg))
        anchor = None
        if have_torch:
            Wt = torch.from_numpy(W).cuda()

            def anchor():
                obs = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                                                     qscheme=torch.per_channel_symmetric).cuda()
                obs(Wt)
                s, z = obs.calculate_qparams()
                return torch.fake_quantize_per_channel_affine(Wt, s, z.int(), 0, -128, 127)

            ref = to_numpy(anchor().cpu())
            parity += "; vs torch CUDA: " + exact(f(Wg), ref)
        row("uniform INT8 per-channel fake-quant", parity, lambda: f(W), lambda: f(Wg),
            "torch CUDA observer+fake_quant" if have_torch else None, anchor, _torch_sync)

        g = lambda x: U.dequantize(U.quantize(x, 4, symmetric=False, granularity="group", group_size=128, signed=False))  # noqa: E731
        row("uniform INT4 G=128 quantize+dequantize", exact(g(W), g(Wg)), lambda: g(W), lambda: g(Wg))

    cases.append(("uniform", uniform_cases))

    # --- NF4 (bitsandbytes layout) --------------------------------------------------------------
    def nf4_cases():
        for dq in (False, True):
            q_np, st_np = nf4.quantize_4bit(W, blocksize=64, quant_type="nf4", double_quant=dq)
            q_cp, st_cp = nf4.quantize_4bit(Wg, blocksize=64, quant_type="nf4", double_quant=dq)
            parity = "packed " + exact(q_np, q_cp)
            anchor = None
            if have_bnb:
                Wt = torch.from_numpy(W).cuda()
                anchor = lambda: bnbF.quantize_4bit(Wt, blocksize=64, quant_type="nf4", compress_statistics=dq)  # noqa: E731
                try:
                    q_b, _ = anchor()
                    parity += "; vs bitsandbytes CUDA " + exact(q_cp, q_b.cpu().numpy())
                except Exception as e:  # noqa: BLE001
                    parity += f"; bitsandbytes CUDA failed: {type(e).__name__}"
                    anchor = None
            row(f"NF4 quantize B=64{' +DQ' if dq else ''}", parity,
                lambda: nf4.quantize_4bit(W, 64, "nf4", dq), lambda: nf4.quantize_4bit(Wg, 64, "nf4", dq),
                "bitsandbytes CUDA" if anchor else None, anchor, _torch_sync)
            parity = exact(nf4.dequantize_4bit(q_np, st_np), nf4.dequantize_4bit(q_cp, st_cp))
            anchor = None
            if have_bnb:
                try:
                    qb, sb = bnbF.quantize_4bit(torch.from_numpy(W).cuda(), blocksize=64, quant_type="nf4",
                                                compress_statistics=dq)
                    anchor = lambda: bnbF.dequantize_4bit(qb, sb)  # noqa: E731
                    parity += "; vs bitsandbytes CUDA " + exact(nf4.dequantize_4bit(q_cp, st_cp), anchor().cpu().numpy())
                except Exception as e:  # noqa: BLE001
                    parity += f"; bitsandbytes CUDA failed: {type(e).__name__}"
                    anchor = None
            row(f"NF4 dequantize B=64{' +DQ' if dq else ''}", parity,
                lambda: nf4.dequantize_4bit(q_np, st_np), lambda: nf4.dequantize_4bit(q_cp, st_cp),
                "bitsandbytes CUDA" if anchor else None, anchor, _torch_sync)

    cases.append(("nf4", nf4_cases))

    # --- GGUF: decode every type on the GPU; quantize where the type's path is array-API ----------
    def gguf_cases():
        for t in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"):
            raw = G.quantize(W, t)
            raw_np = to_numpy(raw)
            raw_cp = cp.asarray(raw_np)
            parity = exact(G.dequantize(raw_np, t), G.dequantize(raw_cp, t))
            row(f"GGUF {t} dequantize", parity, lambda: G.dequantize(raw_np, t), lambda: G.dequantize(raw_cp, t))
        for t in ("Q8_0", "Q4_0", "Q4_K", "Q6_K"):
            try:
                parity = exact(G.quantize(W, t), G.quantize(Wg, t))
            except Exception as e:  # noqa: BLE001
                print(f"GGUF {t} quantize on CuPy: {type(e).__name__}: {e}", flush=True)
                continue
            row(f"GGUF {t} quantize", parity, lambda: G.quantize(W, t), lambda: G.quantize(Wg, t))

    cases.append(("gguf", gguf_cases))

    # --- GPTQ on one layer ------------------------------------------------------------------------
    def gptq_cases():
        from refquant import gptq

        m = min(n, 2048)
        Wl = W[:m, :m].copy()
        X = (rng.standard_normal((4096, m)) @ (np.eye(m) + 0.1 * rng.standard_normal((m, m)) / np.sqrt(m))).astype(np.float32)
        H = (2.0 / X.shape[0]) * (X.T @ X)
        H = H.astype(np.float32)
        r_np = gptq.gptq_quantize(Wl, H, bits=4, group_size=128)
        r_cp = gptq.gptq_quantize(cp.asarray(Wl), cp.asarray(H), bits=4, group_size=128)
        q_np, q_cp = to_numpy(r_np.q), to_numpy(r_cp.q)
        agree = float(np.mean(q_np == q_cp))
        dmax = float(np.max(np.abs(to_numpy(r_np.W_hat) - to_numpy(r_cp.W_hat))))
        parity = f"codes agree {agree:.4%}, max |ΔŴ| {dmax:.2e} (cuBLAS vs CPU BLAS summation order)"
        row(f"GPTQ 4-bit G=128, {m}x{m} layer", parity,
            lambda: gptq.gptq_quantize(Wl, H, bits=4, group_size=128),
            lambda: gptq.gptq_quantize(cp.asarray(Wl), cp.asarray(H), bits=4, group_size=128))

    cases.append(("gptq", gptq_cases))

    for fam, fn in cases:
        try:
            fn()
        except Exception:  # noqa: BLE001 - report and go on with the other families
            print(f"[{fam}] failed:", file=sys.stderr)
            traceback.print_exc()
            lines.append(f"| {fam} | FAILED (see log) | | | | | | |")

    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
