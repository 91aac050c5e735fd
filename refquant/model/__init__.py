"""A NumPy Llama runtime for GGUF models (SmolLM2-135M-Instruct by default).

    from refquant.model import load_model, perplexity
    from refquant.model.data import evaluation_text

    model = load_model()                                   # the shipped SmolLM2-135M Q4_1 GGUF
    tokens = model.tokenize(evaluation_text())
    perplexity(model, tokens, window=512, max_windows=4)   # -> PerplexityResult(ppl=..., ...)
    model.with_weights({"blk.0.attn_q.weight": W_hat})     # same forward pass, one weight swapped

Modules: ``loader`` (GGUF -> config + float32 weights), ``tokenizer`` (byte-level BPE from
the file), ``llama`` (the forward pass), ``ppl`` (perplexity), ``data`` (the fixed text split),
``calibration`` (each block's linear inputs, block by block: the driver that
``refquant.blockwise``'s GPTQ, AWQ and ``calibrate`` run on).
"""

from . import data
from .calibration import block_inputs, walk_blocks
from .llama import LlamaModel, load_model
from .loader import LlamaConfig
from .ppl import PerplexityResult, perplexity, windows

__all__ = ["LlamaModel", "LlamaConfig", "load_model", "perplexity", "PerplexityResult", "windows",
           "block_inputs", "walk_blocks", "data"]
