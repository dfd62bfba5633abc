"""convkit: fast 2-D convolution and pooling kernels with a float64 NumPy reference.

The ops follow torch.nn.functional's signatures; ``algo=`` and ``device=`` pick the
implementation (see ``convkit.implementations()``), ``convkit.reference`` is the truth.
"""
from ._version import __version__
from ._runtime import get_isa, get_num_threads, set_isa, set_num_threads
from ._runtime import get_im2col_buffer_limit, set_im2col_buffer_limit
from .functional import (
    avg_pool2d,
    avg_pool2d_backward,
    conv2d,
    conv2d_backward,
    conv_transpose2d,
    conv_transpose2d_backward,
    depthwise_conv2d,
    depthwise_conv2d_backward,
    global_avg_pool2d,
    global_avg_pool2d_backward,
    global_max_pool2d,
    global_max_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    maxout2d,
    maxout2d_backward,
    separable_conv2d,
    separable_conv2d_backward,
)
from ._registry import implementations
from ._auto import autotune, explain
from ._info import info
from . import reference

__all__ = [
    "__version__", "info", "implementations", "reference", "autotune", "explain",
    "set_num_threads", "get_num_threads", "set_isa", "get_isa",
    "set_im2col_buffer_limit", "get_im2col_buffer_limit",
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "depthwise_conv2d", "depthwise_conv2d_backward", "separable_conv2d", "separable_conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "global_avg_pool2d", "global_avg_pool2d_backward", "global_max_pool2d", "global_max_pool2d_backward",
    "maxout2d", "maxout2d_backward",
]
