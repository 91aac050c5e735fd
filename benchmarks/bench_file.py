"""Whole-file quantize: ``refquant quantize`` against llama.cpp's ``llama_model_quantize``, each
in its own child process, at 1 thread and at every core, with each child's peak RSS.

    python benchmarks/run.py file --repeat 1
    REFQUANT_BENCH_FILE_TYPES=Q8_0,Q4_K_M REFQUANT_BENCH_FILE_MODELS=smollm2 python benchmarks/run.py file
    REFQUANT_BENCH_FILE_SYNTHETIC=1b:22 ...        # the whole TinyLlama-shaped 4.4 GB file (default 1b:4)

Models: SmolLM2-135M (the shipped Q4_1 file: requantized, both sides with
--allow-requantize; 576-wide rows, so most K-quant tensors fall back to legacy types) and a
synthetic F32 Llama with TinyLlama-1.1B's shapes and 4 blocks (307 M weights, 1.2 GB;
2048-wide rows, written by make_synthetic.py). Both sides pay a Python start-up (refquant's
CLI imports NumPy; llama-cpp-python loads libllama), about 0.3 s; a child's peak RSS is
GNU time's %M for that child alone. Every run's output is compared byte for
byte with llama.cpp's; a mismatch is printed as a note.
"""

from __future__ import annotations

import atexit
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile

from run import Case

HERE = os.path.dirname(os.path.abspath(__file__))
TYPES = os.environ.get("REFQUANT_BENCH_FILE_TYPES", "Q8_0,Q4_0,Q4_K_M,Q6_K,IQ4_XS").split(",")
MODELS = os.environ.get("REFQUANT_BENCH_FILE_MODELS", "smollm2,synthetic").split(",")
SYNTHETIC = os.environ.get("REFQUANT_BENCH_FILE_SYNTHETIC", "1b:4")  # preset:layers

LLAMA = r"""
import ctypes, sys, llama_cpp
src, dst, ftype, nthread = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype; p.nthread = nthread; p.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)))
"""

REFQUANT_CLI = os.path.join(os.path.dirname(sys.executable), "refquant")  # the venv's console script
PEAK_RSS_KB: dict[str, int] = {}  # case label -> the last run's peak RSS, for the notes


TIME = "/usr/bin/time"  # GNU time: %M is its child's peak RSS in KiB


def run_child(args: list[str], label: str) -> None:
    """Run a child to completion; its own peak RSS (KiB) is kept under ``label``.

    Measured by /usr/bin/time, a small process that forks the child: Linux's ru_maxrss of a
    child counts the pages it had between fork and exec, so a child forked by this (large)
    Python process would report at least this process's size (os.wait4's figure did).
    """
    with tempfile.NamedTemporaryFile("r") as rss:
        done = subprocess.run([TIME, "-f", "%M", "-o", rss.name, *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise RuntimeError(f"{label}: exit {done.returncode}: {done.stderr[-1000:]}")
        PEAK_RSS_KB[label] = int(rss.read().split()[-1])


def _models(folder: str):
    from refquant._data import smollm2_path

    if "smollm2" in MODELS:
        yield "SmolLM2-135M Q4_1", smollm2_path()
    if "synthetic" in MODELS:
        preset, _, layers = SYNTHETIC.partition(":")
        path = os.path.join(folder, f"synthetic-{preset}-{layers or 'all'}.gguf")
        cmd = [sys.executable, os.path.join(HERE, "make_synthetic.py"), path, "--preset", preset]
        subprocess.run(cmd + (["--layers", layers] if layers else []), check=True, stdout=subprocess.DEVNULL)
        yield f"synthetic {preset} x{layers or 'all'} F32", path


def cases():
    from refquant.gguf import recipes

    folder = tempfile.mkdtemp(prefix="refquant-bench-file-")
    atexit.register(shutil.rmtree, folder, True)
    cores = os.cpu_count() or 1
    for model, src in _models(folder):
        for ftype in TYPES:
            for threads in sorted({1, cores}):
                ours, theirs = (os.path.join(folder, f"{side}-{ftype}-{threads}.gguf") for side in ("rq", "ll"))
                name = f"{model} -> {ftype}, {threads} thread{'s' if threads > 1 else ''}"
                rq_args = [REFQUANT_CLI, "quantize", src, ours, "--type", ftype,
                           "--threads", str(threads), "--no-progress"]
                ll_args = [sys.executable, "-c", LLAMA, src, theirs, str(recipes.FTYPES[ftype][0]), str(threads)]

                def note(name=name, ours=ours, theirs=theirs):
                    same = filecmp.cmp(ours, theirs, shallow=False)
                    return (f"{name}: peak RSS refquant {PEAK_RSS_KB[name + ' rq'] / 1024:.0f} MiB, "
                            f"llama.cpp {PEAK_RSS_KB[name + ' ll'] / 1024:.0f} MiB; "
                            f"bytes {'identical' if same else 'DIFFER'}")

                yield Case("file", name, lambda a=rq_args, n=name: run_child(a, n + " rq"),
                           "llama_model_quantize", lambda a=ll_args, n=name: run_child(a, n + " ll"), note=note)
