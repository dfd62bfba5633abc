"""convkit's ops as PyTorch operators: swap ``F.conv2d`` for ``convkit.torch.conv2d`` and train.

Needs PyTorch (``pip install "convkit[torch]"``); ``import convkit`` never imports it.

Each kernel is a ``torch.library.custom_op`` in the ``convkit`` namespace
(``torch.ops.convkit.conv2d`` ...) with

- a fake kernel (``register_fake``): output shapes from convkit's own argument checks, so
  FakeTensor tracing and ``torch.compile`` see the op without running it;
- an autograd formula (``register_autograd``) whose backward is itself a custom op
  (``convkit::conv2d_backward`` ...) that calls convkit's ``*_backward`` function and
  computes only the gradients autograd asks for (``ctx.needs_input_grad``).

Why custom_op and not ``torch.autograd.Function``: AOTAutograd (torch.compile) traces the
backward with fake tensors too; a Python backward that hands tensors to NumPy cannot be
traced, a backward custom op with a fake kernel can. A second derivative is not offered:
asking for one raises PyTorch's "autograd not registered" error for the backward op. The
price: PyTorch's custom-op dispatch adds 20-30 microseconds to every call that records a
gradient (it matters only for tiny layers), and the first call imports torch._dynamo
(seconds, once). A call with nothing to record or trace (inference, torch.no_grad) goes
straight to the kernel (see _eager_or).

Threads: convkit's kernels run on PyTorch's OpenMP threads (share_torch_threads).

Memory: a contiguous CPU tensor reaches the kernels as a NumPy view of its own storage
(``Tensor.numpy()``) and the kernel's new result array becomes the output tensor as it is
(``torch.from_numpy``): no copy either way. A non-contiguous tensor is made contiguous
once. CUDA tensors go to convkit's Numba CUDA backend (``device="cuda"``) as Numba views of
their memory (``__cuda_array_interface__``), and its device arrays come back the same way
(``torch.as_tensor``). The kernels run on Numba's default stream, the legacy default stream
that PyTorch also uses unless told otherwise: code that switches PyTorch to another stream
must synchronise around these ops.

The public functions below have torch.nn.functional's signatures; depthwise, separable and
global pooling are compositions of the custom ops, so autograd chains through them.
Beyond torch: conv2d's ``padding`` also takes ``(top, bottom, left, right)`` and ``"same"``
at any stride (TensorFlow's rule: output ``ceil(H / stride)``, the odd pixel at the
bottom/right).
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.library import custom_op

from convkit import _args, _cpu
from convkit import functional as ck

__all__ = [
    "conv2d", "conv_transpose2d", "depthwise_conv2d", "separable_conv2d",
    "max_pool2d", "avg_pool2d", "global_avg_pool2d", "global_max_pool2d", "share_torch_threads",
]


# ------------------------------------------------------------------ one thread team
def _torch_gomp_parallel() -> int:
    """The address of GOMP_parallel in the OpenMP runtime PyTorch runs on; 0 if there is none.

    The runtime is the one already loaded from PyTorch's own directory (its wheels ship
    libgomp there), or else the only OpenMP runtime loaded at all; never a new one.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return 0
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "/libgomp" in line or "/libiomp5" in line}
    except OSError:  # not Linux
        return 0
    ours = [p for p in loaded if p.startswith(os.path.dirname(torch.__file__) + os.sep)]
    runtimes = ours or list(loaded)
    if len(runtimes) != 1:
        return 0
    try:
        lib = ctypes.CDLL(runtimes[0], mode=os.RTLD_NOLOAD)
        return ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0


def share_torch_threads(enabled: bool = True) -> bool:
    """Run convkit's CPU kernels on PyTorch's OpenMP threads (the default once convkit.torch
    is imported) or on convkit's own (False). Returns whether they now run on PyTorch's.

    Why: between two PyTorch ops its OpenMP workers spin for the next parallel region for
    milliseconds (GOMP_SPINCOUNT). A convkit op that starts meanwhile on its own threads
    shares a core with a spinner whenever threads == cores: a ResNet block's training step
    took 1.24x PyTorch's with 2 threads on 2 cores, although every convolution in it alone
    ran at 0.96-0.99x; on PyTorch's team the spinning worker takes convkit's job at once
    (0.8-0.9x). The other side: on an oversubscribed machine libgomp's spinning barriers
    cost more than convkit's yielding pool (the same block under a load of 6 on 2 cores:
    0.75x PyTorch's step time on its team, 0.51x on convkit's own threads), so a busy
    server may prefer False. Results do not change (work is split by task, not thread).
    """
    address = _torch_gomp_parallel() if enabled else 0
    _cpu.set_fork_join(address)
    return bool(address)


share_torch_threads()


# ------------------------------------------------------------- tensors <-> kernel arrays
def _backend_device(t: Tensor) -> str:
    """convkit's device for a tensor's: CPU tensors to the C++ kernels, CUDA ones to Numba.
    (is_cpu first: building t.device costs a tiny layer's call 0.4 us.)"""
    if t.is_cpu:
        return "cpu"
    if t.device.type == "cuda":
        return "cuda"
    raise ValueError(f"convkit.torch runs on CPU and CUDA tensors, got a tensor on {t.device}")


def _array(t: Optional[Tensor]):
    """What the kernels read: a NumPy (CPU) or Numba (CUDA) array viewing the tensor's memory."""
    if t is None:
        return None
    if t.requires_grad:  # (detach costs more than the check)
        t = t.detach()
    t = t.contiguous()  # returns t itself when it already is contiguous
    if t.is_cpu:
        return t.numpy()
    from numba import cuda  # the CUDA backend's own dependency (convkit[cuda])

    return cuda.as_cuda_array(t)  # reads __cuda_array_interface__, keeps t alive


def _tensor(arr, like: Tensor) -> Tensor:
    """A kernel's result as a tensor on like's device, sharing its memory (the result is new:
    nothing else holds it)."""
    return torch.from_numpy(arr) if like.is_cpu else torch.as_tensor(arr, device=like.device)


def _grads(arrays, like: Tensor) -> tuple:
    """Gradients as tensors; one that was not asked for is an empty tensor (ops return no None)."""
    return tuple(like.new_empty(0) if a is None else _tensor(a, like) for a in arrays)


def _needed(grads, needs) -> tuple:
    return tuple(g if need else None for g, need in zip(grads, needs))


# ------------------------------------------------------------------ dispatch or not
_kernels: dict = {}  # custom op -> the Python function it runs on CPU and CUDA tensors


def _op(name: str):
    """torch.library.custom_op(name), its kernel remembered for _eager_or."""
    def define(fn):
        op = custom_op(name, mutates_args=())(fn)
        _kernels[op] = fn
        return op

    return define


_PLAIN = (Tensor, torch.nn.Parameter)
_C = torch._C
# Anything that needs to see the op in PyTorch's dispatcher: modes (FakeTensor, tracing by
# make_fx or AOTAutograd, FlopCounter...), torch function modes, functorch transforms
# (vmap, grad), the profiler, TorchScript tracing. (Private functions: a PyTorch without
# them always dispatches.)
_WATCHERS = tuple(getattr(_C, name, lambda: True) for name in (
    "_len_torch_dispatch_stack", "_is_torch_function_mode_enabled", "_are_functorch_transforms_active",
    "_get_tracing_state")) + (getattr(_C._autograd, "_profiler_enabled", lambda: True),)


def _eager_or(op, *tensors):
    """op, or the Python kernel it would run when dispatching would add nothing but its cost
    (about 20 us a call through custom_op's Python layers, several times a tiny layer's
    kernel): CPU tensors that are plain Tensors or Parameters, no gradient to record, and
    nothing that watches or traces ops (torch.compile, modes, transforms, the profiler)."""
    if torch.compiler.is_compiling():
        return op
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or not t.is_cpu or grad and t.requires_grad):
            return op
    for watching in _WATCHERS:
        if watching():
            return op
    return _kernels[op]


def _batched(x: Tensor) -> tuple:
    """torch.nn.functional also takes an unbatched (C, H, W) input; the kernels want (N, C, H, W)."""
    return (x.unsqueeze(0), True) if x.dim() == 3 else (x, False)


def _unbatched(y: Tensor, was: bool) -> Tensor:
    return y.squeeze(0) if was else y


# --------------------------------------------------------------------- conv custom ops
# conv2d and conv_transpose2d share one autograd shape: (input, weight, bias, *params) in,
# (grad_input, grad_weight, grad_bias) from one backward op that takes a "need" mask.
def _conv_autograd(op, backward_op):
    def setup_context(ctx, inputs, output):
        input, weight, _bias, *params = inputs
        ctx.save_for_backward(input, weight)
        ctx.params = params

    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:3])
        grads = backward_op(grad_output, input, weight, *ctx.params, needs)
        return (*_needed(grads, needs), *(None,) * len(ctx.params))

    op.register_autograd(backward, setup_context=setup_context)


def _fake_conv_grads(input, weight, out_channels, needs) -> tuple:
    shapes = (input.shape, weight.shape, (out_channels,))
    return tuple(input.new_empty(s if need else (0,)) for s, need in zip(shapes, needs))


@_op("convkit::conv2d")
def _conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int], groups: int) -> Tensor:
    y = ck.conv2d(_array(input), _array(weight), _array(bias), stride, padding, dilation, groups,
                  device=_backend_device(input))
    return _tensor(y, input)


@_conv2d.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    g = _args.conv_geometry(input.shape, weight.shape, stride, padding, dilation, groups)
    return input.new_empty((g.N, g.K, g.OH, g.OW))


@custom_op("convkit::conv2d_backward", mutates_args=())
def _conv2d_backward(grad_output: Tensor, input: Tensor, weight: Tensor, stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], groups: int,
                     needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    grads = ck.conv2d_backward(_array(grad_output), _array(input), _array(weight), stride, padding, dilation, groups,
                               need_input=needs[0], need_weight=needs[1], need_bias=needs[2],
                               device=_backend_device(input))
    return _grads(grads, input)


@_conv2d_backward.register_fake
def _(grad_output, input, weight, stride, padding, dilation, groups, needs):
    return _fake_conv_grads(input, weight, weight.shape[0], needs)


_conv_autograd(_conv2d, _conv2d_backward)


@_op("convkit::conv_transpose2d")
def _conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                      padding: Sequence[int], output_padding: Sequence[int], groups: int,
                      dilation: Sequence[int]) -> Tensor:
    y = ck.conv_transpose2d(_array(input), _array(weight), _array(bias), stride, padding, output_padding, groups,
                            dilation, device=_backend_device(input))
    return _tensor(y, input)


@_conv_transpose2d.register_fake
def _(input, weight, bias, stride, padding, output_padding, groups, dilation):
    g, _extra = _args.conv_transpose_geometry(input.shape, weight.shape, stride, padding, output_padding, groups,
                                              dilation)
    return input.new_empty((g.N, g.C, g.H, g.W))


@custom_op("convkit::conv_transpose2d_backward", mutates_args=())
def _conv_transpose2d_backward(grad_output: Tensor, input: Tensor, weight: Tensor, stride: Sequence[int],
                               padding: Sequence[int], output_padding: Sequence[int], groups: int,
                               dilation: Sequence[int], needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    grads = ck.conv_transpose2d_backward(_array(grad_output), _array(input), _array(weight), stride, padding,
                                         output_padding, groups, dilation, need_input=needs[0],
                                         need_weight=needs[1], need_bias=needs[2],
                                         device=_backend_device(input))
    return _grads(grads, input)


@_conv_transpose2d_backward.register_fake
def _(grad_output, input, weight, stride, padding, output_padding, groups, dilation, needs):
    # weight is (C, K/groups, kh, kw): the bias has K = weight.shape[1] * groups entries
    return _fake_conv_grads(input, weight, weight.shape[1] * groups, needs)


_conv_autograd(_conv_transpose2d, _conv_transpose2d_backward)


# --------------------------------------------------------------------- pool custom ops
# A pool's backward op takes (grad_output, input, *forward outputs after the first, *params):
# max_pool2d hands on its indices; the input is there for its shape and dtype.
def _pool_autograd(op, backward_op):
    def setup_context(ctx, inputs, output):
        input, *params = inputs
        ctx.save_for_backward(input, *(output[1:] if isinstance(output, tuple) else ()))
        ctx.params = params

    def backward(ctx, grad_output, *_grad_indices):
        return backward_op(grad_output, *ctx.saved_tensors, *ctx.params), *(None,) * len(ctx.params)

    op.register_autograd(backward, setup_context=setup_context)


def _fake_grad_input(grad_output, input, *rest):
    return torch.empty_like(input)


def _fake_pool(input, kernel_size, stride, padding, dilation, ceil_mode, **avg):
    g = _args.pool_geometry(input.shape, kernel_size, stride, padding, dilation, ceil_mode, **avg)
    return input.new_empty((g.N, g.C, g.OH, g.OW))


@_op("convkit::max_pool2d")
def _max_pool2d(input: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], ceil_mode: bool) -> tuple[Tensor, Tensor]:
    y, indices = ck.max_pool2d(_array(input), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True,
                               device=_backend_device(input))
    return _tensor(y, input), _tensor(indices, input)


@_max_pool2d.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    y = _fake_pool(input, kernel_size, stride, padding, dilation, ceil_mode)
    return y, y.new_empty(y.shape, dtype=torch.int64)


@custom_op("convkit::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(grad_output: Tensor, input: Tensor, indices: Tensor, kernel_size: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                         ceil_mode: bool) -> Tensor:
    gx = ck.max_pool2d_backward(_array(grad_output), _array(input), kernel_size, stride, padding, dilation, ceil_mode,
                                indices=_array(indices), device=_backend_device(input))
    return _tensor(gx, input)


_max_pool2d_backward.register_fake(_fake_grad_input)
_pool_autograd(_max_pool2d, _max_pool2d_backward)


@_op("convkit::avg_pool2d")
def _avg_pool2d(input: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                ceil_mode: bool, count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    y = ck.avg_pool2d(_array(input), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                      device=_backend_device(input))
    return _tensor(y, input)


@_avg_pool2d.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _fake_pool(input, kernel_size, stride, padding, 1, ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)


@custom_op("convkit::avg_pool2d_backward", mutates_args=())
def _avg_pool2d_backward(grad_output: Tensor, input: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                         padding: Sequence[int], ceil_mode: bool, count_include_pad: bool,
                         divisor_override: Optional[int]) -> Tensor:
    gx = ck.avg_pool2d_backward(_array(grad_output), _array(input), kernel_size, stride, padding, ceil_mode,
                                count_include_pad, divisor_override, device=_backend_device(input))
    return _tensor(gx, input)


_avg_pool2d_backward.register_fake(_fake_grad_input)
_pool_autograd(_avg_pool2d, _avg_pool2d_backward)


# ------------------------------------------------ the public ops (torch.nn.functional's signatures)
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """As torch.nn.functional.conv2d; padding also takes a 4-tuple and "same" at any stride."""
    x, unbatched = _batched(input)
    stride = _args.pair(stride, "stride", minimum=1)
    dilation = _args.pair(dilation, "dilation", minimum=1)
    padding = _args.resolve_conv_padding(padding, x.shape[2:], weight.shape[2:], stride, dilation)
    return _unbatched(_eager_or(_conv2d, x, weight, bias)(x, weight, bias, stride, padding, dilation, groups),
                      unbatched)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """As torch.nn.functional.conv_transpose2d (groups before dilation); weight (C, K/groups, kh, kw)."""
    x, unbatched = _batched(input)
    op = _eager_or(_conv_transpose2d, x, weight, bias)
    y = op(x, weight, bias, _args.pair(stride, "stride", minimum=1), _args.pair(padding, "padding", minimum=0),
           _args.pair(output_padding, "output_padding", minimum=0), groups, _args.pair(dilation, "dilation", minimum=1))
    return _unbatched(y, unbatched)


def depthwise_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise convolution: conv2d with groups == C, weight (C*multiplier, 1, kh, kw)."""
    C = input.shape[-3]
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] % C:
        raise ValueError(f"depthwise weight must be (C*multiplier, 1, kh, kw) with C={C} (input shape "
                         f"{tuple(input.shape)}), got {tuple(weight.shape)}")
    return conv2d(input, weight, bias, stride, padding, dilation, groups=C)


def separable_conv2d(input, depthwise_weight, pointwise_weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise (C*m, 1, kh, kw) then pointwise (K, C*m, 1, 1) convolution; bias after the pointwise."""
    return conv2d(depthwise_conv2d(input, depthwise_weight, None, stride, padding, dilation), pointwise_weight, bias)


def _pool_params(kernel_size, stride, padding, dilation) -> tuple:
    kernel = _args.pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None or stride == [] or stride == () else _args.pair(stride, "stride", minimum=1)
    return kernel, stride, _args.pair(padding, "padding", minimum=0), _args.pair(dilation, "dilation", minimum=1)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """As torch.nn.functional.max_pool2d; indices are flat offsets within each H*W plane, as torch's."""
    x, unbatched = _batched(input)
    y, indices = _eager_or(_max_pool2d, x)(x, *_pool_params(kernel_size, stride, padding, dilation), bool(ceil_mode))
    y, indices = _unbatched(y, unbatched), _unbatched(indices, unbatched)
    return (y, indices) if return_indices else y


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """As torch.nn.functional.avg_pool2d."""
    x, unbatched = _batched(input)
    kernel, stride, padding, _ = _pool_params(kernel_size, stride, padding, 1)
    y = _eager_or(_avg_pool2d, x)(x, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad),
                                  divisor_override)
    return _unbatched(y, unbatched)


def global_avg_pool2d(input):
    """Mean over H and W, keeping them as size 1: torch.nn.functional.adaptive_avg_pool2d(input, 1)."""
    return avg_pool2d(input, tuple(input.shape[-2:]))


def global_max_pool2d(input, return_indices=False):
    """Max over H and W, keeping them as size 1: torch.nn.functional.adaptive_max_pool2d(input, 1)."""
    return max_pool2d(input, tuple(input.shape[-2:]), return_indices=return_indices)
