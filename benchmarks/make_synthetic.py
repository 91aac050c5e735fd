"""Write a synthetic Llama-shaped F32 GGUF file of any size without holding it in memory.

    python benchmarks/make_synthetic.py OUT.gguf --preset 1b        # TinyLlama-1.1B's shapes, 4.4 GB
    python benchmarks/make_synthetic.py OUT.gguf --preset tiny      # a few MB, for tests
    python benchmarks/make_synthetic.py OUT.gguf --preset 1b --layers 2 --dry-run   # sizes only

Weights are N(0, 0.02²) float32 (norms 1.0), drawn row chunk by row chunk from a seeded
generator (``numpy.random.default_rng((seed, tensor index, chunk))``), so the same command
writes the same bytes and memory stays at one chunk: the file goes through
``refquant.gguf.file.write`` with each tensor's bytes a callable (header first, atomic
write). The metadata is what llama.cpp's quantizer reads (general.architecture, the llama.*
hyper-parameters); the vocabulary is token_embd's rows named "<t0>", "<t1>", ...

Shapes (NumPy order, the last axis a row), d = embedding, f = feed-forward, k = d · n_kv / n_head:
    token_embd, output (vocab, d); per block attn_q, attn_output (d, d); attn_k, attn_v (k, d);
    ffn_gate, ffn_up (f, d); ffn_down (d, f); attn_norm, ffn_norm, output_norm (d,)
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np

CHUNK_WEIGHTS = 1 << 22  # weights drawn at a time: 16 MiB of float32
SIGMA = 0.02             # the usual initialisation scale of a Llama linear layer


class Shape(NamedTuple):
    """A Llama's hyper-parameters (GGUF llama.* keys)."""

    d: int          # embedding_length
    f: int          # feed_forward_length
    layers: int     # block_count
    n_head: int     # attention.head_count
    n_kv: int       # attention.head_count_kv
    vocab: int


PRESETS = {
    "tiny": Shape(d=256, f=768, layers=2, n_head=4, n_kv=2, vocab=512),
    "small": Shape(d=1024, f=2816, layers=4, n_head=16, n_kv=4, vocab=8192),   # ~ 60 M weights, CI-sized
    "1b": Shape(d=2048, f=5632, layers=22, n_head=32, n_kv=4, vocab=32000),     # TinyLlama-1.1B
    "8b": Shape(d=4096, f=14336, layers=32, n_head=32, n_kv=8, vocab=128256),   # Llama-3-8B
    "70b": Shape(d=8192, f=28672, layers=80, n_head=64, n_kv=8, vocab=128256),  # Llama-3-70B
}


def tensor_shapes(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, NumPy shape) in llama.cpp's file order."""
    k = s.d * s.n_kv // s.n_head
    out = [("token_embd.weight", (s.vocab, s.d))]
    for i in range(s.layers):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (s.d,)), (b + "attn_q.weight", (s.d, s.d)), (b + "attn_k.weight", (k, s.d)),
                (b + "attn_v.weight", (k, s.d)), (b + "attn_output.weight", (s.d, s.d)),
                (b + "ffn_norm.weight", (s.d,)), (b + "ffn_gate.weight", (s.f, s.d)),
                (b + "ffn_up.weight", (s.f, s.d)), (b + "ffn_down.weight", (s.d, s.f))]
    return out + [("output_norm.weight", (s.d,)), ("output.weight", (s.vocab, s.d))]


def metadata(s: Shape) -> tuple[dict, dict]:
    from refquant.gguf.file import ValueType as V

    md = {"general.architecture": "llama", "general.name": f"synthetic-{s.d}x{s.layers}",
          "general.file_type": 0,  # LLAMA_FTYPE_ALL_F32
          "llama.context_length": 2048, "llama.embedding_length": s.d, "llama.block_count": s.layers,
          "llama.feed_forward_length": s.f, "llama.rope.dimension_count": s.d // s.n_head,
          "llama.attention.head_count": s.n_head, "llama.attention.head_count_kv": s.n_kv,
          "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": s.vocab,
          "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [f"<t{i}>" for i in range(s.vocab)],
          "tokenizer.ggml.scores": np.zeros(s.vocab, np.float32),
          "tokenizer.ggml.token_type": np.ones(s.vocab, np.int32)}
    types = {k: V.UINT32 for k in md if isinstance(md[k], int)}
    types["llama.attention.layer_norm_rms_epsilon"] = V.FLOAT32
    return md, types


def _weights(index: int, shape: tuple[int, ...], seed: int):
    """The tensor's float32 bytes as row chunks (a callable for file.write)."""
    def make():
        if len(shape) == 1:
            yield np.ones(shape, np.float32)
            return
        rows, n = shape
        step = max(1, CHUNK_WEIGHTS // n)
        for c, lo in enumerate(range(0, rows, step)):
            rng = np.random.default_rng((seed, index, c))
            chunk = rng.standard_normal((min(step, rows - lo), n), dtype=np.float32)  # (r, n)
            chunk *= np.float32(SIGMA)
            yield chunk
    return make


def write_synthetic(path: str, s: Shape, seed: int = 0) -> int:
    """Write the model to ``path``; returns its number of weights."""
    from refquant.gguf import file

    md, types = metadata(s)
    shapes = tensor_shapes(s)
    file.write(path, md, [(name, "F32", shape, _weights(i, shape, seed)) for i, (name, shape) in enumerate(shapes)],
               metadata_types=types)
    return sum(int(np.prod(shape)) for _, shape in shapes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--layers", type=int, help="override the preset's block count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="print the sizes, write nothing")
    args = ap.parse_args(argv)
    s = PRESETS[args.preset]
    if args.layers is not None:
        if args.layers < 1:
            ap.error("--layers: expected a positive block count")
        s = s._replace(layers=args.layers)
    shapes = tensor_shapes(s)
    n = sum(int(np.prod(shape)) for _, shape in shapes)
    largest = max(shapes, key=lambda ns: int(np.prod(ns[1])))
    print(f"{args.preset}: {len(shapes)} tensors, {n:,} weights, {4 * n / 1e9:.2f} GB F32; "
          f"largest {largest[0]} {largest[1]} ({4 * int(np.prod(largest[1])) / 2**20:.0f} MiB)")
    if not args.dry_run:
        write_synthetic(args.out, s, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
