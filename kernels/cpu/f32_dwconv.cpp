// The depthwise kernel table for an instruction set. Portable: it only takes addresses
// of the ISA files' tables, which exist only where CMake compiled them (x86-64).
#include "f32_dwconv.h"

namespace convkit {

const DwKernels& f32_dwconv_kernels(Isa isa) {
#ifdef CONVKIT_X86
  if (isa == Isa::avx512) return f32_dwconv_4x16__avx512;
  if (isa == Isa::avx2) return f32_dwconv_8x8__avx2;
#else
  (void)isa;
#endif
  return f32_dwconv_4x8__scalar;
}

}  // namespace convkit
