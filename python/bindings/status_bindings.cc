// Registers the translator StatusError -> shardwire.errors.<Class>(message) and exposes the
// error-code names (see python/shardwire/errors.py for the classes).
#include "status_bindings.h"

#include <pybind11/pybind11.h>

#include "bindings.h"

namespace py = pybind11;

namespace shardwire::python {

void BindStatus(py::module_& m) {
  // Names of every ErrorCode, in enum order (the codes are consecutive; ErrorCodeName names each,
  // -Wswitch keeps it complete, and says "unknown error" past the last); errors.py binds one
  // class per entry and refuses to import with a code it has no class for.
  py::list codes;
  for (int c = static_cast<int>(ErrorCode::kInvalidArgument);
       ErrorCodeName(static_cast<ErrorCode>(c)) != ErrorCodeName(static_cast<ErrorCode>(-1)); ++c) {
    codes.append(py::make_tuple(c, std::string(ErrorCodeName(static_cast<ErrorCode>(c)))));
  }
  m.attr("ERROR_CODES") = codes;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      py::object errors = py::module_::import("shardwire.errors");
      py::object cls = errors.attr("error_class")(static_cast<int>(e.status().code()));
      // Messages may quote bytes that are not UTF-8 (a tensor name given as bytes, a file's
      // contents): decoded with backslash escapes, so the typed error is raised, not a
      // UnicodeDecodeError from building its message.
      const std::string text = e.status().ToString();
      py::object message = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "backslashreplace"));
      if (!message) return;  // the decoder's own error is set (out of memory)
      PyErr_SetObject(cls.ptr(), message.ptr());
    }
  });
  m.def(
      "_raise_error", [](int code, const std::string& message) { throw StatusError(Status(ErrorCode(code), message)); },
      "Raises the exception class of error `code` (tests of the error mapping).");
}

}  // namespace shardwire::python
