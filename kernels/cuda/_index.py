"""Integer index arithmetic shared by the kernels (device functions).

imin/imax stand in for the builtins min/max, whose int overloads Numba 0.68's CUDA
target fails to compile ("Signature mismatch") although its simulator runs them.
"""
from numba import cuda


@cuda.jit(device=True)
def imin(a, b):
    return a if a < b else b


@cuda.jit(device=True)
def imax(a, b):
    return a if a > b else b


@cuda.jit(device=True)
def split3(flat, rows, cols):
    """flat = (a*rows + b)*cols + c -> (a, b, c)."""
    c = flat % cols
    rest = flat // cols
    return rest // rows, rest % rows, c
