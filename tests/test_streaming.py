"""Streaming: files read lazily (``read(path, stream=True)``), written tensor by tensor (callables
in ``write``), and ``quantize_file`` in memory bounded by its pieces, not by the model.

The memory test runs ``quantize_file`` in a child process under an address-space limit
(``RLIMIT_AS``, what ``ulimit -v`` sets) of its warmed-up size plus a budget half the input
file's size — and, as a control, shows that mapping the whole file (``read(path)``) fails
under the same limit, so the limit does bind. Peak resident memory (VmHWM) is checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant.gguf import convert, file

U32 = file.ValueType.UINT32
N = 512          # row length of the synthetic model
SIGMA = 0.02


def _llama_metadata(n_layer: int) -> tuple[dict, dict]:
    md = {"general.architecture": "llama", "general.name": "streamed", "general.file_type": 0,
          "llama.block_count": n_layer, "llama.context_length": 64, "llama.embedding_length": N,
          "llama.feed_forward_length": N, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 4,
          "llama.rope.dimension_count": N // 4, "llama.attention.layer_norm_rms_epsilon": 1e-5}
    return md, {k: U32 for k, v in md.items() if isinstance(v, int)}


def _pieces(index: int, rows: int, step: int):
    """A tensor's float32 bytes as a callable of row pieces, each drawn when the writer asks."""
    def make():
        for lo in range(0, rows, step):
            rng = np.random.default_rng((index, lo))
            yield (rng.standard_normal((min(step, rows - lo), N), dtype=np.float32) * np.float32(SIGMA))
    return make


def write_model(path, n_layer: int, rows: int) -> int:
    """A synthetic F32 Llama whose matrices are (rows, N), written without holding a tensor."""
    md, types = _llama_metadata(n_layer)
    names = ["token_embd.weight"] + [f"blk.{i}.{p}.weight" for i in range(n_layer)
                                      for p in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                                "ffn_down")]
    tensors = [(n, "F32", (rows, N), _pieces(i, rows, 256)) for i, n in enumerate(names)]
    tensors += [(f"blk.{i}.{p}.weight", "F32", (N,), np.ones(N, np.float32))
                for i in range(n_layer) for p in ("attn_norm", "ffn_norm")] + [("output_norm.weight", "F32", (N,),
                                                                              np.ones(N, np.float32))]
    file.write(path, md, tensors, metadata_types=types)
    return os.path.getsize(path)


CHILD = r"""
import json, os, resource, sys
import numpy as np
from refquant.gguf import convert, file

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
src, warm, dst, budget, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
convert.quantize_file(warm, dst, "Q8_0", threads=2, chunk_weights=1 << 16)  # imports, pools, arenas: before the limit
os.unlink(dst)
rss0, vm0 = status("VmRSS"), status("VmSize")
resource.setrlimit(resource.RLIMIT_AS, (vm0 + budget, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    if mode == "stream":
        convert.quantize_file(src, dst, "Q8_0", threads=2, chunk_weights=1 << 16)
    else:  # the control: the whole file mapped at once
        with file.read(src) as f:
            sum(int(t.raw[..., :1].sum()) for t in f.tensors.values())
    outcome = "ok"
except (MemoryError, OSError) as e:
    outcome = type(e).__name__ + ": " + str(e)
print(json.dumps({"outcome": outcome, "rss0": rss0, "hwm": status("VmHWM")}))
"""


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming")
    big = str(folder / "big.gguf")
    size = write_model(big, n_layer=2, rows=1536)  # 15 matrices of 1536 x 512 float32: 45 MiB
    warm = str(folder / "warm.gguf")
    write_model(warm, n_layer=1, rows=8)
    return big, warm, size


def _run_child(big_model, tmp_path, mode: str) -> dict:
    big, warm, size = big_model
    budget = size // 2
    done = subprocess.run([sys.executable, "-c", CHILD, big, warm, str(tmp_path / "out.gguf"), str(budget), mode],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "budget": budget}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_quantize_file_runs_in_half_the_input_size(big_model, tmp_path):
    """Address space limited to +file/2 over the warmed-up process: the streamed quantizer passes,
    its peak RSS grows by less than that, and its output equals the unlimited one's."""
    r = _run_child(big_model, tmp_path, "stream")
    assert r["outcome"] == "ok", r
    assert r["hwm"] - r["rss0"] < r["budget"], r
    expected = tmp_path / "expected.gguf"
    convert.quantize_file(big_model[0], str(expected), "Q8_0", threads=1)
    assert (tmp_path / "out.gguf").read_bytes() == expected.read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_the_limit_binds_a_whole_file_mapping(big_model, tmp_path):
    r = _run_child(big_model, tmp_path, "whole")
    assert r["outcome"].startswith(("OSError", "MemoryError")), r


# ----------------------------------------------------------------------------- read(stream=True)


def _same_file(a: file.GGUFFile, b: file.GGUFFile) -> None:
    assert (a.version, a.alignment, a.data_offset, a.size, a.trailing_bytes) == \
        (b.version, b.alignment, b.data_offset, b.size, b.trailing_bytes)
    assert list(a.metadata) == list(b.metadata) and a.metadata_types == b.metadata_types
    for k, v in a.metadata.items():
        assert np.array_equal(v, b.metadata[k]) if isinstance(v, np.ndarray) else v == b.metadata[k], k
    assert list(a.tensors) == list(b.tensors)
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert (t.type, t.shape, t.offset, t.nbytes) == (u.type, u.shape, u.offset, u.nbytes)
        assert np.array_equal(t.raw, u.raw), name


def test_stream_reads_smollm2_as_the_mapping_does(smollm2_path):
    """SmolLM2's header (a 49k-token vocabulary and its merges) is larger than the first prefix."""
    assert os.path.getsize(smollm2_path) > file._PREFIX_BYTES
    with file.read(smollm2_path) as whole, file.read(smollm2_path, stream=True) as lazy:
        assert whole.data_offset > file._PREFIX_BYTES
        _same_file(whole, lazy)
        t, u = whole.tensors["token_embd.weight"], lazy.tensors["token_embd.weight"]
        assert np.array_equal(u.rows(100, 103), t.raw.reshape(t.n_rows, -1)[100:103])
        assert not u.rows(0, 1).flags.writeable


def _small_file() -> bytes:
    rng = np.random.default_rng(0)
    return file.to_bytes({"general.name": "tiny", "general.alignment": 64, "x.list": ["a", "bc", "def"],
                          "x.floats": np.arange(5, dtype=np.float32)},
                         [("a", "F32", (3, 4), rng.standard_normal((3, 4), dtype=np.float32)),
                          ("b", "Q8_0", (2, 32), bytes(2 * 34))], metadata_types={"general.alignment": U32})


def _outcome(read):
    try:
        with read() as f:
            return ("ok", f.version, dict(f.metadata_types), list(f.tensors),
                    [np.array(t.raw).tobytes() for t in f.tensors.values()])
    except file.GGUFFormatError as e:
        return ("error", str(e))


@settings(max_examples=40)
@given(data=st.data())
def test_stream_parse_of_damaged_files_agrees_with_the_whole_parse(data, tmp_path_factory):
    """A file cut short, or with one byte changed, gives the same error (field and byte offset)
    or the same contents whether parsed whole or from prefixes grown from 16 bytes."""
    blob = bytearray(_small_file())
    cut = data.draw(st.one_of(st.just(len(blob)), st.integers(0, len(blob))), label="length")
    if data.draw(st.booleans(), label="change a byte"):
        at = data.draw(st.integers(0, len(blob) - 1), label="at")
        blob[at] = data.draw(st.sampled_from([0, 1, 0x7F, 0xFF, blob[at] ^ 1]), label="value")
    blob = bytes(blob[:cut])
    path = tmp_path_factory.mktemp("damaged") / "f.gguf"
    path.write_bytes(blob)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(file, "_PREFIX_BYTES", 16)
        assert _outcome(lambda: file.read(str(path), stream=True)) == _outcome(lambda: file.read(blob))


def test_stream_tensor_after_close_and_bad_rows(tmp_path):
    path = tmp_path / "f.gguf"
    path.write_bytes(_small_file())
    f = file.read(str(path), stream=True)
    kept = f.tensors["a"].raw
    with pytest.raises(ValueError, match=r"rows: expected 0 <= start < stop <= 3, got 2, 2"):
        f.tensors["a"].rows(2, 2)
    f.close()
    assert kept.shape == (3, 16)  # an array taken before close() keeps its own mapping
    with pytest.raises(ValueError, match="the file is closed"):
        f.tensors["a"].raw
    with pytest.raises(TypeError, match="stream=True reads a path"):
        file.read(_small_file(), stream=True)


# ----------------------------------------------------------------------------- write with callables


def test_write_calls_each_tensor_when_it_is_reached(tmp_path):
    """The header is out before any callable runs; callable k runs after k-1's pieces are consumed."""
    events = []
    path = tmp_path / "f.gguf"

    def tensor(k):
        def make():
            events.append(("call", k, os.path.exists(path)))
            for i in range(3):
                events.append(("piece", k, i))
                yield np.full((1, 4), k * 10 + i, np.float32)
        return make

    file.write(str(path), {"general.name": "lazy"}, [(f"t{k}", "F32", (3, 4), tensor(k)) for k in range(2)])
    assert [e[:2] for e in events] == [("call", 0)] + [("piece", 0)] * 3 + [("call", 1)] + [("piece", 1)] * 3
    assert not events[0][2]  # nothing named at the destination while writing (atomic)
    with file.read(str(path)) as f:
        assert f.tensors["t1"].raw.view(np.float32)[:, 0].tolist() == [10.0, 11.0, 12.0]
    assert file.read(path.read_bytes()).tensors["t0"].nbytes == 48


@pytest.mark.parametrize("made, message", [
    (lambda: bytes(40), "gave 40 bytes, its type and shape take 48"),
    (lambda: [bytes(40), bytes(16)], "gave more than 56 bytes, its type and shape take 48"),
    (lambda: iter([]), "gave 0 bytes"),
])
def test_write_refuses_a_callable_of_the_wrong_size_leaving_nothing(made, message, tmp_path):
    path = tmp_path / "f.gguf"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match=rf"tensors\['t'\]: the callable {message}"):
        file.write(str(path), {"general.name": "x"}, [("t", "F32", (3, 4), made)])
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["f.gguf"]


def test_quantize_file_failing_in_the_last_tensor_keeps_the_old_output(tmp_path):
    """The streamed writer has written the header and most tensors when a NaN in the last one
    stops it: the destination keeps its old bytes and no temporary is left."""
    md, types = _llama_metadata(1)
    w = np.random.default_rng(1).standard_normal((8, N)).astype(np.float32)
    bad = w.copy()
    bad[5, 7] = np.nan
    names = ["token_embd.weight"] + [f"blk.0.{p}.weight" for p in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                                   "ffn_gate", "ffn_up", "ffn_down")]
    tensors = [(n, "F32", w.shape, bad if n == names[-1] else w) for n in names]
    file.write(str(tmp_path / "in.gguf"), md, tensors, metadata_types=types)
    (tmp_path / "out.gguf").write_bytes(b"previous")
    with pytest.raises(ValueError, match="finite"):
        convert.quantize_file(str(tmp_path / "in.gguf"), str(tmp_path / "out.gguf"), "Q8_0", threads=2,
                              chunk_weights=N)
    assert (tmp_path / "out.gguf").read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["in.gguf", "out.gguf"]
