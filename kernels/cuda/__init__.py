"""convkit.cuda: Numba CUDA kernels for every convkit primitive (device="cuda").

Importing it registers the device="cuda" rows of convkit's registry. It needs Numba;
without a GPU (and without NUMBA_ENABLE_CUDASIM=1) the rows stay registered and every
call raises RuntimeError("no CUDA device: ...").
"""
try:
    import numba.cuda  # noqa: F401
except ImportError as exc:
    raise ImportError(f"convkit's CUDA kernels need Numba (pip install 'convkit[cuda]'): {exc}") from exc

from ._device import as_device_or_host_array, device_error, device_name, tiles
from ._ops import add_bias, crop_bottom_right, pad_bottom_right, reduce_bias_grad
from . import _impl  # noqa: F401  (registers the rows)

__all__ = ["as_device_or_host_array", "add_bias", "crop_bottom_right", "pad_bottom_right", "reduce_bias_grad",
           "device_error", "device_name", "tiles"]
