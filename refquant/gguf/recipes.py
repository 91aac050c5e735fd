"""llama.cpp's quantization mixtures ("Q4_K_M" …): which type each tensor of a file gets.

    refquant quantize IN.gguf OUT.gguf --type Q4_K_M [--imatrix imatrix.gguf]

(The whole-file loop is ``refquant.gguf.convert``; importance-matrix files are
``refquant.gguf.imatrix``.)

A llama.cpp *file type* such as Q4_K_M is not one block format but a recipe: a default
type (Q4_K) plus rules that spend more bits where quantization hurts most. This module
is llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp) written out as a readable
function, ``tensor_type``, for the file types whose block formats refquant implements.

The rules, in words (n = the number of layers, i = the layer):

* Only weight matrices are quantized: tensors with at least 2 dimensions whose name ends
  in "weight", except norms ("_norm.weight"), MoE routers ("ffn_gate_inp") and a few
  small special tensors. Everything else keeps its type (norms stay F32).
* The output projection ``output.weight`` — or ``token_embd.weight`` when the model ties
  the two — gets Q6_K (Q8_0 stays Q8_0; Q8_0 too if its rows don't fit the default
  type's blocks).
* "More bits" layers: ``use_more_bits(i, n)`` is true for the first n/8 layers, the
  last n/8, and every third layer in between; Q4_K_M / Q5_K_M give Q6_K to ``attn_v``
  and ``ffn_down`` of those layers.
* Q3_K_M: attn_v Q5_K in layers 0–1, else Q4_K; ffn_down Q5_K in the first n/16, else
  Q4_K; attn_output Q4_K. Q3_K_L: attn_v, ffn_down and attn_output Q5_K.
* Q4_K_S: attn_v Q5_K in layers 0–3, ffn_down Q5_K in the first n/8.
* Q2_K: attn_v Q3_K (Q4_K with grouped-query attention n_head/n_head_kv ≥ 4),
  ffn_down and attn_output Q3_K.
* IQ4_NL / IQ4_XS: attn_v Q5_K when n_gqa ≥ 4; ffn_down Q5_K in the first n/8 without
  an importance matrix.
* Q4_0 / Q5_0 with an importance matrix: ffn_down of the first n/8 layers Q4_1 / Q5_1.
* The 1-2 bit mixtures IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M (``LOW_BIT``) have a
  branch of their own: output Q5_K, an untied token_embd Q2_K (IQ2_S / IQ2_M: IQ3_S);
  attn_v Q4_K with n_gqa ≥ 4 (or ≥ 4 experts), else IQ3_S (IQ2_S / IQ2_M) or Q2_K;
  ffn_down of the first n/8 layers IQ3_S (IQ2_S / IQ2_M) or Q2_K; attn_output IQ2_XXS
  (IQ1_*) or IQ3_S (IQ2_S / IQ2_M); IQ2_S's default is IQ2_XS and IQ2_M's IQ2_S.
* IQ3_XXS: output Q5_K; attn_v Q4_K with n_gqa ≥ 4, else IQ3_S without an imatrix and
  IQ3_XXS with one; attn_q / attn_k IQ2_S; attn_output IQ3_S; without an imatrix ffn_down
  Q4_K in the first n/8 layers, Q3_K after. IQ3_XS (default IQ3_S): attn_q / attn_k
  IQ3_XXS, ffn_gate / ffn_up IQ3_XXS in the middle layers [n/8, 7n/8). IQ3_S / IQ3_XS:
  attn_v Q4_K with n_gqa ≥ 4. IQ3_M: attn_v, attn_output and the first n/8 ffn_down Q4_K.
* TQ1_0 / TQ2_0 / Q2_0: an untied token_embd Q4_K. MXFP4_MOE: expert tensors (3-D) MXFP4,
  every other matrix Q8_0 — a dense model is Q8_0 throughout.
* Some types need an importance matrix (tensor_requires_imatrix): IQ1_S, IQ1_M, IQ2_XXS,
  IQ2_XS, IQ2_S, IQ3_XXS anywhere but token_embd / output, and Q2_K in a Q2_K_S file;
  without one the mixture is refused (ValueError), as llama-quantize refuses.
* Fallback: a k-quant needs rows that are a multiple of 256; when they are not (SmolLM2's
  576-wide matrices), Q2_K/Q3_K become Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0,
  IQ4_XS → IQ4_NL — and F16 if even 32 does not divide the row. The 256-blocks i-quants
  (IQ1_*, IQ2_*, IQ3_XXS, IQ3_S) fall back to IQ4_NL, TQ1_0 / TQ2_0 / Q2_0 to Q4_0; Q1_0
  has no fallback (ValueError, as llama.cpp throws).

llama.cpp visits tensors in layer order (``weight_name_comparer``: tensors outside the
layers first, then blk.0, blk.1, … each sorted by name), and counts attn_v / ffn_down /
… tensors as it goes; those counters are the layer indices in ``use_more_bits``. We
visit in the same order and write the output file in it, as llama-quantize does.

Ref: llama.cpp src/llama-quant.cpp (tensor_allows_quantization, tensor_get_category,
llama_tensor_get_type_impl, tensor_type_fallback, llama_ftype_get_default_type,
llama_model_quantize_impl), src/llama-model-loader.h (weight_name_comparer),
tools/quantize/quantize.cpp (QUANT_OPTIONS).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np

from .types import ggml_type

__all__ = ["FTYPES", "IQ_MIXTURES", "ModelInfo", "use_more_bits", "category", "allows_quantization", "fallback",
           "tensor_type", "mixture_type", "MIXTURE_RULES", "MIXTURE_AFTER", "tensor_types", "llama_order"]

# file type name -> (llama_ftype value written to general.file_type, default ggml type)
FTYPES: dict[str, tuple[int, str]] = {
    "F32": (0, "F32"), "F16": (1, "F16"), "BF16": (32, "BF16"),
    "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"), "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"), "Q8_0": (7, "Q8_0"),
    "Q2_K": (10, "Q2_K"), "Q2_K_S": (21, "Q2_K"),
    "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"), "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"), "IQ4_NL": (25, "IQ4_NL"), "IQ4_XS": (30, "IQ4_XS"),
    # the i-quant, ternary and 1-2 bit mixtures (IQ_MIXTURES); IQ2_S's default is IQ2_XS, IQ2_M's IQ2_S
    "IQ2_XXS": (19, "IQ2_XXS"), "IQ2_XS": (20, "IQ2_XS"), "IQ2_S": (28, "IQ2_XS"), "IQ2_M": (29, "IQ2_S"),
    "IQ3_XXS": (23, "IQ3_XXS"), "IQ3_XS": (22, "IQ3_S"), "IQ3_S": (26, "IQ3_S"), "IQ3_M": (27, "IQ3_S"),
    "IQ1_S": (24, "IQ1_S"), "IQ1_M": (31, "IQ1_M"), "TQ1_0": (36, "TQ1_0"), "TQ2_0": (37, "TQ2_0"),
    "MXFP4_MOE": (38, "MXFP4"), "Q1_0": (40, "Q1_0"), "Q2_0": (41, "Q2_0"),
}
IQ_MIXTURES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ1_S", "IQ1_M",
               "TQ1_0", "TQ2_0", "MXFP4_MOE", "Q1_0", "Q2_0")
# llama_tensor_get_type_impl's first branch after the output: these mixtures have rules of their own
LOW_BIT = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
# tensor_requires_imatrix: quantizing to these types (outside token_embd / output) needs an imatrix
NEEDS_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # llama-quantize's QUANT_OPTIONS
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION


def _ftype_name(ftype: str) -> str:
    name = ALIASES.get(str(ftype).upper(), str(ftype).upper())
    if name not in FTYPES:
        raise ValueError(f"ftype: unknown file type {ftype!r}; known: {', '.join([*FTYPES, *ALIASES])}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the recipe needs to know about the model (GGUF keys ``{arch}.block_count`` …)."""

    arch: str = "llama"
    n_layer: int = 1
    n_head: int = 1
    n_head_kv: int = 1
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        """Query heads per key/value head (hparams.n_gqa(): 0 without kv heads)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B (Llama-2/3 70B): 80 layers with grouped-query attention."""
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "ModelInfo":
        arch = str(metadata.get("general.architecture", "llama"))
        n_head = metadata.get(f"{arch}.attention.head_count", 1)
        n_head = int(n_head[0] if isinstance(n_head, (list, tuple, np.ndarray)) else n_head)
        n_head_kv = metadata.get(f"{arch}.attention.head_count_kv", n_head)
        n_head_kv = int(n_head_kv[0] if isinstance(n_head_kv, (list, tuple, np.ndarray)) else n_head_kv)
        return cls(arch=arch, n_layer=int(metadata.get(f"{arch}.block_count", 1)), n_head=n_head,
                   n_head_kv=n_head_kv, n_expert=int(metadata.get(f"{arch}.expert_count", 0)))


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The first and last eighth of the layers, and every third layer in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def category(name: str) -> str:
    """tensor_get_category: the role of a tensor, by name (first match wins)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                  "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight",
                  "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
                  "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
                  "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
                  "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
                  ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger")


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one larger than 1 (NumPy order: leading 1s don't count)."""
    ne = list(shape)[::-1]
    return max([i + 1 for i, d in enumerate(ne) if d > 1] or [1])


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """tensor_allows_quantization: weight matrices yes; norms, biases, 1-D vectors, routers no."""
    if _n_dims(tuple(shape)) < 2 or not name.endswith("weight"):
        return False
    return not any(key in name for key in _NOT_QUANTIZED) and name not in ("position_embd.weight", "token_types.weight")


_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
             # the 256-blocks i-quants fall back to IQ4_NL, the ternary / 2-bit types to Q4_0 (Q1_0 has none)
             **dict.fromkeys(("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"), "IQ4_NL"),
             **dict.fromkeys(("Q2_0", "TQ1_0", "TQ2_0"), "Q4_0")}


def fallback(qtype: str, n_per_row: int) -> str:
    """tensor_type_fallback: a 32-block type when the row is not a multiple of 256; F16 if even 32 fails."""
    if n_per_row % ggml_type(qtype).block_size == 0:
        return qtype
    if qtype not in _FALLBACK:
        raise ValueError(f"qtype: no fallback is defined for {qtype} (row length {n_per_row})")
    new = _FALLBACK[qtype]
    return new if n_per_row % ggml_type(new).block_size == 0 else "F16"


def tensor_type(name: str, shape: tuple[int, ...], ftype: str, info: ModelInfo, *, i_attn_v: int = 0,
                n_attn_v: int = 0, i_ffn: int = 0, tied_embeddings: bool = False, has_imatrix: bool = False) -> str:
    """llama_tensor_get_type_impl + tensor_type_fallback for one quantizable tensor.

    i_attn_v / n_attn_v: how many attn_v-like tensors came before this one / in total;
    i_ffn: the ffn_down / ffn_gate / ffn_up counter (the layer index in a dense model).
    Returns the ggml type name.

    Example: ffn_down of layer 0 in a 30-layer Q4_K_M file is Q6_K (layer 0 < 30/8 uses
    more bits); attn_v of shape (192, 576) would be Q6_K too, and becomes Q8_0 because 576
    is not a multiple of 256.

        >>> info = ModelInfo(n_layer=30)
        >>> tensor_type("blk.0.ffn_down.weight", (576, 1536), "Q4_K_M", info)
        'Q6_K'
        >>> tensor_type("blk.0.attn_v.weight", (192, 576), "Q4_K_M", info, n_attn_v=30)
        'Q8_0'
    """
    return fallback(mixture_type(name, shape, ftype, info, i_attn_v=i_attn_v, n_attn_v=n_attn_v, i_ffn=i_ffn,
                                 tied_embeddings=tied_embeddings, has_imatrix=has_imatrix), int(shape[-1]))


def mixture_type(name: str, shape: tuple[int, ...], ftype: str, info: ModelInfo, *, i_attn_v: int = 0,
                 n_attn_v: int = 0, i_ffn: int = 0, tied_embeddings: bool = False, has_imatrix: bool = False) -> str:
    """llama_tensor_get_type_impl: the mixture's choice before the row-length fallback.

    The first row of ``MIXTURE_RULES[group]`` that names the file type and whose
    condition holds gives the type (none: the file type's default); then every row of
    ``MIXTURE_AFTER`` that applies changes it again, in order.

    >>> mixture_type("blk.0.attn_v.weight", (192, 576), "Q4_K_M", ModelInfo(n_layer=30), n_attn_v=30)
    'Q6_K'
    """
    ftype = _ftype_name(ftype)
    default = FTYPES[ftype][1]
    if not ggml_type(default).block_size > 1:  # F32 / F16 / BF16 files: every weight matrix gets that type
        return default
    cat = category(name)
    w = _Where(ftype, default, int(shape[-1]), info, i_attn_v, n_attn_v, _layer_index(name, cat, info, i_ffn),
               has_imatrix)
    # the branches of llama_tensor_get_type_impl, in its order
    if cat == "output" or (tied_embeddings and cat == "token_embd"):
        group = "output"
    elif ftype == "MXFP4_MOE":  # expert tensors (3-D: ne[2] > 1) MXFP4, every other matrix Q8_0
        return "MXFP4" if len(shape) >= 3 and int(shape[-3]) > 1 else "Q8_0"
    elif cat == "token_embd":
        group = "token_embd"
    elif ftype in LOW_BIT:  # IQ1_* / IQ2_*: a branch of their own, without the rules below
        rules = MIXTURE_RULES.get("low_bit " + cat, ())
        return next((r.new for r in rules if _names(r.ftypes, ftype) and r.when(w)), default)
    else:
        group = _RULE_GROUP.get(cat, "")
    new = next((r.new for r in MIXTURE_RULES.get(group, ()) if _names(r.ftypes, ftype) and r.when(w)), default)
    for r in MIXTURE_AFTER:
        if cat in r.categories and _names(r.ftypes, ftype) and r.when(w, new):
            new = r.new
    return new


def _layer_index(name: str, cat: str, info: ModelInfo, i_ffn: int) -> int:
    """The layer a ffn tensor belongs to: the ffn counter, or (MoE) the layer in its name."""
    if not (info.n_expert > 1 and cat in ("ffn_down", "ffn_gate", "ffn_up")):
        return i_ffn
    m = re.match(r"blk\.(\d+)\.", name)  # expert tensors are not consecutive: read the layer from the name
    if not m or not 0 <= int(m.group(1)) < info.n_layer:
        raise ValueError(f"name: cannot tell the layer of {name!r} (n_layer={info.n_layer})")
    return int(m.group(1))


@dataclasses.dataclass(frozen=True)
class _Where:
    """What the mixture rules look at for one tensor (llama_tensor_get_type_impl's locals)."""

    ftype: str
    default: str       # the file type's default block type
    n_cols: int        # row length
    info: ModelInfo
    i_attn_v: int      # attn_v-like tensors before this one, of n_attn_v
    n_attn_v: int
    i_layer: int       # the ffn layer index
    has_imatrix: bool

    falcon = property(lambda w: w.info.arch == "falcon")
    n_gqa = property(lambda w: w.info.n_gqa)
    n_expert = property(lambda w: w.info.n_expert)
    more_bits = property(lambda w: use_more_bits(w.i_layer, w.info.n_layer))       # ffn layers
    more_bits_v = property(lambda w: use_more_bits(w.i_attn_v, w.n_attn_v))       # attn_v tensors
    first_8th = property(lambda w: w.i_layer < w.info.n_layer // 8)
    first_16th = property(lambda w: w.i_layer < w.info.n_layer // 16)


class Rule(NamedTuple):
    """``ftypes`` (ANY: every file type) and ``when`` hold -> ``new``."""

    ftypes: tuple[str, ...]
    when: Callable[[_Where], bool]
    new: str


class After(NamedTuple):
    """For a tensor of ``categories``: ``ftypes`` and ``when(w, chosen type)`` hold -> ``new``."""

    categories: tuple[str, ...]
    ftypes: tuple[str, ...]
    when: Callable[[_Where, str], bool]
    new: str


ANY: tuple[str, ...] = ()


def _names(ftypes: tuple[str, ...], ftype: str) -> bool:
    return not ftypes or ftype in ftypes


def _always(w: _Where) -> bool:
    return True


_RULE_GROUP = {"attn_v": "attn_v", "attn_qkv": "attn_v", "attn_kv_b": "attn_v", "ffn_down": "ffn_down",
               "attn_output": "attn_output", "attn_k": "attn_k", "attn_q": "attn_q", "ffn_gate": "ffn_gate_up",
               "ffn_up": "ffn_gate_up"}
_MOE8_ATTN_OUTPUT = ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M",
                     "IQ4_XS")
_IQ2_SM = ("IQ2_S", "IQ2_M")

# llama_tensor_get_type_impl's if/else chains, one table per group of tensors; the first row that applies wins
MIXTURE_RULES: dict[str, tuple[Rule, ...]] = {
    "output": (  # output.weight, or token_embd.weight when the two are tied
        Rule(("MXFP4_MOE",), _always, "Q8_0"),
        Rule(ANY, lambda w: w.falcon or w.n_cols % ggml_type(w.default).block_size != 0, "Q8_0"),
        Rule(("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"), _always, "Q5_K"),
        Rule(ANY, lambda w: w.default != "Q8_0", "Q6_K"),
    ),
    "token_embd": (  # a token_embd.weight that is not tied to the output
        Rule(("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"), _always, "Q2_K"),
        Rule(("IQ2_S", "IQ2_M", "IQ3_XXS"), _always, "IQ3_S"),
        Rule(("TQ1_0", "TQ2_0", "Q2_0"), _always, "Q4_K"),
    ),
    # the IQ1_* / IQ2_* mixtures (LOW_BIT): one branch for every tensor, no MIXTURE_AFTER
    "low_bit attn_v": tuple(Rule(LOW_BIT, when, new) for when, new in (
        (lambda w: w.n_gqa >= 4 or w.n_expert >= 4, "Q4_K"),
        (lambda w: w.ftype in _IQ2_SM, "IQ3_S"),
        (_always, "Q2_K"))),
    "low_bit attn_k": (Rule(LOW_BIT, lambda w: w.n_expert == 8, "Q4_K"),),
    "low_bit ffn_down": (Rule(_IQ2_SM, lambda w: w.first_8th, "IQ3_S"), Rule(LOW_BIT, lambda w: w.first_8th, "Q2_K")),
    "low_bit attn_output": (
        Rule(LOW_BIT, lambda w: w.n_expert == 8, "Q5_K"),
        Rule(("IQ1_S", "IQ1_M"), _always, "IQ2_XXS"),
        Rule(_IQ2_SM, _always, "IQ3_S"),
    ),
    "attn_k": (
        Rule(ANY, lambda w: w.n_expert == 8, "Q8_0"),  # (also a MIXTURE_AFTER row: same result)
        Rule(("IQ3_XS",), _always, "IQ3_XXS"),
        Rule(("IQ3_XXS",), _always, "IQ2_S"),
    ),
    "attn_q": (Rule(("IQ3_XS",), _always, "IQ3_XXS"), Rule(("IQ3_XXS",), _always, "IQ2_S")),
    "ffn_gate_up": (  # ffn_gate and ffn_up, each with its own counter
        Rule(("IQ3_XS",), lambda w: w.info.n_layer // 8 <= w.i_layer < 7 * w.info.n_layer // 8, "IQ3_XXS"),
    ),
    "attn_v": (  # attn_v, attn_qkv, attn_kv_b
        Rule(("Q2_K",), lambda w: w.n_gqa >= 4, "Q4_K"),
        Rule(("Q2_K",), _always, "Q3_K"),
        Rule(("Q2_K_S",), lambda w: w.n_gqa >= 4, "Q4_K"),
        Rule(("IQ3_XXS",), lambda w: w.n_gqa >= 4, "Q4_K"),
        Rule(("IQ3_XXS",), lambda w: not w.has_imatrix, "IQ3_S"),
        Rule(("IQ3_XXS",), _always, "IQ3_XXS"),
        Rule(("IQ3_XS", "IQ3_S"), lambda w: w.n_gqa >= 4, "Q4_K"),
        Rule(("IQ3_M",), _always, "Q4_K"),
        Rule(("Q3_K_M",), lambda w: w.i_attn_v < 2, "Q5_K"),
        Rule(("Q3_K_M",), _always, "Q4_K"),
        Rule(("Q3_K_L",), _always, "Q5_K"),
        Rule(("IQ4_NL", "IQ4_XS"), lambda w: w.n_gqa >= 4, "Q5_K"),
        Rule(("Q4_K_M", "Q5_K_M"), lambda w: w.more_bits_v, "Q6_K"),
        Rule(("Q4_K_S",), lambda w: w.i_attn_v < 4, "Q5_K"),
    ),
    "ffn_down": (
        Rule(("Q2_K",), _always, "Q3_K"),
        Rule(("Q2_K_S",), lambda w: w.first_8th, "Q4_K"),
        Rule(("IQ3_XXS",), lambda w: not w.has_imatrix and w.first_8th, "Q4_K"),
        Rule(("IQ3_XXS",), lambda w: not w.has_imatrix, "Q3_K"),
        Rule(("Q3_K_M",), lambda w: w.first_16th, "Q5_K"),
        Rule(("Q3_K_M",), lambda w: not w.falcon or w.more_bits, "Q4_K"),
        Rule(("IQ3_M",), lambda w: w.first_8th or (w.n_expert == 8 and w.more_bits), "Q4_K"),
        Rule(("Q3_K_L",), lambda w: w.falcon, "Q4_K"),
        Rule(("Q3_K_L",), _always, "Q5_K"),
        Rule(("Q4_K_M",), lambda w: w.falcon and w.first_16th, "Q6_K"),
        Rule(("Q4_K_M",), lambda w: w.falcon and w.more_bits, "Q5_K"),
        Rule(("Q4_K_M",), lambda w: not w.falcon and w.more_bits, "Q6_K"),
        Rule(("IQ4_NL", "IQ4_XS"), lambda w: w.first_8th and not w.has_imatrix, "Q5_K"),
        Rule(("Q5_K_M",), lambda w: w.more_bits, "Q6_K"),
        Rule(("Q4_K_S",), lambda w: not w.falcon and w.first_8th, "Q5_K"),
        Rule(("Q4_0",), lambda w: w.has_imatrix and w.first_8th, "Q4_1"),
        Rule(("Q5_0",), lambda w: w.has_imatrix and w.first_8th, "Q5_1"),
    ),
    "attn_output": (
        Rule(_MOE8_ATTN_OUTPUT, lambda w: not w.falcon and w.n_expert == 8, "Q5_K"),
        Rule(("Q2_K",), lambda w: not w.falcon and w.n_expert != 8, "Q3_K"),
        Rule(("IQ3_XXS",), lambda w: not w.falcon and w.n_expert != 8, "IQ3_S"),
        Rule(("Q3_K_M", "IQ3_M"), lambda w: not w.falcon and w.n_expert != 8, "Q4_K"),
        Rule(("Q3_K_L",), lambda w: not w.falcon and w.n_expert != 8, "Q5_K"),
        Rule(("Q3_K_L",), lambda w: w.falcon, "Q4_K"),
    ),
}
# then, in order: changes to the type chosen above (not for the LOW_BIT mixtures: their branch has none).
# The attn_qkv rows follow the older llama_tensor_get_type; in src/llama-quant.cpp at 007dbbf the attn_v
# branch (category_is_attn_v includes ATTENTION_QKV) comes first, which would make them unreachable.
_ATTN_V_LIKE = ("attn_v", "attn_qkv", "attn_kv_b")
MIXTURE_AFTER: tuple[After, ...] = (
    # 8 heads share attn_v in a 70B model: a cheap place to spend bits
    After(_ATTN_V_LIKE, ANY, lambda w, new: w.info.is_70b and new in ("Q3_K", "Q4_K"), "Q5_K"),
    After((*_ATTN_V_LIKE, "attn_k"), ANY, lambda w, new: w.n_expert == 8, "Q8_0"),
    After(("attn_qkv",), ("Q3_K_M", "Q3_K_L", "IQ3_M"), lambda w, new: True, "Q4_K"),  # fused QKV
    After(("attn_qkv",), ("Q4_K_M",), lambda w, new: True, "Q5_K"),
    After(("attn_qkv",), ("Q5_K_M",), lambda w, new: True, "Q6_K"),
)


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_order(names: Iterable[str]) -> list[str]:
    """weight_name_comparer: non-layer tensors first (by name), then layer by layer, by name within."""
    return sorted(names, key=lambda n: (_layer_of(n), n))


def tensor_types(tensors: Any, ftype: str, info: ModelInfo | None = None, *, has_imatrix: bool = False) -> dict[str, str]:
    """The type of every tensor under a file type, as llama-quantize assigns it.

    tensors: {name: (type, shape)} (shape in NumPy order), a refquant.gguf.file.GGUFFile,
    or a refquant.model model (``.weights`` of float32 arrays, ``.metadata``); info defaults
    to the file's / model's metadata. Tensors that are not quantized keep their type.
    Returns {name: ggml type name} in llama.cpp's visiting order.
    """
    return _assign(tensors, ftype, info, has_imatrix)[0]


def _assign(tensors: Any, ftype: str, info: ModelInfo | None, has_imatrix: bool) -> tuple[dict[str, str], int]:
    """(types, how many tensors needed the fallback) — the preliminary loop of llama_model_quantize_impl."""
    if hasattr(tensors, "weights") and hasattr(tensors, "metadata"):  # a refquant.model model
        info = info or ModelInfo.from_metadata(tensors.metadata)
        entries = {n: ("F32", tuple(int(s) for s in w.shape)) for n, w in tensors.weights.items()}
    elif hasattr(tensors, "tensors") and hasattr(tensors, "metadata"):  # a GGUFFile
        info = info or ModelInfo.from_metadata(tensors.metadata)
        entries = {n: (t.type, tuple(t.shape)) for n, t in tensors.tensors.items()}
    else:
        entries = {n: (str(v[0]), tuple(int(s) for s in v[1])) for n, v in dict(tensors).items()}
    if info is None:
        raise ValueError("info: a ModelInfo is needed when tensors is a plain dict")
    ftype = _ftype_name(ftype)
    order = llama_order(entries)
    n_attn_v = sum(category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in order)
    tied = "output.weight" not in entries
    counters: Counter = Counter()
    out: dict[str, str] = {}
    n_fallback = 0
    for name in order:
        qtype, shape = entries[name]
        if not allows_quantization(name, shape):
            out[name] = qtype
            continue
        cat = category(name)
        counter = "attn_v" if cat in ("attn_v", "attn_qkv", "attn_kv_b") else cat
        chosen = mixture_type(name, shape, ftype, info, i_attn_v=counters["attn_v"], n_attn_v=n_attn_v,
                              i_ffn=counters[counter], tied_embeddings=tied, has_imatrix=has_imatrix)
        out[name] = fallback(chosen, shape[-1])
        n_fallback += out[name] != chosen
        counters[counter] += 1
    if not has_imatrix:  # tensor_requires_imatrix, on the first tensor (in order) that needs one
        needs = [n for n, t in out.items() if allows_quantization(n, entries[n][1])
                 and category(n) not in ("output", "token_embd")
                 and (t in NEEDS_IMATRIX or (t == "Q2_K" and ftype == "Q2_K_S"))]
        if needs:
            raise ValueError(f"imatrix: {ftype} needs an importance matrix (e.g. for {needs[0]}, {out[needs[0]]})")
    return out, n_fallback
