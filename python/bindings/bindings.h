// The parts of the _shardwire extension module, one function per C++ header bound.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "gil_release.h"

namespace shardwire::python {

/// Deleter for bound objects whose destructor blocks (it joins threads, or makes a coordinator
/// call: WeightSubscriber leaves its job, CoordinatorServer shuts its service down): the GIL is
/// released while it runs, so other Python threads go on. Python frees objects holding the GIL.
template <typename T>
struct ReleaseGilDelete {
  void operator()(T* p) const {
    if (p == nullptr) return;
    GilRelease release;
    delete p;
  }
};
/// Holder type (py::class_<T, ReleaseGilHolder<T>>) of such objects.
template <typename T>
using ReleaseGilHolder = std::unique_ptr<T, ReleaseGilDelete<T>>;

void BindStatus(pybind11::module_& m);        ///< status_bindings.cc: errors
void BindModel(pybind11::module_& m);         ///< model_bindings.cc: dtypes, model descriptions
void BindLayout(pybind11::module_& m);        ///< layout_bindings.cc: layouts from layout strings
void BindPlan(pybind11::module_& m);          ///< plan_bindings.cc: transfer plans and their summaries
void BindCoordinator(pybind11::module_& m);   ///< coordinator_bindings.cc: embedded server, client
void BindWeightSync(pybind11::module_& m);    ///< weight_sync_bindings.cc: publisher, subscriber
void BindConvert(pybind11::module_& m);       ///< convert_bindings.cc: FP8 block quantisation
void BindModelLoading(pybind11::module_& m);  ///< model_loading_bindings.cc: P2P model source, loader

}  // namespace shardwire::python
