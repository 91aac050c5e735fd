"""refquant's conformance kit: Hypothesis strategies and oracle adapters.

Use it to prove *your* quantization kernel right against the same oracles refquant's
own tests use::

    from refquant.testing import strategies as st_rq
    from refquant.testing.ggml import ggml_quantize      # libggml's ggml_quantize_chunk

    @given(st_rq.rows(block=32))
    def test_my_q4_0(x):
        assert my_q4_0(x).tobytes() == ggml_quantize(x, "Q4_0").tobytes()

Oracle modules import their library lazily and raise ``OracleUnavailable`` (an
ImportError) naming the package to install when it is missing.
"""


class OracleUnavailable(ImportError):
    """The oracle's library is not installed; the message names the package."""


__all__ = ["OracleUnavailable"]
