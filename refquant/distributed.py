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
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ._errors import require
from .gguf import convert, file
from .gguf.types import row_bytes

__all__ = ["connect", "executor", "encode_piece", "DaskWorkers", "INSTALL", "WINDOW_BYTES", "CONNECT_TIMEOUT"]

INSTALL = "pip install refquant[dask]"
WINDOW_BYTES = 64 << 20  # output bytes in flight (submitted, not yet written): the client's memory bound
CONNECT_TIMEOUT = 10     # seconds to wait for a scheduler at ``address``
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
        # no dashboard; the scheduler's own HTTP endpoint (health, metrics) on a free port, not 8787
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
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
