// The _shardwire extension module (imported by python/shardwire/__init__.py).
#include <pybind11/pybind11.h>

#include "bindings.h"

PYBIND11_MODULE(_shardwire, m) {
  m.doc() = "Shardwire C++ core: models, layouts, plans, transport workflows (see the shardwire package).";
  shardwire::python::BindStatus(m);
  shardwire::python::BindModel(m);
  shardwire::python::BindLayout(m);
  shardwire::python::BindPlan(m);
  shardwire::python::BindCoordinator(m);
  shardwire::python::BindWeightSync(m);
  shardwire::python::BindConvert(m);
  shardwire::python::BindModelLoading(m);
}
