// Which instruction set the kernels use, chosen once at import from the CPU's features.
//
// The most capable ISA the CPU supports wins; CONVKIT_ISA=scalar|avx2|avx512 caps it
// (tests use it to exercise the fallbacks). Operators never name an ISA: they look up
// kernels in tables indexed by active_isa().
#pragma once
#include <string>

namespace convkit {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

Isa detected_isa();                 // best the CPU supports
Isa active_isa();                   // what the kernels use now
void set_isa(Isa isa);              // clamps to detected_isa()
const char* isa_name(Isa isa);
Isa parse_isa(const std::string& name);  // throws std::invalid_argument
std::string cpu_feature_list();     // e.g. "sse4.2 avx2 fma avx512f ..."

}  // namespace convkit
