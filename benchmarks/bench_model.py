"""SmolLM2-135M: refquant's NumPy forward pass against llama.cpp's prompt processing.

    python benchmarks/run.py model            # the runner's table (ms per call, ratio)
    python benchmarks/bench_model.py          # tokens/s and peak memory, each runtime alone

Both evaluate one 512-token window of the evaluation text from an empty context with all
logits returned (llama.cpp: ``Llama(n_ctx=512, n_batch=512, n_threads=2, logits_all=True)``;
refquant: float32 GEMMs through NumPy's BLAS, which uses both cores). Tokenization of the
whole evaluation split is timed too.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import Case  # noqa: E402

WINDOW = 512
THREADS = 2


def _setup():
    from refquant.model import data, load_model

    model = load_model()
    tokens = model.tokenize(data.evaluation_text())
    return model, tokens


def cases():
    from refquant.model import data
    from refquant.testing.llama import LlamaCpp

    model, tokens = _setup()
    oracle = LlamaCpp(n_ctx=WINDOW, n_threads=THREADS)
    window = tokens[:WINDOW]
    text = data.evaluation_text()
    yield Case("model", f"forward, {WINDOW} tokens, all logits", lambda: model.forward(window),
               "llama.cpp (Q4_1×Q8_1, 2 threads)", lambda: oracle.logits(window))
    yield Case("model", f"forward, 128 tokens, all logits", lambda: model.forward(window[:128]),
               "llama.cpp (Q4_1×Q8_1, 2 threads)", lambda: oracle.logits(window[:128]))
    yield Case("model", f"tokenize evaluation split ({len(text) // 1000} kB)", lambda: model.tokenize(text),
               "llama.cpp llama_tokenize", lambda: oracle.tokenize(text))


def _measure(runtime: str, repeat: int) -> None:
    """Run in a fresh process: best tokens/s over ``repeat`` windows and the peak RSS."""
    from refquant.model import data

    if runtime == "llama.cpp":  # the refquant model is never loaded here: it would count in the peak
        from refquant.testing.llama import LlamaCpp

        oracle = LlamaCpp(n_ctx=WINDOW, n_threads=THREADS)
        window = oracle.tokenize(data.evaluation_text())[:WINDOW]  # the same ids (tested)
        run = lambda: oracle.logits(window)  # noqa: E731
    else:
        model, tokens = _setup()
        window = tokens[:WINDOW]
        run = lambda: model.forward(window)  # noqa: E731
    run()
    best = min(_timed(run) for _ in range(repeat))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{runtime}\t{WINDOW / best:.0f}\t{best:.3f}\t{peak_mib:.0f}", flush=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    if len(sys.argv) == 3:
        _measure(sys.argv[1], int(sys.argv[2]))
        return 0
    from run import machine

    print(f"# {time.strftime('%Y-%m-%d %H:%M')} — {machine()}")
    print(f"| runtime | tokens/s ({WINDOW}-token window) | s per window | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    for runtime in ("refquant", "llama.cpp"):
        out = subprocess.run([sys.executable, __file__, runtime, "3"], capture_output=True, text=True, check=True)
        name, tps, sec, mib = out.stdout.strip().splitlines()[-1].split("\t")
        print(f"| {name} | {tps} | {sec} | {mib} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
