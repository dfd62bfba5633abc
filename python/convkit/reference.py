"""Float64 NumPy reference implementation of every convkit operator.

This module is the ground truth that all compiled kernels (C++, Cython, CUDA) are
tested and benchmarked against.  It is written to be read, not to be fast:

* every op is a plain Python loop over the kernel taps ``(i, j)``; inside the loop the
  work is vectorized with NumPy (a batched matrix product over channels and pixels);
* everything is computed in float64 (inputs are cast with
  ``np.asarray(x, dtype=np.float64)``), outputs are new C-contiguous arrays;
* the layout is NCHW only (the public API transposes NHWC);
* signatures and weight shapes follow ``torch.nn.functional``:
  conv2d weight ``(K, C/groups, kh, kw)``, conv_transpose2d weight
  ``(C, K/groups, kh, kw)``;
* it depends on NumPy only.

Shape conventions (see DESIGN.md):

* conv output: ``floor((H + pt + pb - D*(k-1) - 1) / S) + 1``;
* ``padding="same"`` follows TensorFlow: output ``ceil(H / S)``, total pad
  ``max(0, (out-1)*S + D*(k-1) + 1 - H)``, top/left get ``total // 2``, bottom/right
  the rest; ``"valid"`` is no padding (strings are case-insensitive);
* transposed conv output: ``(H-1)*S - 2P + D*(k-1) + output_padding + 1``;
* pool output: ``floor`` (or ``ceil`` with ``ceil_mode``) of
  ``(H + 2P - D*(k-1) - 1) / S``, plus 1; with ``ceil_mode`` the last window must start
  inside the input or the left padding.

Validation is deliberately simple (impossible shapes raise ``ValueError``); the public
API layer does the full argument checking.
"""

import numpy as np

__all__ = [
    "resolve_padding",
    "conv2d_output_size",
    "conv_transpose2d_output_size",
    "pool2d_output_size",
    "conv2d",
    "conv2d_backward",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "depthwise_conv2d",
    "depthwise_conv2d_backward",
    "separable_conv2d",
    "separable_conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_backward_from_indices",
    "avg_pool2d",
    "avg_pool2d_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "global_max_pool2d",
    "global_max_pool2d_backward",
    "maxout2d",
    "maxout2d_backward",
]


# ---------------------------------------------------------------------------
# parameter parsing
# ---------------------------------------------------------------------------

def _is_int(v):
    """True for Python/NumPy integers (bool excluded)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(value, name, minimum=1):
    """Parse an int or a pair of ints into a tuple ``(a, b)``, each >= ``minimum``."""
    if _is_int(value):
        out = (int(value), int(value))
    else:
        try:
            items = tuple(value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(items) != 2 or not all(_is_int(v) for v in items):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        out = (int(items[0]), int(items[1]))
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def _as4d(x, name):
    """Cast to a float64 array and check that it is 4-D (NCHW)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {a.shape}")
    return a


def _same_pad_1d(size, k, s, d):
    """TensorFlow 'same' padding along one dim: returns (before, after)."""
    out = -(-size // s)  # ceil(size / s)
    total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
    return total // 2, total - total // 2


def resolve_padding(padding, in_hw, kernel, stride=1, dilation=1):
    """Resolve a conv padding spec to ``(top, bottom, left, right)``.

    ``padding`` is an int, a pair ``(ph, pw)``, a 4-tuple ``(top, bottom, left, right)``,
    or the case-insensitive string ``"valid"`` / ``"same"`` (TensorFlow rule).
    ``in_hw`` is the input ``(H, W)``; ``kernel``, ``stride``, ``dilation`` are ints or pairs.
    """
    kh, kw = _pair(kernel, "kernel_size")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            h, w = in_hw
            return _same_pad_1d(h, kh, sh, dh) + _same_pad_1d(w, kw, sw, dw)
        raise ValueError(f"padding string must be 'valid' or 'same', got {padding!r}")
    if _is_int(padding):
        p = int(padding)
        pads = (p, p, p, p)
    else:
        try:
            items = tuple(padding)
        except TypeError:
            raise ValueError(f"padding must be an int, pair, 4-tuple or string, got {padding!r}") from None
        if not all(_is_int(v) for v in items) or len(items) not in (2, 4):
            raise ValueError(f"padding must be an int, pair, 4-tuple or string, got {padding!r}")
        items = tuple(int(v) for v in items)
        pads = (items[0], items[0], items[1], items[1]) if len(items) == 2 else items
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pads


def _conv_out_1d(size, k, s, d, before, after):
    """Conv output length along one dim."""
    return (size + before + after - d * (k - 1) - 1) // s + 1


def conv2d_output_size(H, W, kernel, stride=1, padding=0, dilation=1):
    """Output ``(OH, OW)`` of a conv2d on an ``H x W`` input (any padding spec)."""
    kh, kw = _pair(kernel, "kernel_size")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pb, pl, pr = resolve_padding(padding, (H, W), (kh, kw), (sh, sw), (dh, dw))
    oh = _conv_out_1d(H, kh, sh, dh, pt, pb)
    ow = _conv_out_1d(W, kw, sw, dw, pl, pr)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"kernel (dilated extent {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}) is larger than "
            f"the padded input {H + pt + pb}x{W + pl + pr} (input {H}x{W}, padding "
            f"{(pt, pb, pl, pr)})")
    return oh, ow


def conv_transpose2d_output_size(H, W, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    """Output ``(OH, OW)`` of a conv_transpose2d: ``(H-1)*S - 2P + D*(k-1) + op + 1``."""
    kh, kw = _pair(kernel, "kernel_size")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d padding must be an int or a pair, got {padding!r}")
    ph, pw = _pair(padding, "padding", minimum=0)
    oph, opw = _pair(output_padding, "output_padding", minimum=0)
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(
            f"output_padding {(oph, opw)} must be smaller than max(stride, dilation) "
            f"per dim (stride {(sh, sw)}, dilation {(dh, dw)})")
    oh = (H - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (W - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv_transpose2d output size {(oh, ow)} is not positive "
                         f"(input {H}x{W}, padding {(ph, pw)})")
    return oh, ow


def _pool_out_1d(size, k, s, p, d, ceil_mode):
    """Pool output length along one dim (torch's pooling_output_shape)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def pool2d_output_size(H, W, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Output ``(OH, OW)`` of a max/avg pool (stride None means the kernel size)."""
    kh, kw = _pair(kernel, "kernel_size")
    sh, sw = _pair((kh, kw) if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding", minimum=0)
    dh, dw = _pair(dilation, "dilation")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"pool padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
    oh = _pool_out_1d(H, kh, sh, ph, dh, ceil_mode)
    ow = _pool_out_1d(W, kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"pool output size {(oh, ow)} is too small (input {H}x{W}, kernel "
                         f"{(kh, kw)}, padding {(ph, pw)}, dilation {(dh, dw)})")
    return oh, ow


def _tap(i, s, d, n):
    """Slice of the taps' positions in a padded buffer: start i*d, n steps of s."""
    return slice(i * d, i * d + (n - 1) * s + 1, s)


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------

def _conv_setup(x_shape, w_shape, stride, padding, dilation, groups):
    """Shared shape checks of conv2d and its gradients; returns the parsed geometry."""
    N, C, H, W = x_shape
    K, Cg, kh, kw = w_shape
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if C != Cg * groups:
        raise ValueError(f"input has {C} channels but weight {w_shape} with groups={groups} "
                         f"expects {Cg * groups}")
    if K % groups:
        raise ValueError(f"out channels {K} (weight {w_shape}) not divisible by groups={groups}")
    s = _pair(stride, "stride")
    d = _pair(dilation, "dilation")
    pads = resolve_padding(padding, (H, W), (kh, kw), s, d)
    oh, ow = conv2d_output_size(H, W, (kh, kw), s, pads, d)
    return s, d, pads, oh, ow


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation (no kernel flip), NCHW: x (N,C,H,W), w (K,C/groups,kh,kw) -> (N,K,OH,OW)."""
    x = _as4d(x, "input")
    w = _as4d(w, "weight")
    (sh, sw), (dh, dw), (pt, pb, pl, pr), oh, ow = _conv_setup(x.shape, w.shape, stride, padding,
                                                                dilation, groups)
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    G, Kg = groups, K // groups
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))).reshape(N, G, Cg, H + pt + pb, W + pl + pr)
    wg = w.reshape(G, Kg, Cg, kh, kw)
    y = np.zeros((N, G, Kg, oh * ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, :, _tap(i, sh, dh, oh), _tap(j, sw, dw, ow)].reshape(N, G, Cg, oh * ow)
            # y[n,g,k,p] += sum_c w[g,k,c,i,j] * patch[n,g,c,p]
            y += wg[:, :, :, i, j] @ patch
    y = y.reshape(N, K, oh, ow)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64).reshape(1, K, 1, 1)
    return y


def conv2d_grad_input(grad_out, w, input_hw, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d w.r.t. its input of spatial size ``input_hw = (H, W)`` (needed: with
    stride > 1 several input sizes give the same output size)."""
    w = _as4d(w, "weight")
    go = _as4d(grad_out, "grad_out")
    H, W = (int(v) for v in input_hw)
    N = go.shape[0]
    K, Cg, kh, kw = w.shape
    C = Cg * groups
    (sh, sw), (dh, dw), (pt, pb, pl, pr), oh, ow = _conv_setup((N, C, H, W), w.shape, stride, padding,
                                                                dilation, groups)
    if go.shape != (N, K, oh, ow):
        raise ValueError(f"grad_out has shape {go.shape}, expected {(N, K, oh, ow)}")
    G, Kg = groups, K // groups
    Hp, Wp = H + pt + pb, W + pl + pr
    wg = w.reshape(G, Kg, Cg, kh, kw)
    gog = go.reshape(N, G, Kg, oh * ow)
    gxp = np.zeros((N, G, Cg, Hp, Wp))
    for i in range(kh):
        for j in range(kw):
            # gx[n,g,c,tap positions] += sum_k w[g,k,c,i,j] * go[n,g,k,p]
            contrib = wg[:, :, :, i, j].swapaxes(-1, -2) @ gog
            gxp[:, :, :, _tap(i, sh, dh, oh), _tap(j, sw, dw, ow)] += contrib.reshape(N, G, Cg, oh, ow)
    return np.ascontiguousarray(gxp.reshape(N, C, Hp, Wp)[:, :, pt:pt + H, pl:pl + W])


def conv2d_grad_weight(grad_out, x, kernel_hw, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d w.r.t. its weight of spatial size ``kernel_hw = (kh, kw)``."""
    x = _as4d(x, "input")
    go = _as4d(grad_out, "grad_out")
    kh, kw = _pair(kernel_hw, "kernel_hw")
    N, C, H, W = x.shape
    K = go.shape[1]
    if not _is_int(groups) or groups < 1 or C % groups:
        raise ValueError(f"input channels {C} not divisible by groups={groups!r}")
    Cg = C // groups
    (sh, sw), (dh, dw), (pt, pb, pl, pr), oh, ow = _conv_setup(x.shape, (K, Cg, kh, kw), stride, padding,
                                                                dilation, groups)
    if go.shape != (N, K, oh, ow):
        raise ValueError(f"grad_out has shape {go.shape}, expected {(N, K, oh, ow)}")
    G, Kg = groups, K // groups
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))).reshape(N, G, Cg, H + pt + pb, W + pl + pr)
    gog = go.reshape(N, G, Kg, oh * ow)
    gw = np.zeros((G, Kg, Cg, kh, kw))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, :, _tap(i, sh, dh, oh), _tap(j, sw, dw, ow)].reshape(N, G, Cg, oh * ow)
            # gw[g,k,c,i,j] = sum_{n,p} go[n,g,k,p] * patch[n,g,c,p]
            gw[:, :, :, i, j] = (gog @ patch.swapaxes(-1, -2)).sum(axis=0)
    return gw.reshape(K, Cg, kh, kw)


def conv2d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of conv2d: returns ``(grad_x, grad_w, grad_b)``."""
    x = _as4d(x, "input")
    w = _as4d(w, "weight")
    go = _as4d(grad_out, "grad_out")
    _conv_setup(x.shape, w.shape, stride, padding, dilation, groups)  # channel / group checks
    gx = conv2d_grad_input(go, w, x.shape[2:], stride, padding, dilation, groups)
    gw = conv2d_grad_weight(go, x, w.shape[2:], stride, padding, dilation, groups)
    return gx, gw, go.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------
# conv_transpose2d (written as a direct scatter, independent of conv2d_backward)
# ---------------------------------------------------------------------------

def _convt_setup(x, w, stride, padding, output_padding, groups, dilation):
    """Shared shape checks of conv_transpose2d and its backward."""
    N, C, H, W = x.shape
    Cw, Kg, kh, kw = w.shape
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if C != Cw:
        raise ValueError(f"input has {C} channels but conv_transpose2d weight {w.shape} expects {Cw}")
    if C % groups:
        raise ValueError(f"input channels {C} not divisible by groups={groups}")
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d padding must be an int or a pair, got {padding!r}")
    s = _pair(stride, "stride")
    d = _pair(dilation, "dilation")
    p = _pair(padding, "padding", minimum=0)
    op = _pair(output_padding, "output_padding", minimum=0)
    oh, ow = conv_transpose2d_output_size(H, W, (kh, kw), s, p, op, d)
    # full scatter extent, enlarged if output_padding reaches past it
    bh = max((H - 1) * s[0] + d[0] * (kh - 1) + 1, p[0] + oh)
    bw = max((W - 1) * s[1] + d[1] * (kw - 1) + 1, p[1] + ow)
    return s, d, p, oh, ow, bh, bw


def conv_transpose2d(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed 2-D convolution: x (N,C,H,W), w (C,K/groups,kh,kw) -> (N,K,OH,OW).

    Direct scatter: every input pixel adds ``x * w[:, :, i, j]`` at its strided output
    position plus the tap offset ``(i*D, j*D)``; the padding is then cropped away.
    """
    x = _as4d(x, "input")
    w = _as4d(w, "weight")
    (sh, sw), (dh, dw), (ph, pw), oh, ow, bh, bw = _convt_setup(
        x, w, stride, padding, output_padding, groups, dilation)
    N, C, H, W = x.shape
    _, Kg, kh, kw = w.shape
    G, Cg = groups, C // groups
    K = G * Kg
    xg = x.reshape(N, G, Cg, H * W)
    wg = w.reshape(G, Cg, Kg, kh, kw)
    buf = np.zeros((N, G, Kg, bh, bw))
    for i in range(kh):
        for j in range(kw):
            # contrib[n,g,k,p] = sum_c w[g,c,k,i,j] * x[n,g,c,p]
            contrib = wg[:, :, :, i, j].swapaxes(-1, -2) @ xg
            buf[:, :, :, _tap(i, sh, dh, H), _tap(j, sw, dw, W)] += contrib.reshape(N, G, Kg, H, W)
    y = np.ascontiguousarray(buf.reshape(N, K, bh, bw)[:, :, ph:ph + oh, pw:pw + ow])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64).reshape(1, K, 1, 1)
    return y


def conv_transpose2d_backward(grad_out, x, w, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradients of conv_transpose2d: returns ``(grad_x, grad_w, grad_b)``."""
    x = _as4d(x, "input")
    w = _as4d(w, "weight")
    go = _as4d(grad_out, "grad_out")
    (sh, sw), (dh, dw), (ph, pw), oh, ow, bh, bw = _convt_setup(
        x, w, stride, padding, output_padding, groups, dilation)
    N, C, H, W = x.shape
    _, Kg, kh, kw = w.shape
    G, Cg = groups, C // groups
    K = G * Kg
    if go.shape != (N, K, oh, ow):
        raise ValueError(f"grad_out has shape {go.shape}, expected {(N, K, oh, ow)}")
    gbuf = np.zeros((N, K, bh, bw))
    gbuf[:, :, ph:ph + oh, pw:pw + ow] = go  # undo the crop
    gbuf = gbuf.reshape(N, G, Kg, bh, bw)
    xg = x.reshape(N, G, Cg, H * W)
    wg = w.reshape(G, Cg, Kg, kh, kw)
    gx = np.zeros((N, G, Cg, H * W))
    gw = np.zeros((G, Cg, Kg, kh, kw))
    for i in range(kh):
        for j in range(kw):
            region = gbuf[:, :, :, _tap(i, sh, dh, H), _tap(j, sw, dw, W)].reshape(N, G, Kg, H * W)
            # gx[n,g,c,p] += sum_k w[g,c,k,i,j] * region[n,g,k,p]
            gx += wg[:, :, :, i, j] @ region
            # gw[g,c,k,i,j] = sum_{n,p} x[n,g,c,p] * region[n,g,k,p]
            gw[:, :, :, i, j] = (xg @ region.swapaxes(-1, -2)).sum(axis=0)
    return gx.reshape(N, C, H, W), gw.reshape(C, Kg, kh, kw), go.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------
# depthwise and separable conv
# ---------------------------------------------------------------------------

def _check_depthwise(x, w):
    """Depthwise weight must be (C*m, 1, kh, kw)."""
    C = x.shape[1]
    if w.shape[1] != 1 or w.shape[0] % C or w.shape[0] == 0:
        raise ValueError(f"depthwise weight must have shape (C*m, 1, kh, kw) with C={C}, got {w.shape}")
    return C


def depthwise_conv2d(x, w, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise conv: w (C*m, 1, kh, kw), i.e. conv2d with groups = C."""
    x = _as4d(x, "input")
    w = _as4d(w, "weight")
    C = _check_depthwise(x, w)
    return conv2d(x, w, bias, stride, padding, dilation, groups=C)


def depthwise_conv2d_backward(grad_out, x, w, stride=1, padding=0, dilation=1):
    """Gradients of depthwise_conv2d: returns ``(grad_x, grad_w, grad_b)``."""
    x = _as4d(x, "input")
    w = _as4d(w, "weight")
    C = _check_depthwise(x, w)
    return conv2d_backward(grad_out, x, w, stride, padding, dilation, groups=C)


def _check_pointwise(pw, cm):
    """Pointwise weight must be (K, C*m, 1, 1)."""
    if pw.shape[1] != cm or pw.shape[2:] != (1, 1):
        raise ValueError(f"pointwise weight must have shape (K, {cm}, 1, 1), got {pw.shape}")


def separable_conv2d(x, depthwise_w, pointwise_w, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise conv (C*m,1,kh,kw) then pointwise 1x1 conv (K,C*m,1,1); bias after the pointwise."""
    dw = _as4d(depthwise_w, "depthwise_weight")
    pw = _as4d(pointwise_w, "pointwise_weight")
    _check_pointwise(pw, dw.shape[0])
    mid = depthwise_conv2d(x, dw, None, stride, padding, dilation)
    return conv2d(mid, pw, bias)


def separable_conv2d_backward(grad_out, x, depthwise_w, pointwise_w, stride=1, padding=0, dilation=1):
    """Gradients of separable_conv2d: returns ``(grad_x, grad_depthwise_w, grad_pointwise_w, grad_b)``."""
    x = _as4d(x, "input")
    dw = _as4d(depthwise_w, "depthwise_weight")
    pw = _as4d(pointwise_w, "pointwise_weight")
    _check_pointwise(pw, dw.shape[0])
    mid = depthwise_conv2d(x, dw, None, stride, padding, dilation)
    g_mid, g_pw, g_b = conv2d_backward(grad_out, mid, pw)
    g_x, g_dw, _ = depthwise_conv2d_backward(g_mid, x, dw, stride, padding, dilation)
    return g_x, g_dw, g_pw, g_b


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

def _pool_setup(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Parse pool arguments; returns (k, s, p, d, oh, ow) with pairs for k, s, p, d."""
    H, W = x_shape[2], x_shape[3]
    k = _pair(kernel_size, "kernel_size")
    s = _pair(k if stride is None else stride, "stride")
    p = _pair(padding, "padding", minimum=0)
    d = _pair(dilation, "dilation")
    oh, ow = pool2d_output_size(H, W, k, s, p, d, ceil_mode)
    return k, s, p, d, oh, ow


def _max_pool_forward(x, k, s, p, d, oh, ow):
    """Max pool values and flat indices (-1 for a window that holds no input element)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, d
    # -inf padded buffer, large enough for every window (ceil_mode may reach past H + 2P)
    bh = max(H + 2 * ph, (oh - 1) * sh + dh * (kh - 1) + 1)
    bw = max(W + 2 * pw, (ow - 1) * sw + dw * (kw - 1) + 1)
    buf = np.full((N, C, bh, bw), -np.inf)
    buf[:, :, ph:ph + H, pw:pw + W] = x
    best = np.full((N, C, oh, ow), -np.inf)
    idx = np.full((N, C, oh, ow), -1, dtype=np.int64)
    for i in range(kh):
        rows = np.arange(oh) * sh - ph + i * dh  # input row of tap i for every output row
        for j in range(kw):
            cols = np.arange(ow) * sw - pw + j * dw
            inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
            v = buf[:, :, _tap(i, sh, dh, oh), _tap(j, sw, dw, ow)]
            # take: the first input element of the window, a strictly larger value (so ties
            # keep the first maximum), or the first NaN; nothing replaces a NaN.
            take = inside & ~np.isnan(best) & ((idx < 0) | (v > best) | np.isnan(v))
            best = np.where(take, v, best)
            idx = np.where(take, rows[:, None] * W + cols[None, :], idx)
    return best, idx


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pool (NCHW); indices are int64 flat ``h*W + w`` within each H*W plane, as torch.

    Padding counts as -inf.  Ties take the first maximum in window scan order (kh outer,
    kw inner); a window containing NaN gives NaN with the index of its first NaN.
    """
    x = _as4d(x, "input")
    k, s, p, d, oh, ow = _pool_setup(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y, idx = _max_pool_forward(x, k, s, p, d, oh, ow)
    return (y, idx) if return_indices else y


def _scatter_to_indices(grad_out, idx, x_shape):
    """Scatter-add grad_out (N,C,OH,OW) into the flat positions idx of an (N,C,H,W) zero array."""
    N, C, H, W = x_shape
    plane = np.arange(N * C, dtype=np.int64).reshape(N, C, 1, 1) * (H * W)
    keep = idx >= 0
    flat = (idx + plane)[keep]
    gx = np.bincount(flat, weights=grad_out[keep], minlength=N * C * H * W)
    return gx.reshape(N, C, H, W)


def max_pool2d_backward_from_indices(grad_out, indices, x_shape):
    """Gradient of max_pool2d from its indices: grad_out scatter-added into an ``x_shape`` zero array.

    An index of -1 (a window that holds no input element) contributes nothing.
    """
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (N, C, H, W), got {x_shape}")
    N, C, H, W = x_shape
    go = _as4d(grad_out, "grad_out")
    idx = np.asarray(indices)
    if idx.shape != go.shape or go.shape[:2] != (N, C):
        raise ValueError(f"grad_out {go.shape} and indices {idx.shape} must have the same shape (N={N}, C={C}, ...)")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.max() >= H * W or idx.min() < -1):
        raise ValueError(f"indices must lie in [-1, H*W) = [-1, {H * W})")
    return _scatter_to_indices(go, idx, x_shape)


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        indices=None):
    """Gradient of max_pool2d: grad_out scatter-added to the argmax positions
    (recomputed from x when indices is None)."""
    x = _as4d(x, "input")
    go = _as4d(grad_out, "grad_out")
    k, s, p, d, oh, ow = _pool_setup(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    N, C, H, W = x.shape
    if go.shape != (N, C, oh, ow):
        raise ValueError(f"grad_out has shape {go.shape}, expected {(N, C, oh, ow)}")
    if indices is None:
        _, indices = _max_pool_forward(x, k, s, p, d, oh, ow)
    return max_pool2d_backward_from_indices(go, indices, x.shape)


def _avg_divisors(size, k, s, p, out, count_include_pad):
    """Per-output-position divisor along one dim (torch's avg_pool2d rules)."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    pool = end - start
    count = np.minimum(end, size) - np.maximum(start, 0)
    return pool if count_include_pad else count


def _avg_setup(x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Parse avg pool arguments; returns (k, s, p, oh, ow, divisor (oh, ow))."""
    H, W = x_shape[2], x_shape[3]
    k, s, p, _, oh, ow = _pool_setup(x_shape, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None:
        if not _is_int(divisor_override) or divisor_override == 0:
            raise ValueError(f"divisor_override must be a non-zero int, got {divisor_override!r}")
        div = np.full((oh, ow), float(divisor_override))
    else:
        div_h = _avg_divisors(H, k[0], s[0], p[0], oh, count_include_pad)
        div_w = _avg_divisors(W, k[1], s[1], p[1], ow, count_include_pad)
        div = np.outer(div_h, div_w).astype(np.float64)
    return k, s, p, oh, ow, div


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pool (NCHW) with torch's divisor rules (count_include_pad, divisor_override)."""
    x = _as4d(x, "input")
    k, s, p, oh, ow, div = _avg_setup(x.shape, kernel_size, stride, padding, ceil_mode,
                                      count_include_pad, divisor_override)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    bh = max(H + 2 * ph, (oh - 1) * sh + kh)
    bw = max(W + 2 * pw, (ow - 1) * sw + kw)
    buf = np.zeros((N, C, bh, bw))
    buf[:, :, ph:ph + H, pw:pw + W] = x
    total = np.zeros((N, C, oh, ow))
    for i in range(kh):
        for j in range(kw):
            total += buf[:, :, _tap(i, sh, 1, oh), _tap(j, sw, 1, ow)]
    return total / div


def avg_pool2d_backward(grad_out, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """Gradient of avg_pool2d for an input of shape ``x_shape``."""
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (N, C, H, W), got {x_shape}")
    go = _as4d(grad_out, "grad_out")
    k, s, p, oh, ow, div = _avg_setup(x_shape, kernel_size, stride, padding, ceil_mode,
                                      count_include_pad, divisor_override)
    N, C, H, W = x_shape
    if go.shape != (N, C, oh, ow):
        raise ValueError(f"grad_out has shape {go.shape}, expected {(N, C, oh, ow)}")
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    bh = max(H + 2 * ph, (oh - 1) * sh + kh)
    bw = max(W + 2 * pw, (ow - 1) * sw + kw)
    gbuf = np.zeros((N, C, bh, bw))
    g = go / div
    for i in range(kh):
        for j in range(kw):
            gbuf[:, :, _tap(i, sh, 1, oh), _tap(j, sw, 1, ow)] += g
    return np.ascontiguousarray(gbuf[:, :, ph:ph + H, pw:pw + W])


def global_avg_pool2d(x):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1)."""
    x = _as4d(x, "input")
    return x.mean(axis=(2, 3), keepdims=True)


def global_avg_pool2d_backward(grad_out, x_shape):
    """Gradient of global_avg_pool2d: grad_out / (H*W) broadcast over the plane."""
    N, C, H, W = (int(v) for v in x_shape)
    go = _as4d(grad_out, "grad_out")
    if go.shape != (N, C, 1, 1):
        raise ValueError(f"grad_out has shape {go.shape}, expected {(N, C, 1, 1)}")
    return np.broadcast_to(go / (H * W), (N, C, H, W)).copy()


def global_max_pool2d(x, return_indices=False):
    """Max over H and W: (N, C, H, W) -> (N, C, 1, 1) [, int64 flat indices]; same tie/NaN rules as max_pool2d."""
    x = _as4d(x, "input")
    return max_pool2d(x, x.shape[2:], return_indices=return_indices)


def global_max_pool2d_backward(grad_out, x, indices=None):
    """Gradient of global_max_pool2d: grad_out to the argmax of each plane."""
    x = _as4d(x, "input")
    return max_pool2d_backward(grad_out, x, x.shape[2:], indices=indices)


# ---------------------------------------------------------------------------
# maxout (max pooling across channels)
# ---------------------------------------------------------------------------

def _maxout_groups(x, k):
    """x as (N, C/k, k, H, W) and the position in each group of its first maximum.

    np.argmax takes the first maximum, and the first NaN when there is one.
    """
    N, C, H, W = x.shape
    if not _is_int(k) or k < 1 or C % k:
        raise ValueError(f"k must be a positive divisor of the channel count {C}, got {k!r}")
    groups = x.reshape(N, C // k, k, H, W)
    return groups, np.argmax(groups, axis=2)[:, :, None]


def maxout2d(x, k):
    """Max over each group of k consecutive channels: (N, C, H, W) -> (N, C/k, H, W)."""
    groups, arg = _maxout_groups(_as4d(x, "input"), k)
    return np.take_along_axis(groups, arg, axis=2)[:, :, 0]


def maxout2d_backward(grad_out, x, k):
    """Gradient of maxout2d: grad_out to each group's first maximum, zero elsewhere."""
    x = _as4d(x, "input")
    go = _as4d(grad_out, "grad_out")
    groups, arg = _maxout_groups(x, k)
    if go.shape != (x.shape[0], x.shape[1] // k) + x.shape[2:]:
        raise ValueError(f"grad_out has shape {go.shape}, expected {(x.shape[0], x.shape[1] // k) + x.shape[2:]}")
    gx = np.zeros(groups.shape)
    np.put_along_axis(gx, arg, go[:, :, None], axis=2)
    return gx.reshape(x.shape)
