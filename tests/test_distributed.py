"""Quantizing on a Dask cluster: the file is the single process's, byte for byte.

The oracle is ``quantize_file`` with one thread (itself checked against llama.cpp's quantizer in
tests/test_threads.py). Each run here uses a ``distributed.LocalCluster`` of worker processes that
read the input by path, as a real cluster's would; two clusters (1 and 2 workers) are started once
for the module. Pieces of one row and a window of one piece are the splits most likely to expose an
ordering bug; a worker that kills itself mid-run checks Dask's retry; a task that always fails
checks that nothing is left behind.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import distributed  # noqa: F401  the extra must be installed where these tests run
import numpy as np
import pytest

from refquant import cli
from refquant import distributed as rd
from refquant.gguf import convert, file
from test_gguf_recipes import tiny_llama

N_EMBD = 256       # a K-quant row: the mixtures keep their K types
ONE_ROW = N_EMBD   # chunk_weights of a single row per piece (the smallest piece)
KILL_AT = "blk.1.attn_q.weight"  # a tensor in the middle of the file: the run is well under way


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    return tiny_llama(str(folder / "in.gguf"), n_layer=2, n_embd=N_EMBD, rows=12, vocab=24, tied=False, seed=5)


@pytest.fixture(scope="module")
def imatrix(model):
    """An importance vector per matrix, drawn away from uniform so that it changes the codes."""
    rng = np.random.default_rng(11)
    with file.read(model) as f:
        return {t.name: rng.uniform(0.05, 8.0, t.shape[-1]).astype(np.float32)
                for t in f.tensors.values() if len(t.shape) == 2}


CASES = {"Q8_0": None, "Q4_K_M": None, "IQ4_XS": "imatrix"}


@pytest.fixture(scope="module")
def serial(model, imatrix, tmp_path_factory):
    """{ftype: bytes} of the one-thread run."""
    folder = tmp_path_factory.mktemp("dask-serial")
    out = {}
    for ftype, qw in CASES.items():
        dst = folder / f"{ftype}.gguf"
        convert.quantize_file(model, str(dst), ftype, imatrix if qw else None, threads=1)
        out[ftype] = dst.read_bytes()
    return out


@pytest.fixture(scope="module")
def clients():
    """{n_workers: Client} on LocalClusters of 1 and 2 worker processes, shared by the module."""
    with rd.connect(workers=1) as one, rd.connect(workers=2) as two:
        yield {1: one, 2: two}


def _run(model, dst, ftype, qw, client, chunk_weights=convert.CHUNK_WEIGHTS, **kw):
    convert.quantize_file(model, str(dst), ftype, qw, chunk_weights=chunk_weights, executor=rd.executor(client, **kw))
    return dst.read_bytes()


@pytest.mark.parametrize("ftype", list(CASES))
@pytest.mark.parametrize("n_workers", [1, 2])
@pytest.mark.parametrize("chunk_weights", [convert.CHUNK_WEIGHTS, ONE_ROW])
def test_bytes_match_one_process(ftype, n_workers, chunk_weights, model, imatrix, serial, clients, tmp_path):
    qw = imatrix if CASES[ftype] else None
    assert _run(model, tmp_path / "out.gguf", ftype, qw, clients[n_workers], chunk_weights) == serial[ftype]


def test_a_window_of_one_piece_keeps_the_order(model, serial, clients, tmp_path):
    """window_bytes=1: each piece is submitted only after the one before it was written."""
    got = _run(model, tmp_path / "out.gguf", "Q4_K_M", None, clients[2], 3 * ONE_ROW, window_bytes=1)
    assert got == serial["Q4_K_M"]


@pytest.fixture(scope="module")
def plain_iq4_xs(model, tmp_path_factory):
    dst = tmp_path_factory.mktemp("dask-plain") / "plain.gguf"
    convert.quantize_file(model, str(dst), "IQ4_XS", threads=1)
    return dst.read_bytes()


def test_the_imatrix_changes_the_bytes(serial, plain_iq4_xs):
    """The IQ4_XS cases above would prove little if the imatrix were ignored."""
    assert serial["IQ4_XS"] != plain_iq4_xs


# --------------------------------------------------------------------------- failures

def kill_once(marker, path, size, name, qtype, start, stop, qw):
    """The worker task, except that the first time a piece of KILL_AT runs, its worker process dies."""
    if name == KILL_AT and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # no clean-up, no reply: what an OOM kill looks like to the scheduler
    return rd.encode_piece(path, size, name, qtype, start, stop, qw)


def fail_at(path, size, name, qtype, start, stop, qw):
    if name == KILL_AT:
        raise RuntimeError(f"worker failure in {name}")
    return rd.encode_piece(path, size, name, qtype, start, stop, qw)


def test_a_killed_worker_is_retried_and_the_file_is_complete(model, serial, clients, tmp_path):
    marker = tmp_path / "killed"
    encode = functools.partial(kill_once, str(marker))
    got = _run(model, tmp_path / "out.gguf", "Q4_K_M", None, clients[2], ONE_ROW, encode=encode)
    assert marker.exists()  # the worker did die
    assert got == serial["Q4_K_M"]


def test_a_failed_task_leaves_the_old_file_and_nothing_else(model, clients, tmp_path):
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="worker failure in blk.1.attn_q.weight"):
        _run(model, dst, "Q8_0", None, clients[2], ONE_ROW, encode=fail_at)
    assert dst.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.gguf"]


# --------------------------------------------------------------------------- command line

def test_cli_workers_match_threads(model, tmp_path, capsys):
    threads, dask = tmp_path / "threads.gguf", tmp_path / "dask.gguf"
    assert cli.main(["quantize", model, str(threads), "--type", "Q4_K_M", "--threads", "1"]) == 0
    assert cli.main(["quantize", model, str(dask), "--type", "Q4_K_M", "--scheduler", "dask", "--workers", "2"]) == 0
    assert threads.read_bytes() == dask.read_bytes()


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refquant quantize: error: "), err
    return err


def test_cli_without_dask_says_how_to_install(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # find_spec answers None: not installed
    err = _one_line_error(capsys, ["quantize", model, str(tmp_path / "o.gguf"), "--type", "Q8_0",
                                   "--scheduler", "dask", "--workers", "2"])
    assert "pip install refquant[dask]" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("address, says", [("tcp://127.0.0.1:1", "no Dask scheduler answered"),
                                           ("bogus://host:8786", "is not a Dask scheduler address")])
def test_cli_bad_address_is_one_line(address, says, model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rd, "CONNECT_TIMEOUT", 1)
    err = _one_line_error(capsys, ["quantize", model, str(tmp_path / "o.gguf"), "--type", "Q8_0",
                                   "--scheduler", "dask", "--address", address])
    assert err.startswith("refquant quantize: error: --address: ") and says in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, says", [(["--workers", "2"], "only with --scheduler dask"),
                                         (["--scheduler", "dask"], "give --address URL"),
                                         (["--scheduler", "dask", "--workers", "0"], "--workers: expected a positive"),
                                         (["--scheduler", "dask", "--workers", "1", "--address", "tcp://h:1"],
                                          "give --address URL")])
def test_cli_flag_combinations(flags, says, model, tmp_path, capsys):
    err = _one_line_error(capsys, ["quantize", model, str(tmp_path / "o.gguf"), "--type", "Q8_0", *flags])
    assert says in err, err


def test_connect_refuses_bad_arguments():
    with pytest.raises(ValueError, match="address, workers: give exactly one"):
        with rd.connect():
            pass
    with pytest.raises(ValueError, match="workers: expected a positive integer"):
        with rd.connect(workers=0):
            pass


# --------------------------------------------------------------------------- model-level GPTQ

# One BLAS thread in the client as in Dask's workers (its nanny sets OMP/OPENBLAS/MKL_NUM_THREADS=1):
# a multi-threaded OpenBLAS groups the forward pass's float32 sums (and the Cholesky of H)
# differently, and then the attention output already differs in its last bits, so the Hessians
# of every stage after (q, k, v) and their codes would differ. Measured: with the client on
# 2 BLAS threads, attn_output's H differed in 269,803 of its 331,776 entries.
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
GPTQ_RUN = r"""
import json, sys
import numpy as np
from refquant import distributed as rd
from refquant._data import smollm2_path
from refquant.imatrix import compute_imatrix
from refquant.model import load_model

tokens = (np.arange(1, 129) * 37) % 5000                    # 4 windows of 32 tokens, 2 shards
kw = dict(n_shards=2, window=32, blocks=[0, 1])
serial = rd.gptq_quantize_model(smollm2_path(), tokens, None, **kw).details
with rd.connect(workers=2) as client:
    dask = rd.gptq_quantize_model(smollm2_path(), tokens, client, **kw).details
    im_dask = rd.compute_imatrix(smollm2_path(), tokens, client, chunk_size=32, process_output=True)
im_serial = compute_imatrix(load_model(smollm2_path()), tokens, chunk_size=32, process_output=True)
fields = ("q", "s", "z", "g_idx", "W_hat")
print(json.dumps({"gptq": {n: [int(np.sum(np.asarray(getattr(r, f)) != np.asarray(getattr(dask[n], f))))
                               for f in fields] for n, r in serial.items()},
                  "imatrix": {n: int(np.sum(s != im_dask.sums[n])) for n, s in im_serial.sums.items()},
                  "names": [sorted(im_serial.sums) == sorted(im_dask.sums), im_serial.counts == im_dask.counts]}))
"""


@pytest.fixture(scope="module")
def model_level():
    """One child process (one BLAS thread): GPTQ and the imatrix, serial and on 2 workers, compared there."""
    env = {**os.environ, **ONE_BLAS_THREAD}
    done = subprocess.run([sys.executable, "-c", GPTQ_RUN], capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gptq_on_the_cluster_gives_the_serial_codes(model_level):
    """Two blocks of SmolLM2: Hessians summed over 2 shards on 2 workers, solves split by rows."""
    mismatches = model_level["gptq"]         # {linear: [differing q, s, z, g_idx, W_hat]}
    assert len(mismatches) == 14             # 7 linears × 2 blocks
    assert {n: m for n, m in mismatches.items() if any(m)} == {}


def test_imatrix_on_the_cluster_gives_the_serial_sums(model_level):
    """compute_imatrix of 4 chunks of 32 tokens (every block and the head): chunk sums from the
    workers, added in chunk order, equal the serial float64 sums exactly."""
    differing = model_level["imatrix"]       # {linear: entries of Σx² that differ}
    assert len(differing) == 30 * 7 + 1 and model_level["names"] == [True, True]
    assert {n: d for n, d in differing.items() if d} == {}
