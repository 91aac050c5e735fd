"""Backends: one code path for NumPy, CuPy, torch and array-api-strict.

Every numeric function in refquant starts with ``xp = namespace(x)`` and uses only
array-API spec functions on ``xp`` (``xp.where``, ``xp.astype``, ``xp.clip``...), so the
same lines run on any conforming array library. Bytes are a NumPy affair: packing,
``view`` and ``tobytes`` live at the NumPy edge (``to_numpy`` / ``from_numpy``).

    xp = namespace(x)              # the array's own namespace (array-api-compat wrapped)
    a  = to_numpy(x)               # host NumPy copy (CuPy -> .get(), torch -> .cpu())
    y  = from_numpy(a, like=x)     # back onto x's namespace and device
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device as _device, is_numpy_array
from array_api_compat import is_cupy_array, is_torch_array

__all__ = ["namespace", "to_numpy", "from_numpy", "device", "is_numpy", "backend_name"]


def namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays`` (NumPy for Python scalars/lists).

    >>> namespace(np.zeros(2)).__name__, namespace().__name__
    ('array_api_compat.numpy', 'array_api_compat.numpy')
    """
    arrays = tuple(a for a in arrays if a is not None)
    if not arrays:
        return array_namespace(np.empty(0))
    return array_namespace(*arrays)


def is_numpy(x: Any) -> bool:
    return is_numpy_array(x)


def backend_name(x: Any) -> str:
    """'numpy', 'cupy', 'torch' or the namespace's module name (e.g. 'array_api_strict').

    >>> import array_api_strict
    >>> backend_name(np.zeros(2)), backend_name(array_api_strict.zeros(2))
    ('numpy', 'array_api_strict')
    """
    if is_numpy_array(x):
        return "numpy"
    if is_cupy_array(x):
        return "cupy"
    if is_torch_array(x):
        return "torch"
    return namespace(x).__name__.split(".")[0]


def device(x: Any) -> Any:
    """The device an array lives on (array-API ``device``)."""
    return _device(x)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array holding the same values as ``x`` (copied off a GPU if needed).

    >>> import array_api_strict
    >>> to_numpy(array_api_strict.asarray([1.5, -2.0])).tolist(), to_numpy([1, 2]).tolist()
    ([1.5, -2.0], [1, 2])
    """
    if isinstance(x, np.ndarray):
        return x
    if is_cupy_array(x):
        return x.get()
    if is_torch_array(x):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: widen exactly
            t = t.float()
        return t.numpy()
    if np.isscalar(x) or isinstance(x, (list, tuple)):
        return np.asarray(x)
    # array-api-strict and other DLPack-capable arrays
    try:
        return np.from_dlpack(x)
    except (TypeError, AttributeError, BufferError, RuntimeError):
        return np.asarray(x)


def from_numpy(a: np.ndarray, like: Any = None, xp: Any = None) -> Any:
    """``a`` moved onto the namespace (and device) of ``like`` — or of ``xp`` if given.

    >>> import array_api_strict
    >>> y = from_numpy(np.float32([1, 2]), like=array_api_strict.zeros(1))
    >>> backend_name(y), to_numpy(y).tolist()
    ('array_api_strict', [1.0, 2.0])
    """
    if xp is None:
        if like is None or is_numpy_array(like):
            return np.asarray(a)
        xp = namespace(like)
    if xp.__name__.endswith("numpy") and "compat" not in xp.__name__ and "strict" not in xp.__name__:
        return np.asarray(a)
    dev = _device(like) if like is not None else None
    a = np.ascontiguousarray(a)
    if dev is not None:
        try:
            return xp.asarray(a, device=dev)
        except (TypeError, ValueError):
            pass
    return xp.asarray(a)
