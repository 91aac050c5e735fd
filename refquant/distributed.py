"""Quantize on a Dask cluster, with the same bytes as one process.

    with refquant.distributed.connect(workers=2) as client:          # or address="tcp://host:8786"
        quantize_file(src, dst, "Q4_K_M", executor=refquant.distributed.executor(client))

``quantize_file`` cuts every tensor into pieces of whole rows (``refquant.gguf.convert``); here
each piece is one Dask task:

    client                                   worker (any process that can read ``src`` by path)
    ──────                                   ──────
    submit (src, tensor, qtype, rows) ─────► read(src, stream=True), once per process
       ... at most ``window_bytes`` of       rows [r0, r1) mapped -> decode -> quantize
       output in flight                 ◄─── the piece's bytes: (r1 - r0, row_bytes) uint8
    write pieces in file order (atomically, ``refquant.gguf.file.write``)

Only names and row ranges travel to the workers (and the piece's imatrix vector, n float32);
each piece's output bytes travel back, once. A ggml row is quantized alone, so the bytes depend
neither on which worker ran a piece nor on the split: the file equals the threaded one.

A worker that dies (killed, out of memory) loses its running task; the scheduler gives the task
to another worker (``distributed.scheduler.allowed-failures`` times, 3 by default, then the task
fails with ``KilledWorker``). A failure reaches the writer as an exception, so the output is
either complete or not written at all, as with threads.

Dask is an optional extra: ``pip install refquant[dask]``.
Ref: dask.distributed ``Client.submit``, ``Future.result``, ``LocalCluster``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from ._errors import require
from .gguf import convert, file
from .gguf.types import row_bytes

__all__ = ["connect", "executor", "encode_piece", "DaskWorkers", "gptq_quantize_model", "GramSum", "compute_imatrix", "INSTALL", "WINDOW_BYTES", "CONNECT_TIMEOUT"]

INSTALL = "pip install refquant[dask]"
WINDOW_BYTES = 64 << 20  # output bytes in flight (submitted, not yet written): the client's memory bound
CONNECT_TIMEOUT = 10     # seconds to wait for a scheduler at ``address``
# the environment of a local cluster's worker processes: Dask's default less MALLOC_TRIM_THRESHOLD_=65536,
# which hands every freed temporary back to the OS so that the next is page-faulted in anew (measured:
# one Q5_0 piece 2.7x slower in a process with it); one BLAS thread each, as Dask sets them
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_OPEN_FILES = 4          # input files a worker process keeps open (one per quantize run, usually)


def _distributed() -> Any:
    require("distributed", INSTALL)
    import distributed

    return distributed


@contextlib.contextmanager
def connect(address: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: on the scheduler at ``address``, or on a LocalCluster of
    ``workers`` processes (one thread each, no dashboard) that lives as long as the block.

    Raises MissingDependency without dask, ValueError for a bad argument, ConnectionError when
    no scheduler answers at ``address`` within CONNECT_TIMEOUT seconds.
    """
    if (address is None) == (workers is None):
        raise ValueError("address, workers: give exactly one (a scheduler's address, or a number of local workers)")
    if workers is not None:
        workers = convert._positive(workers, "workers")
    elif not isinstance(address, str) or not address:
        raise TypeError(f"address: expected a scheduler address such as 'tcp://host:8786', got {address!r}")
    distributed = _distributed()
    if workers is not None:
        import dask

        # no dashboard; the scheduler's own HTTP endpoint (health, metrics) on a free port, not 8787
        with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENV}), distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                      scheduler_kwargs={"dashboard_address": ":0"}) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"address: no Dask scheduler answered at {address!r} "
                              f"within {CONNECT_TIMEOUT} s ({type(e).__name__})") from None
    except ValueError as e:  # an address Dask cannot parse (an unknown protocol ...)
        raise ValueError(f"address: {address!r} is not a Dask scheduler address ({e})") from None
    with client:
        yield client


# --------------------------------------------------------------------------- on the worker

_files: dict[tuple[str, int, int], Any] = {}  # this process's open inputs: (path, size, mtime_ns) -> GGUFFile


def _open(path: str, size: int) -> Any:
    """``path`` read with stream=True, once per process and file version; ``size`` is the file's
    size on the client: a different file at the same path on this machine is refused."""
    st = os.stat(path)
    if st.st_size != size:
        raise ValueError(f"src: {path!r} is {st.st_size} bytes on this worker, {size} on the client; "
                         "every worker must read the same file")
    key = (path, st.st_size, st.st_mtime_ns)  # content's identity: a rewritten file is opened anew
    if key not in _files:
        while len(_files) >= _OPEN_FILES:
            _files.pop(next(iter(_files))).close()
        _files[key] = file.read(path, stream=True)
    return _files[key]


def encode_piece(path: str, size: int, name: str, qtype: str, start: int, stop: int,
                 imatrix: np.ndarray | None) -> np.ndarray:
    """Rows [start, stop) of tensor ``name`` of the file at ``path``, as ``qtype``: uint8 (rows, row_bytes)."""
    f = _open(path, size)
    return np.array(convert._make_piece(convert._Piece(f.tensors[name], qtype, start, stop, imatrix)))  # a copy: the map closes


# --------------------------------------------------------------------------- on the client


class DaskWorkers:
    """``quantize_file``'s pool on a Dask cluster: ``ordered(pieces)`` yields each piece's bytes in
    order, with at most ``window_bytes`` of output submitted and not yet consumed (at least one piece).

    ``encode`` is the task run on a worker (``encode_piece``'s signature); tests wrap it.
    """

    def __init__(self, client: Any, path: str, window_bytes: int = WINDOW_BYTES,
                 encode: Callable[..., np.ndarray] = encode_piece) -> None:
        self.client = client
        self.path = os.path.abspath(path)
        self.size = os.stat(self.path).st_size
        self.window_bytes = convert._positive(window_bytes, "window_bytes")
        self.encode = encode
        self.futures: deque = deque()  # (future, piece, nbytes), in file order

    def _submit(self, piece: convert._Piece) -> None:
        t = piece.tensor
        nbytes = (piece.stop - piece.start) * row_bytes(piece.qtype, t.shape[-1])
        future = self.client.submit(self.encode, self.path, self.size, t.name, piece.qtype, piece.start, piece.stop,
                                    piece.imatrix, pure=False)  # pure=False: a fresh key, never a cached result
        self.futures.append((future, piece, nbytes))

    def ordered(self, pieces: Iterable[convert._Piece]) -> Iterator[np.ndarray]:
        todo = iter(pieces)
        in_flight = 0
        while True:
            while not self.futures or in_flight < self.window_bytes:  # fill the window
                piece = next(todo, None)
                if piece is None:
                    break
                self._submit(piece)
                in_flight += self.futures[-1][2]
            if not self.futures:
                return
            future, piece, nbytes = self.futures.popleft()
            result = future.result()
            future.release()
            in_flight -= nbytes
            expected = (piece.stop - piece.start, nbytes // (piece.stop - piece.start))
            if result.dtype != np.uint8 or result.shape != expected:
                raise ValueError(f"{piece.tensor.name}: a worker returned {result.dtype} {result.shape}, "
                                 f"expected uint8 {expected}")
            yield result

    def __enter__(self) -> "DaskWorkers":
        return self

    def __exit__(self, *exc) -> None:
        futures = [f for f, _, _ in self.futures]
        self.futures.clear()
        if futures:  # an error or an early stop: nothing left running for this file
            self.client.cancel(futures)


def executor(client: Any, window_bytes: int = WINDOW_BYTES,
             encode: Callable[..., np.ndarray] = encode_piece) -> Callable[[str], DaskWorkers]:
    """``quantize_file(..., executor=executor(client))``: pieces run as tasks on ``client``'s cluster."""
    return functools.partial(DaskWorkers, client, window_bytes=window_bytes, encode=encode)


# --------------------------------------------------------------------------- model-level GPTQ
#
# Data parallel over calibration windows, as ``refquant.model.calibration.walk_blocks`` walks them:
#
#     windows cut into shards 0..k-1; shard j's hidden states h live on a worker (never sent back)
#     for block i, stage (q,k,v) (o) (gate,up) (down):
#         on each shard:  S_j = Σ_{w in shard j} X_wᵀ X_w  (float64, window order),  n_j rows
#         on the client:  H = 2 (S_0 + S_1 + ... + S_{k-1}) / n   (shard order; then float32)
#                         U per shared input; each linear's column solve split by output rows
#                         (rows are independent given H and U) across the workers
#     on each shard: h = block_i(h) with its new weights
#
# Only weights go out (a block's replaced ones) and (in, in) sums come back. The serial reference
# (client=None) runs the same functions on the same shards in this process, so H is the same
# float64 sum in the same order and the codes are the same bit for bit.

class GramSum:
    """One shard's Σ XᵀX in float64 (window order) and its rows n: the Hessian is 2 Σ_shards S / Σ n."""

    def __init__(self, x: Any) -> None:
        self.S = None  # (in, in) float64
        self.n = 0

    def add(self, x: Any) -> None:
        x64 = np.asarray(_to_numpy(x), dtype=np.float64)  # (T, in)
        gram = x64.T @ x64                                 # (in, in)
        self.S = gram if self.S is None else self.S + gram
        self.n += int(x64.shape[0])


class _Hessian(NamedTuple):
    H: Any  # what ``blockwise._GPTQ`` reads of an accumulator


def _to_numpy(x: Any) -> np.ndarray:
    from ._backend import to_numpy

    return to_numpy(x)


_models: dict[tuple[str, int, int], Any] = {}  # this process's models: (path, size, mtime_ns) -> LlamaModel


def _model(path: str) -> Any:
    from .model import load_model

    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _models:
        _models.clear()  # one model per process at a time
        _models[key] = load_model(path)
    return _models[key]


def _shard_embed(path: str, windows: list[np.ndarray]) -> list[Any]:
    m = _model(path)
    return [m.embed(w) for w in windows]  # (T, d) each


def _shard_sums(path: str, i: int, weights: dict[str, Any], stage: tuple[str, ...], hs: list[Any]) -> dict:
    """{shared input: (S (in, in) float64, n)} of block i's stage on one shard's hidden states."""
    from .model.calibration import capture

    accs = capture(_model(path).with_weights(weights), i, hs, stage, GramSum)
    return {shared: (acc.S, acc.n) for shared, acc in accs.items()}


def _shard_forward(path: str, i: int, weights: dict[str, Any], hs: list[Any]) -> list[Any]:
    m = _model(path).with_weights(weights)
    return [m.block(i, h) for h in hs]  # block i+1's inputs


class _Done:
    """A finished 'future' of the in-process runner."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class _InProcess:
    """``Client.submit`` run here, at once: the serial reference of the same shards."""

    def submit(self, fn: Callable, *args: Any, **kw: Any) -> _Done:
        return _Done(fn(*(a.value if isinstance(a, _Done) else a for a in args), **kw))



def _send(runner: Any, value: Any) -> Any:
    """``value`` on every worker once, as one future of its own (a fresh key: a content-hashed key
    shared by two sends is forgotten when the first is released, under the second's tasks)."""
    if isinstance(runner, _InProcess):
        return value
    return runner.scatter([value], broadcast=True, hash=False)[0]


def _row_solver(runner: Any, n_parts: int) -> Callable[..., Any]:
    """gptq_quantize(W, H, ...) with W's output rows cut into n_parts tasks, results stacked."""
    from . import gptq

    def solve(W: Any, H: Any, *args: Any, **kw: Any) -> Any:
        rows = int(W.shape[0])
        if n_parts == 1 or rows < n_parts:
            return gptq.gptq_quantize(W, H, *args, **kw)
        H_f, U_f = _send(runner, H), _send(runner, kw.pop("U"))
        W = _to_numpy(W)
        cuts = np.linspace(0, rows, n_parts + 1).astype(int)  # n_parts + 1 row bounds
        futures = [runner.submit(gptq.gptq_quantize, W[a:b], H_f, *args, U=U_f, **kw) for a, b in zip(cuts, cuts[1:])]
        parts = [f.result() for f in futures]
        stack = functools.partial(np.concatenate, axis=0)
        # loss: Σ over rows, here part by part (the one field a split can change: a float sum regrouped)
        return gptq.GPTQResult(q=stack([p.q for p in parts]), s=stack([p.s for p in parts]),
                               z=stack([p.z for p in parts]), g_idx=parts[0].g_idx, perm=parts[0].perm,
                               W_hat=stack([p.W_hat for p in parts]), loss=math.fsum(p.loss for p in parts))
    return solve


def gptq_quantize_model(path: str, calib_tokens: Any, client: Any = None, n_shards: int = 2, bits: int = 4,
                        group_size: int | None = 128, act_order: bool = False, symmetric: bool = False,
                        window: int = 512, blocks: Iterable[int] | None = None, split_rows: bool = True) -> Any:
    """Block-sequential GPTQ of the model at ``path`` with its Hessians summed on the cluster.

    ``blockwise.gptq_quantize_model``'s walk (true-sequential stages, one U per shared input,
    propagate the quantized block), with the Hessian of each input the float64 sum of
    ``n_shards`` shards' XᵀX (the section comment above). client=None runs every task in this
    process: the serial reference, with the same codes. split_rows: each linear's solve as one task
    per worker, by output rows (else on the client). -> ``blockwise.BlockwiseResult``.

    Identical codes need one BLAS thread in the client too (OPENBLAS_NUM_THREADS=1, as Dask sets in
    its workers): a threaded BLAS groups the forward pass's float32 sums and H's Cholesky differently.
    The Hessian is a float64 sum of shards, not ``gptq.Hessian``'s float32 running mean, so the codes
    are not ``blockwise.gptq_quantize_model``'s (the same method; other last bits of H).
    GPTAQ, act-group-aware order and the MSE range search are not offered here.
    """
    from .blockwise import STAGES, BlockwiseResult, _check_blocks, _GPTQ
    from .gptq import BLOCKSIZE, PERCDAMP
    from .model.calibration import SHARED_INPUTS

    path = os.path.abspath(os.fspath(path))
    n_shards = convert._positive(n_shards, "n_shards")
    runner = _InProcess() if client is None else client
    model = _model(path)
    blocks = _check_blocks(model, blocks)
    tokens = np.asarray(calib_tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError(f"calib_tokens: need at least 2 calibration tokens, got {len(tokens)}")
    window = min(convert._positive(window, "window"), len(tokens))  # embedded_windows' cut: a remainder dropped
    n_windows = len(tokens) // window
    wins = [tokens[k * window:(k + 1) * window] for k in range(n_windows)]
    if n_shards > n_windows:
        raise ValueError(f"n_shards: {n_shards} shards of {n_windows} windows; expected at most {n_windows}")
    cuts = np.linspace(0, n_windows, n_shards + 1).astype(int)      # shard j: windows cuts[j]:cuts[j+1]
    shards = [runner.submit(_shard_embed, path, wins[a:b]) for a, b in zip(cuts, cuts[1:])]
    n_workers = 1 if client is None or not split_rows else max(1, len(client.scheduler_info()["workers"]))
    method = _GPTQ(bits, group_size, act_order, symmetric, False, BLOCKSIZE, PERCDAMP, STAGES,
                   solve=_row_solver(runner, n_workers))
    current, replaced = model, {}
    walked = 0
    for i in blocks:
        for j in range(walked, i):  # blocks left out run as they are
            shards = [runner.submit(_shard_forward, path, j, {}, h) for h in shards]
        walked, block_new = i + 1, {}
        for stage in method.stages:
            sent = _send(runner, block_new)
            sums = [runner.submit(_shard_sums, path, i, sent, stage, h).result() for h in shards]
            inputs = {}
            for shared in {SHARED_INPUTS[k] for k in stage}:
                S = sums[0][shared][0]
                for part in sums[1:]:  # shard order, float64: the serial reduction exactly
                    S = S + part[shared][0]
                n = sum(part[shared][1] for part in sums)
                inputs[shared] = _Hessian(np.asarray(2.0 * S / n, dtype=np.float32))  # (in, in) as gptq.Hessian's dtype
            new = method.quantize(current, i, stage, inputs, None)
            current = current.with_weights(new)
            block_new.update(new)
            replaced.update(new)
        if i != blocks[-1]:  # the next block's inputs
            sent = _send(runner, block_new)
            shards = [runner.submit(_shard_forward, path, i, sent, h) for h in shards]
    return BlockwiseResult(weights=replaced, details=method.layers)



# --------------------------------------------------------------------------- importance matrix

def _chunk_statistics(path: str, chunk: np.ndarray, process_output: bool) -> dict:
    from .imatrix import chunk_statistics

    return chunk_statistics(_model(path), chunk, process_output)


def compute_imatrix(path: str, tokens: Any, client: Any, chunk_size: int = 512, max_chunks: int | None = None,
                    process_output: bool = False, datasets: Iterable[str] = ()) -> Any:
    """``refquant.imatrix.compute_imatrix`` of the model at ``path`` with one task per chunk.

    Workers return each chunk's Σx² per column (``imatrix.chunk_statistics``); the client adds
    them in chunk order (``imatrix.add_chunk``), as the serial loop does, so the float64 sums are
    the serial ones (with one BLAS thread in both, as for GPTQ above). At most 2 chunks per worker
    are in flight. -> ``imatrix.Imatrix``.
    """
    from .imatrix import Imatrix, add_chunk
    from .model.ppl import windows

    path = os.path.abspath(os.fspath(path))
    chunks = windows(np.asarray(tokens, dtype=np.int64), chunk_size, max_chunks)  # (n_chunks, chunk_size)
    ahead = 2 * max(1, len(client.scheduler_info()["workers"]))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    futures: deque = deque()
    todo = iter(chunks)
    while True:
        while len(futures) < ahead:
            chunk = next(todo, None)
            if chunk is None:
                break
            futures.append(client.submit(_chunk_statistics, path, np.array(chunk), process_output, pure=False))
        if not futures:
            break
        add_chunk(sums, counts, futures.popleft().result())  # chunk order
    return Imatrix(sums, counts, len(chunks), chunk_size, list(datasets))
