"""Arithmetic whose result does not depend on the machine the simulator runs on.

BLAS (``@``, ``np.matmul``, ``np.einsum``'s BLAS path, ``np.dot``) sums in an order that
depends on the kernel (CPU model, ``OPENBLAS_CORETYPE``), on FMA use and on the thread count,
so the last bits of a product differ between machines, and after the recording's
quantisation so do the bytes. The simulator therefore multiplies small matrices with
explicit element-wise products summed in a fixed order (IEEE multiply and add are exact
operations everywhere), and runs its one large product (the face mesh) through BLAS on
values placed on a dyadic grid, where every product and every partial sum is exactly
representable in float64: any summation order, any kernel gives the same bits.

Elementary functions: numpy's SIMD loops for float32 sin/cos/exp and float64 exp/power
give other last bits with or without AVX2/FMA and AVX-512, so the simulator calls
:func:`sin`, :func:`cos`, :func:`exp` and :func:`power` here instead (checked by
tests/test_synth.py with numpy's CPU features switched off).
"""

from __future__ import annotations

import numpy as np

from ..errors import SemioFedError

GRID_BITS = 22  # operands on multiples of 2**-22; products on multiples of 2**-44
_EXACT_LIMIT = 2.0 ** (53 - 2 * GRID_BITS)  # a float64 holds 53 bits: sums below this are exact


def apply_matrix(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``out[..., i] = sum_j m[..., i, j] * p[..., j]``, summed over j = 0, 1, 2 in order.

    ``m[..., :, j]`` and ``p[..., j, None]`` must broadcast (e.g. m (3, 3) with points
    (T, N, 3); m (T, 3, 3) with p (T, 3); m (T, 1, 3, 3) with p (T, N, 3) or (N, 3)).
    """
    out = m[..., 0] * p[..., 0, None]
    for j in range(1, m.shape[-1]):
        out = out + m[..., j] * p[..., j, None]
    return out


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for small (stacked) matrices, summed over the inner index in order."""
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for j in range(1, a.shape[-1]):
        out = out + a[..., :, j, None] * b[..., None, j, :]
    return out


def to_grid(x: np.ndarray) -> np.ndarray:
    """float64 copy of ``x`` rounded to the nearest multiple of ``2**-GRID_BITS``."""
    scale = float(2**GRID_BITS)
    return np.rint(np.asarray(x, dtype=np.float64) * scale) / scale


class GridProduct:
    """``coeff @ basis`` exactly, through BLAS: both operands on the dyadic grid.

    The result is exact (so identical on every machine) while every partial sum stays
    below ``2**(53 - 2 * GRID_BITS)`` in magnitude, which :meth:`__call__` checks.
    """

    def __init__(self, basis: np.ndarray) -> None:
        self.basis = to_grid(basis)
        self.basis_max = float(np.abs(self.basis).max())

    def __call__(self, coeff: np.ndarray) -> np.ndarray:
        c = to_grid(coeff)
        bound = float(np.abs(c).sum(axis=1).max(initial=0.0)) * self.basis_max
        if bound >= _EXACT_LIMIT:
            raise SemioFedError(
                f"face coefficients too large for an exact product ({bound:.1f} >= {_EXACT_LIMIT})"
            )
        return c @ self.basis


def _float_type(*args: np.ndarray | float) -> np.dtype:
    """The float type numpy itself would return (Python scalars are weak)."""
    dtype = np.result_type(*args)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def sin(x: np.ndarray | float) -> np.ndarray:
    """``np.sin`` through its float64 loop (the same on every x86 feature level; numpy's
    float32 loop differs with FMA), rounded back to the input's float type."""
    return np.sin(np.asarray(x, dtype=np.float64)).astype(_float_type(x))


def cos(x: np.ndarray | float) -> np.ndarray:
    """``np.cos`` like :func:`sin`."""
    return np.cos(np.asarray(x, dtype=np.float64)).astype(_float_type(x))


def exp(x: np.ndarray | float) -> np.ndarray:
    """``np.exp`` in long double (scalar libm; numpy's float32/float64 loops differ with AVX2
    and AVX-512), rounded back to the input's float type."""
    return np.exp(np.asarray(x, dtype=np.longdouble)).astype(_float_type(x))


def power(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """``x ** y`` in long double, like :func:`exp`."""
    ld = np.longdouble
    return np.power(np.asarray(x, dtype=ld), np.asarray(y, dtype=ld)).astype(_float_type(x, y))
