# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""convkit._im2col: convolution as matrix products (im2col / col2im + BLAS GEMM).

The three conv primitives of convkit._registry, for float32 and float64 (fused types),
NCHW and NHWC natively:

    forward       y_g[Kg x P]   = w_g[Kg x R] . col_g[R x P]              (+ bias, ReLU)
    grad_input    dcol_g[R x P] = w_g^T . dy_g[Kg x P],  then col2im into dx
    grad_weight   dw_g[Kg x R] += dy_g . col_g^T      (summed over images and tiles)

per image n and group g, with R = C/groups * kh * kw taps and P output pixels. The
products go through scipy.linalg.cython_blas (sgemm/dgemm): no GEMM of our own, and the
BLAS's own threads are the only parallelism (no OpenMP: PyTorch's libgomp and a second
OpenMP runtime fight). The column copies are single-threaded; they move R*P values per
image while the GEMM does Kg*R*P multiply-adds, so they are the small part for every
dense layer (depthwise layers, where Kg is 1, are algo="direct"'s job).

Layouts. In NCHW a column matrix is R x P row-major (one row per tap (c, i, j), a
contiguous run of pixels, so the copies are row memcpys). In NHWC it is P x R row-major
(one row per pixel, taps (i, j) each holding the group's channels contiguously, as the
image holds them); BLAS sees the same R x P matrix column-major. Every matrix below is
(pointer, leading dimension, column-major flag) and `gemm` maps any mix of orientations
to one Fortran call, so each primitive is written once for both layouts. The weight
stays (K, C/groups, kh, kw) in NCHW; for NHWC its taps are reordered to (K, kh, kw,
C/groups) first (a copy the size of the weight).

The NCHW forward with >= HWC_MIN_CHANNELS channels, one group and images of at least
HWC_TILE_MIN_PIXELS output pixels also uses pixel-major columns, which OpenBLAS
multiplies 15-25% faster (forward_tile_via_hwc): per tile, the input rows it reads are
transposed to HWC and its output back to CHW.

1x1 kernels with stride 1 and no padding need no copy: the input is its own column
matrix. Otherwise the column buffer covers a tile of whole output rows: a cache-sized
tile (tile_rows), never more than `buffer_limit` bytes (but at least one row), so memory
stays bounded on any image.
"""
cimport cython
from cython cimport floating
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

import threading

import numpy as np

from convkit import _cpu

cdef extern from "limits.h":
    cdef int INT_MAX

# What the last call did (for tests and benchmarks): output-row tiles per image and
# group, and the bytes of its column buffer (0 when the input was used directly).
_last_tiles = 0
_last_buffer_bytes = 0


def last_call_stats():
    """{"row_tiles": tiles per image and group, "buffer_bytes": column buffer size} of the last call."""
    return {"row_tiles": _last_tiles, "buffer_bytes": _last_buffer_bytes}


cdef struct Geom:
    Py_ssize_t N, C, H, W, K, kh, kw, sh, sw, pt, pl, dh, dw, G, OH, OW
    Py_ssize_t Cg, Kg, R, P
    bint nhwc      # layout of x, y and the column matrix (column-major in BLAS terms)
    bint identity  # 1x1, stride 1, no padding: the input is its own column matrix
    bint via_hwc   # NCHW forward on pixel-major columns (set by conv2d_forward, see forward_tile_via_hwc)


cdef Geom make_geom(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t K, Py_ssize_t Cg,
                    Py_ssize_t kh, Py_ssize_t kw, stride, padding, dilation, Py_ssize_t groups,
                    bint nhwc) except *:
    """Checks everything a kernel relies on; ValueError names the shapes."""
    cdef Geom g
    sh, sw = stride
    pt, pb, pl, pr = padding
    dh, dw = dilation
    desc = (f"input NCHW sizes {(N, C, H, W)}, weight {(K, Cg, kh, kw)}, stride {tuple(stride)}, "
            f"padding {tuple(padding)}, dilation {tuple(dilation)}, groups {groups}")
    if min(C, H, W, K, Cg, kh, kw) <= 0 or N < 0:
        raise ValueError(f"conv2d sizes must be positive: {desc}")
    if min(sh, sw, dh, dw) <= 0 or min(pt, pb, pl, pr) < 0:
        raise ValueError(f"stride and dilation must be > 0 and padding >= 0: {desc}")
    # Below 2^31, as the C++ bindings' parameters: the kernels' index arithmetic (ceil
    # divisions by the stride, o*s - p + i*d) stays far from int64 overflow; a stride of
    # 2^63 - 1 wrapped into a negative memset length.
    if max(sh, sw, dh, dw, pt, pb, pl, pr) > INT_MAX:
        raise ValueError(f"stride, padding and dilation must be < 2^31: {desc}")
    if groups <= 0 or C % groups or K % groups or Cg * groups != C:
        raise ValueError(f"groups must divide C and K with C/groups matching the weight: {desc}")
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if H + pt + pb < eh or W + pl + pr < ew:
        raise ValueError(f"kernel larger than the padded input: {desc}")
    g.N, g.C, g.H, g.W, g.K, g.kh, g.kw, g.G = N, C, H, W, K, kh, kw, groups
    g.sh, g.sw, g.pt, g.pl, g.dh, g.dw = sh, sw, pt, pl, dh, dw
    g.OH = (H + pt + pb - eh) // sh + 1
    g.OW = (W + pl + pr - ew) // sw + 1
    g.Cg, g.Kg = Cg, K // groups
    g.R, g.P = Cg * kh * kw, g.OH * g.OW
    g.nhwc = nhwc
    g.identity = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pb == 0 and pl == 0 and pr == 0
    g.via_hwc = False
    # BLAS takes 32-bit sizes and leading dimensions.
    if max(g.R, g.P, g.K, g.C, H * W) > INT_MAX:
        raise ValueError(f"conv2d too large for 32-bit BLAS sizes: {desc}")
    return g


# Speed, not memory, sets the tile below the cap: a tile of about TILE_BYTES stays in the
# last-level cache between the copy that writes it and the GEMM that reads it back (one
# core, VGG-16 block 2, 55 MiB of columns: 120 -> 178 GFLOP/s forward with 4 MiB tiles),
# as long as the tile keeps TILE_MIN_PIXELS columns: a shorter GEMM loses more than the
# cache gains (DeepLab's 3x3 on 33x33, 13-row tiles of 429 pixels: grad-input 194 -> 180).
# The NCHW forward's pixel-major tiles (forward_tile_via_hwc) run best at half that: 2 MiB of
# columns, at least 512 pixels (one core, 3x3 forward, GFLOP/s with 4 MiB / 1024 vs 2 MiB
# / 512: ResNet 64 on 56x56 139 / 153, VGG block 2 151 / 179, ResNet 128 stride 2 148 /
# 158); the backward's row-major tiles gain nothing from it (stride 2: 156 / 147).
cdef enum:
    TILE_BYTES = 4 << 20
    TILE_MIN_PIXELS = 1024
    HWC_TILE_BYTES = 2 << 20
    HWC_TILE_MIN_PIXELS = 512

# Pixel-major columns copy C/groups contiguous values per tap and pixel: with fewer than
# HWC_MIN_CHANNELS the row-major copy (runs of output columns) is the cheaper one. Images
# of fewer than HWC_TILE_MIN_PIXELS output pixels keep row-major columns too: their one
# short tile gains nothing in the GEMM, and reordering the weight's taps costs a tenth of
# the call (ResNet's 256-channel 3x3 on 14x14, one core: 164 -> 194 GFLOP/s).
    HWC_MIN_CHANNELS = 32
# See gw_sums_column_major.
    GW_SUMS_CM_MIN_PIXELS = 512


cdef Py_ssize_t tile_rows(Geom* g, Py_ssize_t buffer_limit, Py_ssize_t itemsize):
    """Output rows per column-buffer tile: about TILE_BYTES of columns (at least
    TILE_MIN_PIXELS of them), never more than buffer_limit allows, at least one row."""
    if g.identity:
        return g.OH
    cdef Py_ssize_t row_bytes = g.R * g.OW * itemsize
    cdef Py_ssize_t tile_bytes = HWC_TILE_BYTES if g.via_hwc else TILE_BYTES
    cdef Py_ssize_t min_pixels = HWC_TILE_MIN_PIXELS if g.via_hwc else TILE_MIN_PIXELS
    cdef Py_ssize_t rows = max((tile_bytes + row_bytes - 1) // row_bytes, (min_pixels + g.OW - 1) // g.OW)
    return max(1, min(g.OH, rows, buffer_limit // row_bytes))


# ------------------------------------------------------------------------------- GEMM
cdef void gemm(bint c_cm, int M, int N, int Kd, floating alpha, floating* A, int lda, bint a_cm,
               floating* B, int ldb, bint b_cm, floating beta, floating* C, int ldc) noexcept nogil:
    """C[M x N] = alpha A[M x Kd] B[Kd x N] + beta C, each stored row-major (cm=0) or
    column-major (cm=1) with its leading dimension.

    BLAS is column-major: a row-major C is computed as C^T = B^T A^T. Either way an
    operand stored in C's orientation goes in as 'N', the other as 'T'.
    """
    cdef char ta = b'N' if a_cm == c_cm else b'T'
    cdef char tb = b'N' if b_cm == c_cm else b'T'
    if M == 0 or N == 0:
        return
    if c_cm:
        if floating is float:
            sgemm(&ta, &tb, &M, &N, &Kd, &alpha, A, &lda, B, &ldb, &beta, C, &ldc)
        else:
            dgemm(&ta, &tb, &M, &N, &Kd, &alpha, A, &lda, B, &ldb, &beta, C, &ldc)
    else:
        if floating is float:
            sgemm(&tb, &ta, &N, &M, &Kd, &alpha, B, &ldb, A, &lda, &beta, C, &ldc)
        else:
            dgemm(&tb, &ta, &N, &M, &Kd, &alpha, B, &ldb, A, &lda, &beta, C, &ldc)


# ------------------------------------------------------------------ im2col / col2im
cdef inline Py_ssize_t ceil_div_pos(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0, and 0 when a <= 0."""
    return (a + b - 1) // b if a > 0 else 0


cdef inline (Py_ssize_t, Py_ssize_t) inside(Geom* g, Py_ssize_t off) noexcept nogil:
    """[lo, hi): the output columns whose tap iw = ow*sw + off lies inside [0, W)."""
    cdef Py_ssize_t lo = min(g.OW, ceil_div_pos(-off, g.sw))
    return lo, max(lo, min(g.OW, ceil_div_pos(g.W - off, g.sw)))


cdef void transfer_nchw(floating* img, floating* col, Geom* g, Py_ssize_t c0, Py_ssize_t oh0, Py_ssize_t oh1,
                        bint to_image) noexcept nogil:
    """Between channels [c0, c0+Cg) of one CHW image and the R x Pt columns of output rows
    [oh0, oh1), row-major, one row per tap (c, i, j). im2col (to_image=0) writes zeros
    where a tap falls in the padding; col2im (to_image=1) adds each column value into the
    pixel it came from.

    At stride 1 with the image as wide as the output ("same" padding: ResNet's and VGG's
    3x3 layers) a tap's column row is the image shifted by a constant offset, so its rows
    inside the image move as one run (transfer_run); row by row they were one 224-byte
    memcpy each, and the col2im's strided loop did not vectorise (resnet_3x3_64 at one
    core: col2im 14% of grad-input's time)."""
    cdef Py_ssize_t Pt = (oh1 - oh0) * g.OW
    cdef bint flat = g.sh == 1 and g.sw == 1 and g.W == g.OW
    cdef Py_ssize_t c, i, j, oh, ow, ih, off, lo, hi, a, b
    cdef floating* plane
    cdef floating* row
    cdef floating* seg
    cdef floating* src
    for c in range(g.Cg):
        plane = img + (c0 + c) * g.H * g.W
        for i in range(g.kh):
            # [a, b): the tile's output rows whose tap row ih = oh*sh - pt + i*dh is in the image
            a = min(oh1, max(oh0, ceil_div_pos(g.pt - i * g.dh, g.sh)))
            b = max(a, min(oh1, ceil_div_pos(g.H + g.pt - i * g.dh, g.sh)))
            for j in range(g.kw):
                row = col + ((c * g.kh + i) * g.kw + j) * Pt
                off = j * g.dw - g.pl
                lo, hi = inside(g, off)
                if not to_image:
                    memset(row, 0, (a - oh0) * g.OW * sizeof(floating))
                    memset(row + (b - oh0) * g.OW, 0, (oh1 - b) * g.OW * sizeof(floating))
                if flat:
                    transfer_run(plane + (a - g.pt + i * g.dh) * g.W + off, row + (a - oh0) * g.OW, b - a, g.OW,
                                 lo, hi, to_image)
                    continue
                for oh in range(a, b):
                    seg = row + (oh - oh0) * g.OW
                    src = plane + (oh * g.sh - g.pt + i * g.dh) * g.W
                    if to_image:
                        for ow in range(lo, hi):
                            src[ow * g.sw + off] += seg[ow]
                        continue
                    if lo > 0 or hi < g.OW:  # (a call per edge row only: these rows are short)
                        memset(seg, 0, lo * sizeof(floating))
                        memset(seg + hi, 0, (g.OW - hi) * sizeof(floating))
                    if g.sw == 1:
                        memcpy(seg + lo, src + lo + off, (hi - lo) * sizeof(floating))
                    else:
                        for ow in range(lo, hi):
                            seg[ow] = src[ow * g.sw + off]


cdef void transfer_run(floating* src, floating* seg, Py_ssize_t rows, Py_ssize_t OW, Py_ssize_t lo, Py_ssize_t hi,
                       bint to_image) noexcept nogil:
    """transfer_nchw's stride-1 case for `rows` rows of OW values, seg[k] <-> src[k] where
    column k % OW is in [lo, hi). The run from the first row's column lo to the last
    row's column hi - 1 moves at once; in between, the columns outside [lo, hi) that it
    spans are zeros in the columns (im2col: written after the copy; col2im: zeroed in the
    column buffer first, so adding them into the neighbouring row's pixels adds 0)."""
    cdef Py_ssize_t r, n = (rows - 1) * OW + hi - lo
    if rows <= 0:
        return
    if lo >= hi:  # the tap never reads the image on these rows
        if not to_image:
            memset(seg, 0, rows * OW * sizeof(floating))
        return
    if to_image:
        for r in range(rows - 1):
            zero_run(seg + r * OW + hi, OW - hi + lo)
        add_run(src + lo, seg + lo, n)
        return
    memcpy(seg + lo, src + lo, n * sizeof(floating))
    zero_run(seg, lo)
    for r in range(rows - 1):
        zero_run(seg + r * OW + hi, OW - hi + lo)
    zero_run(seg + (rows - 1) * OW + hi, OW - hi)


cdef inline void zero_run(floating* dst, Py_ssize_t n) noexcept nogil:
    """dst[0:n] = 0: a loop, as the runs are a padding's width (a memset call per 1-value
    run cost 5% of a 3x3 grad-input)."""
    cdef Py_ssize_t k
    for k in range(n):
        dst[k] = 0


cdef inline void add_run(floating* dst, floating* src, Py_ssize_t n) noexcept nogil:
    """dst[0:n] += src[0:n]."""
    cdef Py_ssize_t k
    for k in range(n):
        dst[k] += src[k]


cdef void transfer_nhwc(floating* img, floating* col, Geom* g, Py_ssize_t c0, Py_ssize_t oh0, Py_ssize_t oh1,
                        bint to_image) noexcept nogil:
    """As transfer_nchw for one HWC image: Pt x R row-major, one row per output pixel
    holding its taps (i, j), each the Cg contiguous channels [c0, c0+Cg). Pixel by pixel,
    so the column is written in order. With dilation 1 and one group the taps of a
    kernel row are adjacent in the image as in the column (tap j + 1 is the next pixel's
    C channels), so one copy moves the whole run of them that lies inside the image
    (3x3, 64 channels: a third of the copies, 768 bytes each; NHWC grad-input on
    ResNet's 56x56 layer 5% faster at one core, the forward unchanged)."""
    cdef Py_ssize_t oh, ow, i, j, jlo, jhi, run, iw0, ih
    cdef bint adjacent = g.dw * g.C == g.Cg
    cdef floating* pix
    cdef floating* seg
    cdef floating* src
    for oh in range(oh0, oh1):
        for ow in range(g.OW):
            pix = col + ((oh - oh0) * g.OW + ow) * g.R
            # [jlo, jhi): the taps j of this pixel whose column iw0 + j*dw lies inside [0, W)
            iw0 = ow * g.sw - g.pl
            jlo = min(g.kw, ceil_div_pos(-iw0, g.dw))
            jhi = max(jlo, min(g.kw, ceil_div_pos(g.W - iw0, g.dw)))
            for i in range(g.kh):
                seg = pix + i * g.kw * g.Cg
                ih = oh * g.sh - g.pt + i * g.dh
                if ih < 0 or ih >= g.H:
                    if not to_image:
                        memset(seg, 0, g.kw * g.Cg * sizeof(floating))
                    continue
                if not to_image and (jlo > 0 or jhi < g.kw):
                    memset(seg, 0, jlo * g.Cg * sizeof(floating))
                    memset(seg + jhi * g.Cg, 0, (g.kw - jhi) * g.Cg * sizeof(floating))
                j = jlo
                while j < jhi:
                    run = jhi - j if adjacent else 1
                    src = img + (ih * g.W + iw0 + j * g.dw) * g.C + c0
                    if to_image:
                        add_run(src, seg + j * g.Cg, run * g.Cg)
                    else:
                        memcpy(seg + j * g.Cg, src, run * g.Cg * sizeof(floating))
                    j += run


cdef inline void transfer(floating* img, floating* col, Geom* g, Py_ssize_t grp, Py_ssize_t oh0, Py_ssize_t oh1,
                          bint to_image) noexcept nogil:
    if g.nhwc:
        transfer_nhwc(img, col, g, grp * g.Cg, oh0, oh1, to_image)
    else:
        transfer_nchw(img, col, g, grp * g.Cg, oh0, oh1, to_image)


# ------------------------------------------------------------- the matrices of a tile
cdef inline floating* columns(Geom* g, floating* img, floating* buf, Py_ssize_t grp, Py_ssize_t oh0,
                              Py_ssize_t oh1, int* ld) noexcept nogil:
    """Where group grp's R x Pt column matrix for rows [oh0, oh1) lives: the image itself
    (identity geometry) or the buffer. Column-major iff NHWC."""
    if g.identity:
        ld[0] = g.C if g.nhwc else g.P
        return img + (oh0 * g.OW * g.C + grp * g.Cg if g.nhwc else grp * g.Cg * g.P + oh0 * g.OW)
    ld[0] = g.R if g.nhwc else (oh1 - oh0) * g.OW
    return buf


cdef inline floating* out_tile(Geom* g, floating* out_img, Py_ssize_t grp, Py_ssize_t oh0, int* ld) noexcept nogil:
    """Group grp's Kg x Pt slice of an output-shaped image from row oh0. Column-major iff NHWC."""
    ld[0] = g.K if g.nhwc else g.P
    return out_img + (oh0 * g.OW * g.K + grp * g.Kg if g.nhwc else grp * g.Kg * g.P + oh0 * g.OW)


cdef void epilogue(floating* y, int ld, bint cm, Py_ssize_t M, Py_ssize_t N, floating* bias, bint relu) noexcept nogil:
    """y[k, p] = max(y[k, p] + bias[k], 0) (bias may be NULL, ReLU optional); NaN stays NaN."""
    cdef Py_ssize_t rs = 1 if cm else ld, cs = ld if cm else 1
    cdef Py_ssize_t k, p
    cdef floating b = 0, v
    for k in range(M):
        if bias != NULL:
            b = bias[k]
        for p in range(N):
            v = y[k * rs + p * cs] + b
            y[k * rs + p * cs] = 0 if (relu and v < 0) else v


# convkit._cpu's transpose for the active instruction set (a capsule: called without the
# GIL). Its vector-register blocks (16 x 16 with AVX-512) beat what this module's portable
# build can do: the scalar blocked loop it replaces cost 6% of a 3x3 forward on pixel-major
# columns (ResNet's 64 channels on 56 x 56, one core), half in each of its transposes.
ctypedef void (*transpose_f32_t)(const float*, int64_t, float*, int64_t, int64_t, int64_t) noexcept nogil
ctypedef void (*transpose_f64_t)(const double*, int64_t, double*, int64_t, int64_t, int64_t) noexcept nogil
cdef transpose_f32_t transpose_f32 = <transpose_f32_t>PyCapsule_GetPointer(_cpu.transpose_f32, b"convkit.transpose_f32")
cdef transpose_f64_t transpose_f64 = <transpose_f64_t>PyCapsule_GetPointer(_cpu.transpose_f64, b"convkit.transpose_f64")


cdef void transpose(floating* src, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lds, floating* dst, Py_ssize_t ldd,
                    floating* bias, bint relu) noexcept nogil:
    """dst[c * ldd + r] = src[r * lds + c] (+ bias[c], ReLU'd if relu; bias may be NULL)."""
    if floating is float:
        transpose_f32(src, lds, dst, ldd, rows, cols)
    else:
        transpose_f64(src, lds, dst, ldd, rows, cols)
    if bias != NULL or relu:
        epilogue(dst, ldd, False, cols, rows, bias, relu)


cdef void forward_tile_via_hwc(Geom* g, floating* xn, floating* yn, floating* wt, floating* bias, bint relu,
                               floating* buf, floating* hwc, floating* ytile, Py_ssize_t oh0,
                               Py_ssize_t oh1) noexcept nogil:
    """Output rows [oh0, oh1) of NCHW image xn's forward with pixel-major columns, as in
    NHWC: OpenBLAS's sgemm runs 15-25% faster on y^T[K x Pt] = w[K x R] . col[R x Pt] with
    col column-major than on row-major R x Pt columns (one core, R=576, K=64, Pt 256-1024
    pixels: 207-220 vs 172-187 GFLOP/s; packing a column-major B is its cheap case). The
    input rows the tile reads are transposed to HWC (the tile's share of the image plus the
    kernel's halo, so the copy stays in cache), and the output tile back to CHW with the
    bias and ReLU. groups == 1 only."""
    cdef Geom h = g[0]
    cdef Py_ssize_t Pt = (oh1 - oh0) * g.OW
    cdef Py_ssize_t ih0, ih1
    ih0, ih1 = hwc_rows(g, oh0, oh1)
    transpose(xn + ih0 * g.W, g.C, (ih1 - ih0) * g.W, g.H * g.W, hwc, g.C, NULL, False)
    # h: rows [ih0, ih1) as an HWC image whose top padding grew by ih0 (the rows outside
    # them that the tile reads are padding, as they were).
    h.nhwc, h.H, h.pt = True, ih1 - ih0, g.pt + ih0
    transfer_nhwc(hwc, buf, &h, 0, oh0, oh1, False)
    gemm(True, g.K, Pt, g.R, 1, wt, g.R, False, buf, g.R, True, 0, ytile, g.K)
    transpose(ytile, Pt, g.K, g.K, yn + oh0 * g.OW, g.P, bias, relu)


# ------------------------------------------------------------------- the primitives
cdef enum Primitive:
    FORWARD      # img = x (read),   outs = y (written),  wt = w (read)
    GRAD_INPUT   # img = gx (zeroed, accumulated), outs = gy, wt = w
    GRAD_WEIGHT  # img = x,          outs = gy,           wt = gw (zeroed, accumulated)


cdef inline bint gw_sums_column_major(Geom* g, Py_ssize_t rows) noexcept nogil:
    """Whether grad-weight sums dy_g . col^T into column-major Kg x R matrices (then
    transposed into the weight) rather than into the row-major weight itself: OpenBLAS
    multiplies 15-20% faster that way once a tile has GW_SUMS_CM_MIN_PIXELS pixels (with
    NCHW's row-major columns both operands then run along the pixels, 'T' x 'N', the
    case it packs cheapest; one core, K=64, R=576, 900-3100 pixels: 202-212 vs 172-178
    GFLOP/s; grad-weight over the suite, time vs the row-major sums: ResNet 3x3 64
    0.86-0.87, 3x3 128 stride 2 (784 pixels) 0.86, VGG 0.87, 1x1 256->64 0.84, stem
    0.84), but slower on short tiles (ResNet 3x3 256 on 14x14, 196 pixels, 1.08;
    Xception 1x1 on 19x19, 361 pixels, 1.11; 289-1089 pixels with R >= 896: 0.98-1.01)."""
    return min(rows, g.OH) * g.OW >= GW_SUMS_CM_MIN_PIXELS


cdef void run_tiles(Primitive prim, Geom* g, floating* img, floating* outs, floating* wt, floating* bias, bint relu,
                    floating* buf, floating* hwc, floating* tmp, Py_ssize_t rows) noexcept nogil:
    """One primitive over every image, tile of output rows and group. img is input-shaped,
    outs output-shaped, wt weight-shaped (taps in the layout's column order); hwc is
    forward_tile_via_hwc's scratch, tmp the GEMM result that it or grad-weight
    transposes into place.

    Grad-weight: on tiles of >= GW_SUMS_CM_MIN_PIXELS pixels its sums build up in tmp as
    column-major Kg x R matrices and are transposed into wt once at the end (a
    weight-sized copy), else straight in wt (see gw_sums_column_major)."""
    cdef Py_ssize_t n, grp, oh0, oh1, Pt
    cdef bint sums_cm = prim == GRAD_WEIGHT and gw_sums_column_major(g, rows)
    cdef int ldc, ldo
    cdef floating* imgn
    cdef floating* colp
    cdef floating* ot
    cdef floating* wg
    for n in range(g.N):
        imgn = img + n * g.C * g.H * g.W
        oh0 = 0
        while oh0 < g.OH:
            oh1 = min(g.OH, oh0 + rows)
            Pt = (oh1 - oh0) * g.OW
            if prim == FORWARD and g.via_hwc:
                forward_tile_via_hwc(g, imgn, outs + n * g.K * g.P, wt, bias, relu, buf, hwc, tmp, oh0, oh1)
                oh0 = oh1
                continue
            for grp in range(g.G):
                colp = columns(g, imgn, buf, grp, oh0, oh1, &ldc)
                ot = out_tile(g, outs + n * g.K * g.P, grp, oh0, &ldo)
                wg = wt + grp * g.Kg * g.R
                if prim != GRAD_INPUT and not g.identity:
                    transfer(imgn, colp, g, grp, oh0, oh1, False)
                if prim == FORWARD:
                    gemm(g.nhwc, g.Kg, Pt, g.R, 1, wg, g.R, False, colp, ldc, g.nhwc, 0, ot, ldo)
                    if bias != NULL or relu:
                        epilogue(ot, ldo, g.nhwc, g.Kg, Pt, bias + grp * g.Kg if bias != NULL else NULL, relu)
                elif prim == GRAD_INPUT:
                    # w_g^T: the row-major Kg x R block read as R x Kg column-major.
                    gemm(g.nhwc, g.R, Pt, g.Kg, 1, wg, g.R, True, ot, ldo, g.nhwc, 0, colp, ldc)
                    if not g.identity:
                        transfer(imgn, colp, g, grp, oh0, oh1, True)
                else:
                    # col^T: the same storage read in the other orientation. The first
                    # product of each group overwrites its sums.
                    gemm(sums_cm, g.Kg, g.R, Pt, 1, ot, ldo, g.nhwc, colp, ldc, not g.nhwc,
                         0 if n == 0 and oh0 == 0 else 1, tmp + grp * g.Kg * g.R if sums_cm else wg,
                         g.Kg if sums_cm else g.R)
            oh0 = oh1
    if sums_cm:
        for grp in range(g.G):
            transpose(tmp + grp * g.Kg * g.R, g.R, g.Kg, g.Kg, wt + grp * g.Kg * g.R, g.R, NULL, False)


cdef inline (Py_ssize_t, Py_ssize_t) hwc_rows(Geom* g, Py_ssize_t oh0, Py_ssize_t oh1) noexcept nogil:
    """[ih0, ih1): the input rows output rows [oh0, oh1) read, clipped to the image (may be empty)."""
    cdef Py_ssize_t ih0 = min(g.H, max(0, oh0 * g.sh - g.pt))
    return ih0, max(ih0, min(g.H, (oh1 - 1) * g.sh - g.pt + (g.kh - 1) * g.dh + 1))


# --------------------------------------------------------------------- Python entries
cdef tuple nchw_sizes(Py_ssize_t* shape, bint nhwc):
    """(N, C, H, W) of a 4-D array in either layout."""
    return (shape[0], shape[3], shape[1], shape[2]) if nhwc else (shape[0], shape[1], shape[2], shape[3])


cdef object new_array(Geom* g, Py_ssize_t n, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w, dtype, bint zero):
    shape = (n, h, w, c) if g.nhwc else (n, c, h, w)
    return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)


cdef object tap_major(w, bint nhwc):
    """The weight with its taps in the column order of the layout: (K, kh, kw, C/groups) for NHWC."""
    return np.ascontiguousarray(np.transpose(w, (0, 2, 3, 1))) if nhwc else w


cdef require_nchw(name, tuple got, tuple want, bint nhwc):
    if got != want:
        order = "NHWC as (N, C, H, W)" if nhwc else "NCHW"
        raise ValueError(f"{name} has {order} sizes {got}, expected {want}")


# Scratch kept per thread between calls, up to WORKSPACE_KEEP bytes: a fresh multi-MiB
# buffer is page-faulted in on every call, which cost as much as the GEMM of a small
# layer (3x3, C=8, K=32 on 56x56: a third of the time in the kernel's page faults).
# Per thread, because the kernels run without the GIL.
_workspaces = threading.local()
WORKSPACE_KEEP = 64 << 20


cdef inline Py_ssize_t aligned(Py_ssize_t n) noexcept nogil:
    """n rounded up to 16 values (64 bytes or more), so that each scratch piece starts on a cache line."""
    return (n + 15) // 16 * 16


cdef workspace(Py_ssize_t n, dtype):
    """At least n (>= 1) values of dtype: this thread's kept buffer when it is large enough."""
    n = max(n, 1)
    kept = getattr(_workspaces, dtype.__name__, None)
    if kept is not None and kept.size >= n:
        return kept
    fresh = np.empty(n, dtype)
    if n * fresh.itemsize <= WORKSPACE_KEEP:
        setattr(_workspaces, dtype.__name__, fresh)
    return fresh


cdef void launch(Primitive prim, Geom* g, const floating[:, :, :, ::1] img, const floating[:, :, :, ::1] outs,
                 const floating[:, :, :, ::1] wt, const floating[::1] bias, bint relu,
                 Py_ssize_t buffer_limit) except *:
    """Takes the scratch of one tile (its column buffer recorded in last_call_stats) and
    runs the primitive without the GIL. The array it writes (img, outs or wt, per Primitive) is a
    fresh array of ours, passed read-only only to share one signature."""
    global _last_tiles, _last_buffer_bytes
    if buffer_limit <= 0:
        raise ValueError(f"buffer_limit must be > 0 bytes, got {buffer_limit}")
    cdef Py_ssize_t rows = tile_rows(g, buffer_limit, sizeof(floating))
    cdef Py_ssize_t size = 0 if g.identity else g.R * rows * g.OW
    _last_tiles = (g.OH + rows - 1) // rows
    _last_buffer_bytes = size * sizeof(floating)
    # forward_tile_via_hwc's HWC rows of a tile; the GEMM result it or grad-weight transposes into place
    cdef Py_ssize_t hwc_size = g.C * g.W * min(g.H, (rows - 1) * g.sh + (g.kh - 1) * g.dh + 1) if g.via_hwc else 0
    cdef Py_ssize_t tmp_size = 0
    if g.via_hwc:
        tmp_size = g.K * rows * g.OW
    elif prim == GRAD_WEIGHT and gw_sums_column_major(g, rows):
        tmp_size = g.K * g.R
    cdef floating[::1] work = workspace(aligned(size) + aligned(hwc_size) + aligned(tmp_size),
                                        np.float32 if floating is float else np.float64)
    cdef floating* buf = &work[0]
    cdef floating* hwc = buf + aligned(size)
    if g.N == 0:
        return
    with nogil:
        run_tiles(prim, g, <floating*>&img[0, 0, 0, 0], <floating*>&outs[0, 0, 0, 0], <floating*>&wt[0, 0, 0, 0],
                  <floating*>&bias[0] if bias is not None else NULL, relu, buf, hwc,
                  hwc + aligned(hwc_size), rows)


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, const floating[::1] bias, stride,
                   padding, dilation, Py_ssize_t groups, bint relu, bint nhwc, Py_ssize_t buffer_limit):
    """y = conv2d(x, w) + bias (ReLU'd if relu); x and y NCHW or NHWC (nhwc), w (K, C/groups, kh, kw),
    padding (top, bottom, left, right), bias None or (K,)."""
    N, C, H, W = nchw_sizes(x.shape, nhwc)
    cdef Geom g = make_geom(N, C, H, W, w.shape[0], w.shape[1], w.shape[2], w.shape[3], stride, padding, dilation,
                            groups, nhwc)
    if bias is not None and bias.shape[0] != g.K:
        raise ValueError(f"bias has shape ({bias.shape[0]},), expected ({g.K},)")
    g.via_hwc = (not nhwc and g.G == 1 and not g.identity and g.C >= HWC_MIN_CHANNELS
                 and g.P >= HWC_TILE_MIN_PIXELS)
    y = new_array(&g, g.N, g.K, g.OH, g.OW, np.asarray(x).dtype, False)
    cdef floating[:, :, :, ::1] yv = y
    cdef const floating[:, :, :, ::1] wk = tap_major(np.asarray(w), nhwc or g.via_hwc)
    launch(FORWARD, &g, x, yv, wk, bias, relu, buffer_limit)
    return y


def conv2d_grad_input(const floating[:, :, :, ::1] grad_output, const floating[:, :, :, ::1] w, input_hw, stride,
                      padding, dilation, Py_ssize_t groups, bint nhwc, Py_ssize_t buffer_limit):
    """Gradient of conv2d with respect to its input of spatial size input_hw."""
    N, K = nchw_sizes(grad_output.shape, nhwc)[:2]
    H, W = input_hw
    cdef Geom g = make_geom(N, w.shape[1] * groups, H, W, w.shape[0], w.shape[1], w.shape[2], w.shape[3], stride,
                            padding, dilation, groups, nhwc)
    require_nchw("grad_output", nchw_sizes(grad_output.shape, nhwc), (g.N, g.K, g.OH, g.OW), nhwc)
    gx = new_array(&g, g.N, g.C, g.H, g.W, np.asarray(w).dtype, True)
    cdef floating[:, :, :, ::1] gxv = gx
    cdef const floating[:, :, :, ::1] wk = tap_major(np.asarray(w), nhwc)
    cdef const floating[::1] no_bias = None
    launch(GRAD_INPUT, &g, gxv, grad_output, wk, no_bias, False, buffer_limit)
    return gx


def conv2d_grad_weight(const floating[:, :, :, ::1] grad_output, const floating[:, :, :, ::1] x, kernel_hw, stride,
                       padding, dilation, Py_ssize_t groups, bint nhwc, Py_ssize_t buffer_limit):
    """Gradient of conv2d with respect to its (K, C/groups, kh, kw) weight."""
    N, C, H, W = nchw_sizes(x.shape, nhwc)
    K = nchw_sizes(grad_output.shape, nhwc)[1]
    kh, kw = kernel_hw
    if groups <= 0 or C % groups:
        raise ValueError(f"groups={groups} must divide the input's C={C} (NCHW sizes {(N, C, H, W)})")
    cdef Geom g = make_geom(N, C, H, W, K, C // groups, kh, kw, stride, padding, dilation, groups, nhwc)
    require_nchw("grad_output", nchw_sizes(grad_output.shape, nhwc), (g.N, g.K, g.OH, g.OW), nhwc)
    gw = np.zeros((g.K, g.kh, g.kw, g.Cg) if nhwc else (g.K, g.Cg, g.kh, g.kw), np.asarray(x).dtype)
    cdef floating[:, :, :, ::1] gwv = gw
    cdef const floating[::1] no_bias = None
    launch(GRAD_WEIGHT, &g, x, grad_output, gwv, no_bias, False, buffer_limit)
    return np.ascontiguousarray(np.transpose(gw, (0, 3, 1, 2))) if nhwc else gw

