"""GPTQ vs AWQ at 3 bits, your driver. See README.md; check with

    EXERCISE=starter python -m pytest exercises/gptq_vs_awq_3bit -q

Write your results into starter_results.json (or <your attempt>_results.json).
"""

from refquant import awq, gptq  # noqa: F401  (call gptq.gptq_quantize, awq.search_scale ... through these)
from refquant.model.calibration import embedded_windows  # noqa: F401

METHODS = ("gptq", "gptq_act_order", "awq")


def quantize_blocks(model, calib_tokens, method: str, bits: int = 3, group_size: int = 128, window: int = 64,
                    blocks=(0, 1)) -> dict:
    """Quantize the 7 linears of each block in ``blocks`` with ``method``, block by block.

    -> {GGUF name: Ŵ (out, in)} — the effective weights, ready for model.with_weights.
    """
    raise NotImplementedError("quantize_blocks: walk the blocks; each sees the quantized blocks before it")
