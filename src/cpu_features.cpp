#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace convkit {
namespace {

bool has(const char* feature) {
#if defined(CONVKIT_X86) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports needs a literal; map the few names we care about.
  std::string f(feature);
  if (f == "avx2") return __builtin_cpu_supports("avx2");
  if (f == "fma") return __builtin_cpu_supports("fma");
  if (f == "avx512f") return __builtin_cpu_supports("avx512f");
  if (f == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (f == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (f == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (f == "avx512vnni") return __builtin_cpu_supports("avx512vnni");
  if (f == "avx512bf16") return __builtin_cpu_supports("avx512bf16");
  if (f == "sse4.2") return __builtin_cpu_supports("sse4.2");
#endif
  (void)feature;
  return false;
}

Isa detect() {
  if (has("avx512f") && has("avx512bw") && has("avx512dq") && has("avx512vl") && has("fma")) return Isa::avx512;
  if (has("avx2") && has("fma")) return Isa::avx2;
  return Isa::scalar;
}

Isa initial() {
  Isa best = detect();
  const char* env = std::getenv("CONVKIT_ISA");
  if (env && *env) {
    Isa want = Isa::scalar;
    try {
      want = parse_isa(env);
    } catch (const std::invalid_argument&) {
      return best;  // the Python layer reports a bad CONVKIT_ISA before importing us
    }
    if (static_cast<int>(want) < static_cast<int>(best)) return want;
  }
  return best;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial())};
  return isa;
}

}  // namespace

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  int v = static_cast<int>(isa), best = static_cast<int>(detected_isa());
  current().store(v < best ? v : best);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

Isa parse_isa(const std::string& name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw std::invalid_argument("CONVKIT_ISA must be one of scalar, avx2, avx512; got '" + name + "'");
}

std::string cpu_feature_list() {
  std::string out;
  for (const char* f : {"sse4.2", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni", "avx512bf16"}) {
    if (has(f)) {
      if (!out.empty()) out += ' ';
      out += f;
    }
  }
  return out;
}

}  // namespace convkit
