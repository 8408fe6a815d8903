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

/// Throws InvalidArgumentError (a ShardwireError) "<what> rank <rank> is outside its <world>
/// ranks" unless 0 <= rank < world: an out-of-range rank is the caller's error.
inline void CheckRankInRange(const std::string& what, int rank, int world) {
  if (rank < 0 || rank >= world) {
    throw StatusError(InvalidArgument(what + " rank " + std::to_string(rank) + " is outside its " +
                                      std::to_string(world) + " ranks"));
  }
}

/// The value of `result`, or throws StatusError.
template <typename T>
T ValueOrThrow(Result<T> result) {
  if (!result.ok()) throw StatusError(result.status());
  return std::move(result).value();
}

}  // namespace shardwire::python
