"""Memory of a quantized model, a worked solution (see README.md)."""

import re

# ggml type -> (weights per block QK, bytes per block): ggml.c type_traits
BLOCKS = {"Q4_0": (32, 18), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}
NF4_BLOCK = 64          # bitsandbytes' default blocksize for 4-bit
NESTED_BLOCK = 256      # blocks per absmax of the double quantization


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fp16_bytes(shapes):
    return sum(2 * rows * cols for rows, cols in shapes.values())


def int_group_bytes(shapes, bits, G, zero_bits=0):
    total = 0
    for rows, cols in shapes.values():
        n, n_groups = rows * cols, rows * (cols // G)
        total += _ceil_div(n * bits, 8) + 2 * n_groups + _ceil_div(n_groups * zero_bits, 8)
    return total


def nf4_bytes(shapes, double_quant=False):
    total = 0
    for rows, cols in shapes.values():
        n = rows * cols
        n_blocks = _ceil_div(n, NF4_BLOCK)
        codes = _ceil_div(n, 2)
        if double_quant:  # 8-bit absmax codes, a float32 absmax per 256 blocks, the float32 mean
            total += codes + n_blocks + 4 * _ceil_div(n_blocks, NESTED_BLOCK) + 4
        else:
            total += codes + 4 * n_blocks
    return total


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def gguf_types(shapes, ftype, n_layer):
    default = {"Q4_0": "Q4_0", "Q4_K_M": "Q4_K"}[ftype]
    types = {}
    for name in shapes:
        m = re.match(r"blk\.(\d+)\.(\w+)\.weight", name)
        if name == "output.weight":
            types[name] = "Q6_K"
        elif ftype == "Q4_K_M" and m and m.group(2) in ("attn_v", "ffn_down") and use_more_bits(int(m.group(1)), n_layer):
            types[name] = "Q6_K"
        else:
            types[name] = default
    return types


def gguf_bytes(shapes, types):
    total = 0
    for name, (rows, cols) in shapes.items():
        qk, size = BLOCKS[types[name]]
        total += rows * (cols // qk) * size
    return total


if __name__ == "__main__":
    n_layer, d, n_ff, vocab = 40, 5120, 13824, 32000
    shapes = {"token_embd.weight": (vocab, d), "output.weight": (vocab, d)}
    for i in range(n_layer):
        shapes.update({f"blk.{i}.{k}.weight": (d, d) for k in ("attn_q", "attn_k", "attn_v", "attn_output")})
        shapes.update({f"blk.{i}.ffn_gate.weight": (n_ff, d), f"blk.{i}.ffn_up.weight": (n_ff, d),
                       f"blk.{i}.ffn_down.weight": (d, n_ff)})
    n = sum(r * c for r, c in shapes.values())
    rows = [("FP16", fp16_bytes(shapes))]
    rows += [(f"INT4 G={G}{' + 4-bit zeros' if z else ''}", int_group_bytes(shapes, 4, G, z))
             for G in (32, 64, 128) for z in (0, 4)]
    rows += [("NF4", nf4_bytes(shapes)), ("NF4 + double quant", nf4_bytes(shapes, True))]
    rows += [(f"GGUF {f}", gguf_bytes(shapes, gguf_types(shapes, f, n_layer))) for f in ("Q4_0", "Q4_K_M")]
    for label, b in rows:
        print(f"{label:26s} {b:>15,d} B  {b / 1e9:7.3f} GB  {8 * b / n:6.3f} bits/weight  {rows[0][1] / b:5.2f}x")
