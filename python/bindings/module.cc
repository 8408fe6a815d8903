// The _shardwire extension module (imported by python/shardwire/__init__.py).
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "shardwire/json_log.h"

PYBIND11_MODULE(_shardwire, m) {
  m.doc() = "Shardwire C++ core: models, layouts, plans, transport workflows (see the shardwire package).";
  shardwire::python::RecordMainThread();  // which thread may take the GIL while Python finalizes
  shardwire::LogToStderr();               // a framework's stdout may be its protocol
  shardwire::python::BindStatus(m);
  shardwire::python::BindModel(m);
  shardwire::python::BindLayout(m);
  shardwire::python::BindPlan(m);
  shardwire::python::BindCoordinator(m);
  shardwire::python::BindWeightSync(m);
  shardwire::python::BindConvert(m);
  shardwire::python::BindModelLoading(m);
}
