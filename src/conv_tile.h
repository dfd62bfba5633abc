// The contract between the direct-convolution operators (src/conv_direct.cpp) and the
// microkernels (kernels/cpu/): what one kernel call computes, and the tables of kernels
// each ISA offers. Operators fill these structs and never name an instruction set.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu_features.h"

namespace convkit {

// Where a tile's results go. The kernels compute over a flat pixel domain of rows Wq
// wide (see conv_planes.h); flat pixel p is (row, col) = (p / Wq, p % Wq), and it is
// stored at base + k*k_stride + row*row_stride + col*col_stride if row < rows and
// col < cols (the other flat pixels are scratch). NCHW, NHWC and grad-input's
// stride-phase scatter are all such maps.
template <typename T>
struct OutMap {
  T* base;  // output channel 0 of the tile's channel block, row 0, col 0
  std::int64_t k_stride, row_stride, col_stride;
  std::int64_t rows, cols, Wq;
};

// One reduction entry of a direct kernel: where it reads the input (relative to the
// tile's first pixel) and the weights (relative to each output channel's row).
struct Entry {
  std::int64_t x, w;
};

// One call of a direct kernel `R x P` (R output channels, P flat pixels): for r < R,
// i < P, acc[r][i] = bias[r] + sum over entries e < n of
//   in[ent[e].x + i] * w[r*w_ld + ent[e].w],
// then ReLU if asked, then stored through `out` for pixels p0 + i and channels r < kr.
// Weights are read in place (any layout with a channel stride: no per-call repacking);
// channels r >= kr read channel kr-1's row and are not stored. Input reads reach
// in[ent[e].x + P - 1]: the planes' slack covers the last tile.
template <typename T>
struct DirectTile {
  const T* in;               // input planes, shifted to the tile's first pixel
  const Entry* ent;          // the reduction entries
  std::int64_t n;            // number of reduction entries (0: the tile is bias or 0)
  const T* w;                // weights of output channel 0 of the block
  std::int64_t w_ld;         // weight stride between output channels
  const T* bias;             // kr values or nullptr
  bool relu;
  int kr;                    // valid output channels of the block, 1..R
  int skip;                  // leading pixels not stored (a last tile moved back, see DirectJob)
  std::int64_t p0;           // the tile's first flat pixel
  OutMap<T> out;
  bool prefetch_w;           // prefetch the weights (rows read with page-sized gaps, see DirectJob)
};

// One call of a grad-weight kernel `R x KB` (R reduction entries, KB output channels):
// for r < R, k < KB, acc[at[r]*KB + k] += sum over rows, cols of
//   gy[row*gy_ld + col*KB + k] * x[off[r] + row*x_ld + col].
template <typename T>
struct GwTile {
  const T* gy;                // packed grad_output of the channel block, [rows][cols][KB] with row stride gy_ld
  const T* x;                 // input planes of one image, shifted to the first row and column
  const std::int64_t* off;    // R entries' offsets into x
  const std::int64_t* at;     // R entries' rows of acc
  std::int64_t rows, cols, gy_ld, x_ld;
  T* acc;                     // rows of KB running sums, updated in place
};

// A direct kernel R x P, P = V vectors of pixels, and its narrower tiles: tile[v - 1]
// computes the first v vectors (v*P/V pixels), so a flat domain's last pixels run on
// narrower tiles. A 14 x 14 image (196 pixels) in 48-pixel tiles then computes 13
// vectors (208 pixels), not 5*48 (ResNet's 256-channel layers: 18% of the multiply-adds
// were discarded pixels).
template <typename T>
struct DirectKernel {
  std::vector<void (*)(const DirectTile<T>&)> tile;  // tile.back(): the full R x P tile
  int R, P;
  float eff;  // measured fraction of the FMA peak on a large layer (the tile choice's cost model)
  // The same with the weights read in place (DirectJob::prefetch_w, grad-input on small
  // images): each entry's R broadcasts then come from R runs far apart, which favours
  // fewer rows per tile up to the point where the input's loads bind (4 rows).
  float eff_w_in_place;
  const char* name;

  std::int64_t lanes() const { return P / static_cast<std::int64_t>(tile.size()); }
  // Tile t of the ceil(npix / P) tiles of an npix-pixel domain: its first flat pixel
  // (p0) and its vectors (returned). Full tiles, but the last two share their vectors
  // evenly: a 1-vector tile is load-bound (8 x 1: 9 loads per 8 FMAs), and the 108-pixel
  // regions of ASPP's grad-input (12 x 9 pixels, 7 vectors) ran 3 + 3 + 1 vectors with
  // the 1 taking 8% of the time; 3 + 2 + 2 computes the same vectors.
  // (Per kernel call: the tiles before the last two take no division.)
  int span(std::int64_t t, std::int64_t npix, std::int64_t& p0) const {
    const std::int64_t V = static_cast<std::int64_t>(tile.size()), n = (npix + P - 1) / P;
    p0 = t * P;
    if (t + 2 < n) return static_cast<int>(V);
    const std::int64_t nv = (npix + lanes() - 1) / lanes();
    if (n < 2) return static_cast<int>(nv);
    const std::int64_t pair = nv - (n - 2) * V, first = (pair + 1) / 2;  // the last two tiles' vectors
    if (t == n - 2) return static_cast<int>(first);
    p0 = (t - 1) * P + first * lanes();
    return static_cast<int>(pair - first);
  }
  // Pixels computed for an npix-pixel domain: full tiles, then the last one's vectors.
  std::int64_t padded(std::int64_t npix) const {
    const std::int64_t full = npix / P * P;
    return full + (npix - full + lanes() - 1) / lanes() * lanes();
  }
};

template <typename T>
struct GwKernel {
  void (*fn)(const GwTile<T>&);
  int R, KB;
  float eff;
  const char* name;
};

template <typename T>
struct ConvKernels {
  std::vector<DirectKernel<T>> direct;  // the tile shapes the operator may choose from
  std::vector<GwKernel<T>> gw;
  // dst[c*dst_ld + r] = src[r*src_ld + c] for a rows x cols matrix.
  void (*transpose)(const T* src, std::int64_t src_ld, T* dst, std::int64_t dst_ld, std::int64_t rows,
                    std::int64_t cols);
};

// The kernels of the active ISA (tables filled once per ISA, on first use).
template <typename T>
const ConvKernels<T>& conv_kernels();

// For tests: operators use the kernels of these names, where the active table has them,
// instead of the cost model's choice ("" restores the choice), and the forward packs
// folded tap-column planes (fold 1) or stride-phase planes (fold 0) whatever the cost
// (-1 restores the choice). Every tile shape's edges and both input layouts can then
// be exercised, not only what the cost model picks for small layers.
void force_conv_kernels(const std::string& direct, const std::string& gw, int fold);
std::string forced_conv_kernel(bool gw);
int forced_conv_fold();

// Per-ISA tables, defined in kernels/cpu/*conv__<isa>.cpp.
const ConvKernels<float>& conv_kernels_f32_scalar();
const ConvKernels<double>& conv_kernels_f64_scalar();
#ifdef CONVKIT_X86
const ConvKernels<float>& conv_kernels_f32_avx2();
const ConvKernels<float>& conv_kernels_f32_avx512();
#endif

}  // namespace convkit
