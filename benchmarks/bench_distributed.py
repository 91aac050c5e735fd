"""Dask with N worker processes against the threaded single process, on SmolLM2-135M.

    python benchmarks/bench_distributed.py [--workers 2] [--repeat 2] [--types Q8_0 Q4_K_M]

The anchor is ``quantize_file(threads=N)`` in this process; the same files are made on a
LocalCluster of N workers (one thread each), interleaved with the anchor (threads, dask,
threads, dask ...) so both see the same machine load; best of ``--repeat`` each, and the
bytes are checked equal. Cluster start-up is timed apart (paid once per session). The
per-tensor figures that the 70B plan in RESULTS.md scales from are printed too: encode
seconds per million weights, output bytes per weight, and the workers' resident memory.
Needs the dask extra (pip install refquant[dask]).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from refquant import distributed as rd
from refquant._data import smollm2_path
from refquant.gguf import convert, file


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _worker_rss(client) -> list[float]:
    import psutil

    return sorted(v / 2**20 for v in client.run(lambda: psutil.Process().memory_info().rss).values())


ROW_70B = 8192        # Llama-3-70B's hidden size: a row of most of its matrices
PIECE_ROWS = 128      # convert.CHUNK_WEIGHTS // 8192: one piece of 2^20 weights


def _piece_figures(client, tmp: str, ftype_types: list[str]) -> None:
    """One 70B-shaped piece (128 x 8192 F32) per type, on a worker: encode time in the task,
    round trip (submit -> bytes on the client), output bytes."""
    import numpy as np

    src = os.path.join(tmp, "rows8192.gguf")
    w = (np.random.default_rng(0).standard_normal((PIECE_ROWS, ROW_70B)) * 0.02).astype(np.float32)
    file.write(src, {"general.architecture": "llama"}, [("blk.0.ffn_up.weight", "F32", w.shape, w.view(np.uint8))])
    size = os.stat(src).st_size

    def in_task(qtype: str) -> float:
        t0 = time.perf_counter()
        rd.encode_piece(src, size, "blk.0.ffn_up.weight", qtype, 0, PIECE_ROWS, None)
        return time.perf_counter() - t0

    for qtype in ftype_types:
        client.submit(in_task, qtype, pure=False).result()  # warm: the file opened, the code imported
        task = min(client.submit(in_task, qtype, pure=False).result() for _ in range(3))
        t0 = time.perf_counter()
        out = client.submit(rd.encode_piece, src, size, "blk.0.ffn_up.weight", qtype, 0, PIECE_ROWS, None,
                            pure=False).result()
        trip = time.perf_counter() - t0
        print(f"piece 128x8192 F32 -> {qtype}: encode {task * 1e3:.0f} ms in the task, round trip "
              f"{trip * 1e3:.0f} ms, {out.nbytes:,} bytes out (in: {w.nbytes:,})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_K_M"])
    args = ap.parse_args()
    src = smollm2_path()
    with file.read(src, stream=True) as f:
        n_weights = sum(t.n_elements for t in f.tensors.values())
        n_tensors = len(f.tensors)
    print(f"load average {os.getloadavg()}; {src}: {n_tensors} tensors, {n_weights:,} weights")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with rd.connect(workers=args.workers) as client:
            print(f"LocalCluster of {args.workers} workers up in {time.perf_counter() - start:.2f} s")
            _piece_figures(client, tmp, ["Q8_0", "Q4_K"])
            for ftype in args.types:
                a, b = os.path.join(tmp, "threads.gguf"), os.path.join(tmp, "dask.gguf")
                threads, dask = [], []
                for _ in range(args.repeat):
                    threads.append(_timed(lambda: convert.quantize_file(src, a, ftype, threads=args.workers)))
                    dask.append(_timed(lambda: convert.quantize_file(src, b, ftype, executor=rd.executor(client))))
                same = open(a, "rb").read() == open(b, "rb").read()
                out_bytes = os.path.getsize(b)
                t, d = min(threads), min(dask)
                print(f"{ftype}: threads={args.workers} {t:.2f} s, dask workers={args.workers} {d:.2f} s, "
                      f"threads/dask = {t / d:.2f}; bytes equal: {same}; "
                      f"{d / n_weights * 1e6 * args.workers * 1e3:.1f} worker-ms per M weights; "
                      f"{8 * out_bytes / n_weights:.2f} bits/weight out; worker RSS MiB {_worker_rss(client)}")
                if not same:
                    raise SystemExit(f"{ftype}: dask's file differs from the threaded one")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
