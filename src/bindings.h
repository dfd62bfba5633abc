// One pybind11 module (convkit._cpu); each operator family adds its functions here.
#pragma once
#include <pybind11/pybind11.h>

namespace convkit {
void bind_conv(pybind11::module_& m);
void bind_pool(pybind11::module_& m);

}  // namespace convkit
