"""Where the arrays live, whether there is a device, and the launch-shape knobs.

Contract of the helpers here (every kernel wrapper follows it):
- ``as_device_or_host_array`` returns a Numba device array (no copy) for anything that
  lives on the GPU (Numba device arrays, objects with ``__cuda_array_interface__`` such as
  CuPy arrays and PyTorch CUDA tensors), otherwise a NumPy array (a view when possible).
- ``Staged`` moves the host arrays of one call to the device and brings the result back:
  if any input was a device array the result stays on the device (a Numba device array,
  which itself exports ``__cuda_array_interface__``, so ``cupy.asarray(y)`` or
  ``torch.as_tensor(y, device="cuda")`` wrap it without a copy); otherwise it is copied
  to a new NumPy array. Kernels never write into an input.
- ``Tiles`` holds the block-shape ceilings the launchers derive their configuration from;
  ``tiles(...)`` changes them for a block of code (tests use tiny blocks so the simulator,
  which runs every GPU thread as a Python thread, stays fast and edge tiles get hit).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools

import numba
import numpy as np
from numba import cuda

from convkit import _args

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

if SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _DeviceArray
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray as _DeviceArray

# Static shared memory per block that every CUDA GPU since compute capability 2.0 offers
# without opting in; launchers shrink their tiles to fit under it.
SHARED_BYTES = 48 * 1024


@functools.lru_cache(maxsize=None)
def device_error() -> str | None:
    """None when kernels can run (a GPU, or Numba's simulator), else why they cannot."""
    if SIMULATOR:
        return None
    try:
        cuda.current_context()
    except Exception as exc:  # CudaSupportError, a driver error: report, never crash
        return " ".join(str(exc).split()).rstrip(" :") or type(exc).__name__
    return None


def device_name() -> str:
    if SIMULATOR:
        return "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def require_device() -> None:
    reason = device_error()
    if reason is not None:
        raise RuntimeError(f"no CUDA device: {reason} (device='cuda' needs an NVIDIA GPU and its driver; "
                           f"NUMBA_ENABLE_CUDASIM=1 runs the kernels in Numba's simulator instead)")


def sm_count() -> int:
    """Streaming multiprocessors, to size grids that must fill the GPU (split reductions)."""
    return 2 if SIMULATOR else int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


# ------------------------------------------------------------------------ array placement
def is_device_array(a) -> bool:
    return isinstance(a, _DeviceArray)


def _from_cuda_array_interface(x):
    """A device array over the memory an object exports through __cuda_array_interface__."""
    if not SIMULATOR:
        return cuda.as_cuda_array(x)
    # The simulator's "device memory" is host memory: view the exported pointer directly,
    # so objects that follow the protocol are tested without a copy here too.
    cai = x.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    strides = cai.get("strides") or tuple(np.cumprod((1, *shape[:0:-1]))[::-1] * dtype.itemsize)
    extent = sum((n - 1) * s for n, s in zip(shape, strides)) + dtype.itemsize if all(shape) else 0
    raw = (ctypes.c_char * extent).from_address(cai["data"][0])
    return _DeviceArray(np.ndarray(shape, dtype, buffer=raw, strides=strides))


def as_device_or_host_array(x, name: str, *, dtypes=_args.FLOAT_DTYPES):
    """A device array for GPU-resident input (no copy), else a NumPy array.

    ``dtypes``: the accepted dtypes (float32/float64), or None for any (max-pool indices,
    which the caller checks). Raises RuntimeError when there is no device to run on,
    TypeError for another dtype.
    """
    require_device()
    if is_device_array(x):
        arr = x
    elif hasattr(x, "__cuda_array_interface__"):
        arr = _from_cuda_array_interface(x)
    elif dtypes is _args.FLOAT_DTYPES:
        return _args.as_array(x, name)
    else:
        arr = np.asarray(x)
    if dtypes is not None and np.dtype(arr.dtype) not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(d) for d in dtypes)}, got {arr.dtype} "
                        f"with shape {_args.shape_of(arr)}")
    return arr


class Staged:
    """One call's arrays on the device; ``result`` decides where the output goes."""

    def __init__(self, *arrays):
        require_device()
        self.on_device = any(is_device_array(a) for a in arrays if a is not None)

    @staticmethod
    def put(a):
        if a is None or is_device_array(a):
            return a
        return cuda.to_device(np.ascontiguousarray(a))

    def result(self, d):
        return d if self.on_device else d.copy_to_host()


def empty(shape, dtype):
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


@functools.lru_cache(maxsize=None)
def _placeholder(dtype):
    return cuda.device_array((1,), dtype=dtype)


def optional(a, dtype):
    """An optional 1-D operand (bias) as a kernel argument: a 1-element placeholder if None.

    Kernels take a flag beside it; the placeholder keeps one compiled signature for both.
    """
    return _placeholder(np.dtype(dtype)) if a is None else a


# ------------------------------------------------------------------------- launch shapes
@dataclasses.dataclass(frozen=True)
class Tiles:
    """Ceilings of the block shapes; each launcher clamps them to its problem's shape.

    direct_block:  output pixels (width, height) per block of the tiled direct conv
    direct_channels: output channels each thread of the direct conv accumulates
    gemm:          implicit GEMM (BM, BN, BR, TM, TN): a BM x BN output tile per block,
                   reduction slices of BR, a TM x TN register tile per thread
    reduce_threads: threads of a block that reduces (grad-weight, bias gradient)
    map_block:     (x, y) threads of the one-thread-per-element kernels (pooling, copies)
    fill_blocks:   blocks a split reduction aims for; None = 4 per multiprocessor
    """

    direct_block: tuple = (16, 8)
    direct_channels: int = 4
    gemm: tuple = (64, 64, 8, 4, 4)
    reduce_threads: int = 256
    map_block: tuple = (32, 8)
    fill_blocks: int | None = None


_tiles = Tiles()


def current_tiles() -> Tiles:
    return _tiles


@contextlib.contextmanager
def tiles(**changes):
    """Run a block of code with other tile ceilings, e.g. ``tiles(direct_block=(4, 4))``."""
    global _tiles
    saved, _tiles = _tiles, dataclasses.replace(_tiles, **changes)
    try:
        yield _tiles
    finally:
        _tiles = saved


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pow2_at_most(n: int, ceiling: int) -> int:
    """The smallest power of two >= n, capped by ceiling: a block no larger than the problem.

    Powers of two keep the set of compiled tile shapes small (kernels are cached per tile).
    """
    p = 1
    while p < n and p < ceiling:
        p *= 2
    return min(p, ceiling)


def split_reduction(length: int, blocks: int, min_chunk: int, align: int = 1, max_splits: int = 65535) -> tuple:
    """(splits, chunk): cut a reduction of `length` so blocks*splits fills the GPU.

    `blocks` is the grid without splitting; each split keeps at least min_chunk elements
    (so partials stay worth their workspace) and chunk is a multiple of `align`.
    """
    want = current_tiles().fill_blocks or 4 * sm_count()
    splits = max(1, min(ceil_div(want, blocks), ceil_div(length, min_chunk), max_splits))
    chunk = max(1, ceil_div(ceil_div(length, splits), align)) * align
    return max(1, ceil_div(length, chunk)), chunk  # an empty reduction: one split writes zeros


def numba_type(dtype):
    return numba.from_dtype(np.dtype(dtype))


def launch(kern, grid, block, *args) -> None:
    """kern[grid, block](*args), or nothing for empty work (CUDA refuses a zero grid size)."""
    grid = grid if isinstance(grid, tuple) else (grid,)
    if any(g > 65535 for g in grid[1:]):  # grid x may reach 2**31 - 1; y and z may not
        name = getattr(kern, "__name__", "a kernel")
        raise ValueError(f"{name}: grid {grid} exceeds CUDA's 65535 blocks in y or z (batch, channels or "
                         f"groups*splits too large for one launch)")
    if all(grid):
        kern[grid, block](*args)


def kernel(fn, name: str):
    """cuda.jit a kernel under a name that says what specialises it (shown by profilers)."""
    fn.__name__ = fn.__qualname__ = name
    return cuda.jit(fn)


def dtype_tag(dtype) -> str:
    return {4: "f32", 8: "f64"}[np.dtype(dtype).itemsize]
