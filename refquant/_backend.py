"""Backends: one code path for NumPy, CuPy, torch and array-api-strict.

Every numeric function in refquant starts with ``xp = namespace(x)`` and uses only
array-API spec functions on ``xp`` (``xp.where``, ``xp.astype``, ``xp.clip``...), so the
same lines run on any conforming array library. Bytes are a NumPy affair: packing,
``view`` and ``tobytes`` live at the NumPy edge (``to_numpy`` / ``from_numpy``).

    xp = namespace(x)              # the array's own namespace (array-api-compat wrapped)
    a  = to_numpy(x)               # host NumPy copy (CuPy -> .get(), torch -> .cpu())
    y  = from_numpy(a, like=x)     # back onto x's namespace and device

A few spec operations have a faster spelling in some libraries, and hot loops use it through
the helpers below (same values, fewer passes over memory): ``rint_`` and ``clamp_`` round and
clamp a float array in place where the library can (NumPy/CuPy ``out=``, torch's ``round_`` /
``clamp_``; the array-api-compat ``clip`` on torch is several torch ops, ``torch.clamp`` one);
``min_max`` is torch's single ``aminmax`` pass where one axis is reduced.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device as _device, is_numpy_array
from array_api_compat import is_cupy_array, is_torch_array

__all__ = ["namespace", "to_numpy", "from_numpy", "device", "is_numpy", "backend_name", "rint_", "clamp_",
           "min_max"]


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


# --------------------------------------------------------------------------- fused / in-place ops


def rint_(x: Any) -> Any:
    """round(x), ties to even, written over ``x`` where the library can; use the returned array.

    Same values as the array-API ``xp.round`` (NumPy's ``round`` is ``rint``; torch's ``round``
    rounds half to even). Namespaces without an in-place form get ``xp.round(x)``.

    >>> a = np.float32([0.5, 1.5, -2.5]); rint_(a) is a, a.tolist()
    (True, [0.0, 2.0, -2.0])
    """
    if isinstance(x, np.generic):                  # a NumPy scalar (0-d arithmetic result)
        return np.rint(x)
    if isinstance(x, np.ndarray) or is_cupy_array(x):
        return _module(x).rint(x, out=x)
    if is_torch_array(x):
        return x.round_()
    return namespace(x).round(x)


def clamp_(x: Any, lo: Any, hi: Any) -> Any:
    """min(max(x, lo), hi), over ``x`` where the library can; use the returned array.

    lo <= hi: Python floats, or arrays of x's namespace and dtype that broadcast into x's shape
    (per-block bounds). Same values as the array-API ``xp.clip(x, lo, hi)``; NaN stays NaN.

    >>> a = np.float32([-3.0, 0.25, 9.0]); clamp_(a, -1.0, 1.0) is a, a.tolist()
    (True, [-1.0, 0.25, 1.0])
    """
    if isinstance(x, np.generic):
        return np.clip(x, lo, hi)
    if isinstance(x, np.ndarray) or is_cupy_array(x):
        return _module(x).clip(x, lo, hi, out=x)
    if is_torch_array(x):
        return x.clamp_(lo, hi)
    return namespace(x).clip(x, lo, hi)


def min_max(x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    """(min, max) of ``x`` over ``axes``, keepdims; NaN propagates into both (array-API min/max).

    torch reads the data once for both (``torch.aminmax``) when one axis is reduced; other
    libraries take two passes.

    >>> lo, hi = min_max(np.float32([[1, -2], [3, 0]]), (1,)); lo.tolist(), hi.tolist()
    ([[-2.0], [0.0]], [[1.0], [3.0]])
    """
    if is_torch_array(x) and (len(axes) == 1 or len(axes) == x.ndim):
        import torch

        if len(axes) == 1:
            return tuple(torch.aminmax(x, dim=axes[0], keepdim=True))
        lo, hi = torch.aminmax(x)                                  # every axis: 0-d results
        return lo.reshape((1,) * x.ndim), hi.reshape((1,) * x.ndim)
    xp = namespace(x)
    return xp.min(x, axis=axes, keepdims=True), xp.max(x, axis=axes, keepdims=True)


def _module(x: Any) -> Any:
    """The NumPy or CuPy module itself (not the compat namespace): for their ``out=`` arguments."""
    if isinstance(x, np.ndarray):
        return np
    import cupy

    return cupy
