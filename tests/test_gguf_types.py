"""The ggml type table agrees with libggml's own type traits, and llama.cpp coexists with the oracle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from refquant.gguf.types import BY_ID, GGML_TYPES, ggml_type, row_bytes
from refquant.testing.ggml import lib


@pytest.mark.parametrize("name", list(GGML_TYPES))
def test_block_and_type_size_match_libggml(name):
    t = GGML_TYPES[name]
    traits = lib().ggml_get_type_traits(t.id).contents
    assert (traits.blck_size, traits.type_size) == (t.block_size, t.type_size)
    assert traits.type_name.decode().upper() == name


def test_lookup_by_name_id_and_enum():
    import gguf

    assert ggml_type("q4_k") is ggml_type(12) is ggml_type(gguf.GGMLQuantizationType.Q4_K) is GGML_TYPES["Q4_K"]
    assert BY_ID[8].name == "Q8_0"
    assert row_bytes("Q4_K", 512) == 288
    with pytest.raises(ValueError, match="qtype: unknown ggml type"):
        ggml_type("Q9_9")
    with pytest.raises(ValueError, match="n_per_row: 100 is not a multiple"):
        row_bytes("Q4_0", 100)


def test_libggml_oracle_then_llama_cpp_in_one_process():
    # Both ship a libggml-base.so with one soname; the oracle loads llama.cpp's first so that
    # `import llama_cpp` still works after the oracle was used (see refquant/testing/ggml.py).
    code = ("from refquant.testing.ggml import ggml_quantize; import numpy as np;"
            "ggml_quantize(np.ones((1, 32), np.float32), 'Q4_0');"
            "import llama_cpp; llama_cpp.llama_backend_init(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
