#include "bindings.h"

#include "cpu_features.h"
#include "thread_pool.h"

namespace py = pybind11;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = R"doc(convkit's C++ core. Private: use the functions in convkit.)doc";

  m.def("set_num_threads", &convkit::set_num_threads, py::arg("n"),
        R"doc(Threads used by every CPU kernel; n <= 0 means the cores available.)doc");
  m.def("get_num_threads", &convkit::get_num_threads);
  m.def("set_fork_join", [](std::uintptr_t address) {
    convkit::set_fork_join(reinterpret_cast<convkit::ForkJoin>(address));
  }, py::arg("address"), R"doc(Run parallel jobs through this GOMP_parallel (its address; 0: convkit's own
threads). For convkit.torch, which passes the one of the OpenMP runtime PyTorch loaded.)doc");
  m.def("detected_isa", [] { return std::string(convkit::isa_name(convkit::detected_isa())); });
  m.def("active_isa", [] { return std::string(convkit::isa_name(convkit::active_isa())); });
  m.def("set_isa", [](const std::string& name) { convkit::set_isa(convkit::parse_isa(name)); },
        py::arg("name"), R"doc(Cap the ISA (scalar, avx2, avx512) at or below the detected one.)doc");
  m.def("cpu_features", &convkit::cpu_feature_list);
  m.attr("build_type") = CONVKIT_BUILD_TYPE;
  m.attr("compiler") = CONVKIT_COMPILER;

  convkit::bind_conv(m);
  convkit::bind_pool(m);
}
