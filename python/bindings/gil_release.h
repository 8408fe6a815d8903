// Releasing the GIL around blocking C++ calls, safely at interpreter shutdown.
//
// A daemon thread still inside a Shardwire call when the main thread ends takes the GIL back
// while the interpreter finalizes; CPython then ends that thread with pthread_exit, whose
// unwinding through a noexcept destructor (pybind11::gil_scoped_release's) aborted the process
// ("terminate called without an active exception", exit code 134). Such a thread parks
// instead: it sleeps until the process exits, as a daemon thread is meant to.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <thread>

namespace shardwire::python {

/// The thread ident (PyThread_get_thread_ident) of Python's main thread, which finalizes the
/// interpreter and may take the GIL during finalization (it runs the destructors of module
/// globals then). Set once, when the module is imported (RecordMainThread), read-only after.
inline unsigned long& MainThreadIdent() {
  static unsigned long ident = 0;
  return ident;
}

/// Records threading.main_thread()'s ident. Called with the GIL held by the module's init.
inline void RecordMainThread() {
  MainThreadIdent() = pybind11::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
}

/// Called without the GIL by a thread about to take it back: returns at once unless the
/// interpreter is finalizing and this is not the main thread (the one finalizing), in which
/// case it never returns (sleeps until the process exits). A thread that passes the check just
/// before finalization begins can still be ended by CPython (a window of a few instructions).
inline void ParkIfPythonIsFinalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  const bool finalizing = Py_IsFinalizing() != 0;
#else
  const bool finalizing = _Py_IsFinalizing() != 0;
#endif
  if (!finalizing || PyThread_get_thread_ident() == MainThreadIdent()) return;
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

/// pybind11::gil_scoped_release (default form) that parks (ParkIfPythonIsFinalizing) rather
/// than take the GIL back during finalization. Every binding releases the GIL with it.
/// Thread-safety: per thread, as the GIL is.
class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  ~GilRelease() {
    ParkIfPythonIsFinalizing();
    PyEval_RestoreThread(state_);
  }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

}  // namespace shardwire::python
