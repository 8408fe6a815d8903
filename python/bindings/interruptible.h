// Waits that release the GIL and still answer Ctrl-C.
//
// A C++ wait of T seconds is cut into slices of at most kSliceSeconds; between slices the
// GIL is re-taken and Python's signal handlers run (PyErr_CheckSignals), so KeyboardInterrupt
// interrupts any wait within about kSliceSeconds. Only waits whose timeout kTimedOut is
// harmless to repeat (reads, waits for a notification) are sliced this way.
#pragma once

#include <fmt/format.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "gil_release.h"
#include "shardwire/status.h"
#include "status_bindings.h"

namespace shardwire::python {

inline constexpr double kSliceSeconds = 0.25;

/// Calls `attempt(slice_s)` (which must return Result<T> and may block up to slice_s
/// seconds, returning kTimedOut when nothing happened) with the GIL released, until it
/// returns anything but kTimedOut or `timeout_s` seconds passed (+inf: never; only a
/// result or a signal ends the wait). Between slices, checks for
/// signals and throws pybind11::error_already_set (KeyboardInterrupt) if one is pending.
/// Returns the first result that is not kTimedOut; after timeout_s, kTimedOut with the
/// message "<what> within <timeout_s> s" (the whole wait, not the last slice's). A
/// timeout_s that is NaN or negative throws StatusError (kInvalidArgument).
/// Call with the GIL held.
template <typename Attempt>
auto WaitInterruptibly(double timeout_s, std::string_view what, Attempt attempt) -> decltype(attempt(0.0)) {
  using Clock = std::chrono::steady_clock;
  if (!(timeout_s >= 0)) {  // NaN and negatives (-inf included): no deadline can be computed
    throw StatusError(InvalidArgument("timeout_s must be >= 0 s or +inf, got " + std::to_string(timeout_s)));
  }
  const bool forever = std::isinf(timeout_s);  // until a result other than kTimedOut, or a signal
  const auto deadline =
      forever
          ? Clock::time_point::max()
          : Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  while (true) {
    const double left =
        forever ? kSliceSeconds : std::chrono::duration<double>(deadline - Clock::now()).count();
    const double slice = std::clamp(left, 0.0, kSliceSeconds);
    auto result = [&] {
      GilRelease release;
      return attempt(slice);
    }();
    if (result.ok() || result.status().code() != ErrorCode::kTimedOut) return result;
    if (!forever && left <= kSliceSeconds) return TimedOut(fmt::format("{} within {} s", what, timeout_s));
    if (PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
  }
}

/// An interrupt hook for the C++ workflows (WeightSyncOptions::interrupt,
/// ModelLoaderOptions::interrupt): takes the GIL, runs Python's signal handlers
/// (PyErr_CheckSignals) and, when one raised (KeyboardInterrupt for SIGINT), leaves that
/// Python exception set and returns a non-OK status, which ends the C++ wait. The binding
/// then re-raises it with ThrowPendingOr. The C++ side calls it every ~0.1 s while it waits.
inline std::function<Status()> PythonSignalHook() {
  return [] {
    ParkIfPythonIsFinalizing();
    pybind11::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) return FailedPrecondition("interrupted by a Python signal handler");
    return Status::Ok();
  };
}

/// For a result of a call made with PythonSignalHook (the GIL held again): a Python
/// exception the hook left set wins (thrown as error_already_set); otherwise the value, or
/// the C++ error as its ShardwireError class.
template <typename T>
T ValueOrPythonError(Result<T> result) {
  if (PyErr_Occurred() != nullptr) throw pybind11::error_already_set();
  return ValueOrThrow(std::move(result));
}

inline void ThrowPythonErrorOrStatus(const Status& status) {
  if (PyErr_Occurred() != nullptr) throw pybind11::error_already_set();
  ThrowIfError(status);
}

}  // namespace shardwire::python
