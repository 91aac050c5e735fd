"""Fuzzing refquant.gguf.file.read: mutated valid files never escape as anything but GGUFFormatError.

Hypothesis draws a seed file (small valid files written by refquant, one shaped like the
SmolLM2 header) and a program of mutations: bit flips, byte writes, truncations,
insertions, deletions and field-targeted edits (a count, length, type, dimension or offset
field overwritten with 0, 1, 2^31, 2^32-1, 2^63, 2^64-1, ±1 of its value, ...). Each
mutation is applied alone to the seed, then all of them together, so one example feeds
several inputs. Each input must:

  * raise GGUFFormatError (a ValueError naming a field inside the file), or parse;
  * take < MAX_SECONDS and allocate < MAX_PEAK_BYTES (tracemalloc peak) while parsing;
  * when it parses: every tensor's bytes lie inside the input, and what was read writes
    back (to_bytes) and re-reads to the same metadata, types and tensors.

CI (derandomized) runs at least CI_INPUTS inputs; HYPOTHESIS_PROFILE=thorough runs
THOROUGH_INPUTS. The counts of a run are printed (pytest -s) for the record.
"""

from __future__ import annotations

import os
import re
import struct
import time
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from refquant.gguf import file as gf

VT = gf.ValueType

CI_INPUTS = 10_000
THOROUGH_INPUTS = 100_000
MAX_PROGRAM = 12               # mutations per example (at least half as many), each an input
MAX_SECONDS = 1.0              # CPU seconds per input: catches hangs and count-driven loops; a parse takes ~0.1 ms
                               # (wall time saw 1.1 s once on a machine loaded 8x over its cores)
MAX_PEAK_BYTES = 4 << 20       # per input; every seed is < 8 kB


# --------------------------------------------------------------------------- seeds


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(8)
    every_type = {
        "u8": (7, VT.UINT8), "i8": (-7, VT.INT8), "u16": (65535, VT.UINT16), "i16": (-300, VT.INT16),
        "u32": (2**32 - 1, VT.UINT32), "i32": (-2**31, VT.INT32), "u64": (2**64 - 1, VT.UINT64),
        "i64": (-2**63, VT.INT64), "f32": (0.5, VT.FLOAT32), "f64": (1e-300, VT.FLOAT64), "b": (True, VT.BOOL),
        "s": ("héllo", VT.STRING), "a.s": (["a", "", "ccc"], (VT.ARRAY, VT.STRING)),
        "a.f32": (np.array([1.5, -2.0], np.float32), (VT.ARRAY, VT.FLOAT32)),
        "a.i64": (np.array([1, -1], np.int64), (VT.ARRAY, VT.INT64)),
        "a.b": (np.array([True, False]), (VT.ARRAY, VT.BOOL)), "a.empty": ([], (VT.ARRAY, VT.UINT8)),
    }
    meta = {k: v for k, (v, _) in every_type.items()}
    types = {k: t for k, (_, t) in every_type.items()}
    tensors = [("f32", "F32", (2, 4), rng.integers(0, 256, 32, dtype=np.uint8)),
               ("q4", "Q4_0", (1, 32), rng.integers(0, 256, 18, dtype=np.uint8)),
               ("q6k", "Q6_K", (256,), rng.integers(0, 256, 210, dtype=np.uint8))]
    smollm2_like = {
        "general.architecture": "llama", "general.name": "tiny", "llama.block_count": 1,
        "llama.rope.freq_base": 100000.0, "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["<|endoftext|>", "<|im_start|>", "a", "b", "Ġthe"],
        "tokenizer.ggml.token_type": np.array([3, 3, 1, 1, 1], np.int32),
        "tokenizer.ggml.merges": ["Ġ t", "h e"], "tokenizer.ggml.add_bos_token": False,
        "general.quantization_version": 2,
    }
    smol_types = {"llama.block_count": VT.UINT32, "general.quantization_version": VT.UINT32}
    smol_tensors = [("token_embd.weight", "Q8_0", (5, 32), rng.integers(0, 256, 5 * 34, dtype=np.uint8)),
                    ("output_norm.weight", "F32", (32,), rng.integers(0, 256, 128, dtype=np.uint8))]
    return [
        gf.to_bytes(meta, tensors, metadata_types=types),
        gf.to_bytes({"x": 1}, tensors[:2], alignment=8),
        gf.to_bytes(smollm2_like, smol_tensors, metadata_types=smol_types),
        gf.to_bytes({"a.s": ["x"] * 20}, ()),
    ]


SEEDS = _seeds()


def _fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every count, length, type, dimension and offset field of a valid file."""
    out = [(4, 4), (8, 8), (16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string():
        nonlocal pos
        out.append((pos, 8))
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n

    sizes = {VT.UINT8: 1, VT.INT8: 1, VT.BOOL: 1, VT.UINT16: 2, VT.INT16: 2, VT.UINT32: 4, VT.INT32: 4,
             VT.FLOAT32: 4, VT.UINT64: 8, VT.INT64: 8, VT.FLOAT64: 8}
    for _ in range(n_kv):
        string()
        out.append((pos, 4))
        (vt,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if vt == VT.ARRAY:
            out += [(pos, 4), (pos + 4, 8)]
            et, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(count):
                if et == VT.STRING:
                    string()
                else:
                    pos += sizes[VT(et)]
        elif vt == VT.STRING:
            string()
        else:
            pos += sizes[VT(vt)]
    for _ in range(n_tensors):
        string()
        out.append((pos, 4))
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        out += [(pos + 8 * j, 8) for j in range(n_dims)]
        pos += 8 * n_dims
        out += [(pos, 4), (pos + 4, 8)]
        pos += 12
    return out


SEED_FIELDS = [_fields(s) for s in SEEDS]

# --------------------------------------------------------------------------- mutations

_INTERESTING = [0, 1, 2, 3, 4, 7, 8, 12, 13, 31, 32, 63, 64, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31,
                2**32 - 1, 2**32, 2**61, 2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]

# A program is raw bytes, MUTATION_BYTES per mutation, decoded below: drawing one byte
# string is ~10x cheaper for Hypothesis than a list of tuples, and still shrinks (toward
# zero bytes: bit flips of byte 4 of the file).
MUTATION_BYTES = 12
KINDS = ("flip", "byte", "field", "field", "truncate", "insert", "delete")


def _decode(chunk: bytes):
    kind = KINDS[chunk[0] % len(KINDS)]
    pos = int.from_bytes(chunk[1:4], "little")
    arg = chunk[4]
    tail = chunk[5:]
    if kind == "field":  # set an interesting value, or nudge the old value by -3..+3
        return kind, pos, ("set", _INTERESTING[tail[0] % len(_INTERESTING)]) if arg & 1 else ("add", arg % 7 - 3)
    if kind == "insert":
        return kind, pos, tail[: 1 + arg % len(tail)]
    if kind == "delete":
        return kind, pos, 1 + arg % 16
    return kind, pos, arg


def _apply(data: bytearray, fields, m) -> bytearray:
    kind, pos, arg = m
    if not data and kind != "insert":
        return data
    if kind == "flip":  # flips and byte writes spare the magic most of the time: that check is trivial
        data[4 + pos % max(1, len(data) - 4) if len(data) > 4 else pos % len(data)] ^= 1 << (arg % 8)
    elif kind == "byte":
        data[4 + pos % max(1, len(data) - 4) if len(data) > 4 else pos % len(data)] = arg
    elif kind == "field":
        at, width = fields[pos % len(fields)]
        if at + width <= len(data):
            how, v = arg
            value = v if how == "set" else int.from_bytes(data[at:at + width], "little") + v
            data[at:at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    elif kind == "truncate":
        del data[pos % (len(data) + 1):]
    elif kind == "insert":
        at = pos % (len(data) + 1)
        data[at:at] = arg
    else:
        at = pos % len(data)
        del data[at:at + arg]
    return data


# --------------------------------------------------------------------------- the property


class Stats:
    def __init__(self):
        self.inputs = self.refused = self.accepted = 0
        self.max_seconds = 0.0
        self.max_peak = 0
        self.fields: dict[str, int] = {}


def _parse_traced(data: bytes):
    """read(data) -> (GGUFFile or the GGUFFormatError, seconds, peak bytes allocated meanwhile).

    tracemalloc runs only around the parse: tracing Hypothesis as well would cost ten-fold.
    """
    tracemalloc.start()
    t0 = time.process_time()  # CPU time: a loaded machine's scheduling does not count
    try:
        result = gf.read(data)
    except gf.GGUFFormatError as e:  # the only exception allowed out
        result = e
    seconds, peak = time.process_time() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def _check_one(data: bytes, stats: Stats) -> None:
    f, seconds, peak = _parse_traced(data)
    stats.inputs += 1
    stats.max_seconds = max(stats.max_seconds, seconds)
    stats.max_peak = max(stats.max_peak, peak)
    assert seconds < MAX_SECONDS, (seconds, data[:64])
    assert peak < MAX_PEAK_BYTES, (peak, data[:64])
    if isinstance(f, gf.GGUFFormatError):
        assert 0 <= f.offset <= len(data), str(f)
        kind = " ".join(re.sub(r"\[[^]]*\]|'[^']*'|\"[^\"]*\"|#\d+", "", f.field).split())  # names, indices out
        stats.fields[kind] = stats.fields.get(kind, 0) + 1
        stats.refused += 1
        return
    stats.accepted += 1
    for t in f.tensors.values():
        assert f.data_offset <= t.offset and t.offset + t.nbytes <= len(data)
        assert t.raw.nbytes == t.nbytes
    # what was read writes back and re-reads the same
    again = gf.read(gf.to_bytes(f.metadata, f.tensors.values(), metadata_types=f.metadata_types))
    assert again.metadata_types == f.metadata_types
    for key, value in f.metadata.items():
        got = again.metadata[key]
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), key
        elif isinstance(value, float):
            assert struct.pack("<d", got) == struct.pack("<d", value), key  # NaN payloads too
        else:
            assert got == value, key
    assert [(t.name, t.type, t.shape, t.raw.tobytes()) for t in again.tensors.values()] == \
        [(t.name, t.type, t.shape, t.raw.tobytes()) for t in f.tensors.values()]


def _run(n_inputs: int) -> Stats:
    stats = Stats()
    n_examples = -(-n_inputs // (MAX_PROGRAM // 2 + 1))  # each example feeds >= MAX_PROGRAM/2 + 1 inputs

    @settings(max_examples=n_examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.integers(0, len(SEEDS) - 1),
           st.binary(min_size=MAX_PROGRAM // 2 * MUTATION_BYTES, max_size=MAX_PROGRAM * MUTATION_BYTES))
    def fuzz(seed, program):
        fields = SEED_FIELDS[seed]
        mutations = [_decode(program[i:i + MUTATION_BYTES])
                     for i in range(0, len(program) - MUTATION_BYTES + 1, MUTATION_BYTES)]
        data = bytearray(SEEDS[seed])
        for m in mutations:  # each mutation alone, then all of them together
            _check_one(bytes(_apply(bytearray(SEEDS[seed]), fields, m)), stats)
            data = _apply(data, fields, m)
        _check_one(bytes(data), stats)

    try:
        fuzz()
    finally:
        tracemalloc.stop()
    return stats


def test_seeds_are_valid_and_field_maps_right():
    for data, fields in zip(SEEDS, SEED_FIELDS):
        f = gf.read(data)
        assert f.trailing_bytes == 0 and len(fields) >= 3 + 3 * len(f.metadata) + 4 * len(f.tensors)
        assert max(at + w for at, w in fields) <= f.data_offset


def test_fuzz_only_format_errors_escape():
    thorough = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
    target = THOROUGH_INPUTS if thorough else CI_INPUTS
    t0 = time.perf_counter()
    stats = _run(target)
    elapsed = time.perf_counter() - t0
    print(f"\ngguf fuzz: {stats.inputs} inputs in {elapsed:.1f} s: {stats.refused} refused, "
          f"{stats.accepted} accepted; slowest {stats.max_seconds * 1e3:.2f} ms CPU, "
          f"peak {stats.max_peak / 1024:.0f} KiB; refusals by field: {dict(sorted(stats.fields.items()))}")
    assert stats.inputs >= target
    assert stats.refused > stats.inputs // 4 and stats.accepted > 0  # the mutations reach both outcomes
