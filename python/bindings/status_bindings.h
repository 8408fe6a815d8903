// How C++ errors (shardwire::Status) become Python exceptions.
//
// Every failed Status is thrown as StatusError and translated, at the Python boundary,
// into the exception class of its ErrorCode from shardwire.errors (one class per code,
// all subclasses of shardwire.errors.ShardwireError), carrying the C++ message.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "shardwire/status.h"

namespace shardwire::python {

/// A failed Status in flight from C++ to Python.
class StatusError : public std::runtime_error {
 public:
  explicit StatusError(Status status) : std::runtime_error(status.message()), status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

/// Throws StatusError for a non-OK status.
inline void ThrowIfError(const Status& status) {
  if (!status.ok()) throw StatusError(status);
}

/// The value of `result`, or throws StatusError.
template <typename T>
T ValueOrThrow(Result<T> result) {
  if (!result.ok()) throw StatusError(result.status());
  return std::move(result).value();
}

}  // namespace shardwire::python
