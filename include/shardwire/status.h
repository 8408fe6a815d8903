// Status and Result<T>: how every Shardwire operation reports failure.
//
// Modelled on LevelDB's Status: an operation returns a value that is either OK or
// carries a typed ErrorCode and a human message naming what is wrong and where
// (file, tensor, rank, peer, byte offset). No Shardwire API throws across its
// public boundary; errors travel as values.
//
// Thread-safety: Status and Result are plain values; distinct objects may be used
// from different threads freely, one object needs external synchronisation.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace shardwire {

/// The kind of failure. Callers branch on the code; the message is for humans.
enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,   ///< a caller-supplied value is out of range or malformed
  kNotFound,          ///< a file, tensor, key or peer that was named does not exist
  kCorruptData,       ///< bytes on disk or on the wire violate their format
  kLayoutMismatch,    ///< two descriptions of the same tensors disagree (shape, dtype, set)
  kIoError,           ///< the operating system refused a file or socket operation
  kTransportError,    ///< UCX reported an error
  kPeerDisconnected,  ///< a peer process went away
  kTimedOut,          ///< a wait exceeded its timeout
  kUnsupported,       ///< a valid request this build or machine cannot serve
  kVerificationFailed,///< received bytes differ from what was expected
  kInternal,          ///< a broken invariant inside Shardwire (a bug)
  kUnauthenticated,   ///< a service refused the caller's credentials (missing or wrong token)
  kUnavailable,       ///< a service (coordinator, Redis) cannot be reached; names its address
  kAlreadyExists,     ///< a name, rank or record that must be unique is already taken
  kFailedPrecondition,///< the request is valid but the current state forbids it (e.g. a version going backwards)
};

/// Stable lower-case name of a code, e.g. "corrupt data".
std::string_view ErrorCodeName(ErrorCode code);

/// The outcome of an operation: OK, or an ErrorCode with a message.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }

  /// "<code name>: <message>", or "ok".
  std::string ToString() const;

  /// A copy with `context` prepended to the message ("context: message").
  Status WithContext(std::string_view context) const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

// Shorthands that read like the error they make.
inline Status InvalidArgument(std::string m) { return {ErrorCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {ErrorCode::kNotFound, std::move(m)}; }
inline Status CorruptData(std::string m) { return {ErrorCode::kCorruptData, std::move(m)}; }
inline Status LayoutMismatch(std::string m) { return {ErrorCode::kLayoutMismatch, std::move(m)}; }
inline Status IoError(std::string m) { return {ErrorCode::kIoError, std::move(m)}; }
inline Status TransportError(std::string m) { return {ErrorCode::kTransportError, std::move(m)}; }
inline Status PeerDisconnected(std::string m) { return {ErrorCode::kPeerDisconnected, std::move(m)}; }
inline Status TimedOut(std::string m) { return {ErrorCode::kTimedOut, std::move(m)}; }
inline Status Unsupported(std::string m) { return {ErrorCode::kUnsupported, std::move(m)}; }
inline Status VerificationFailed(std::string m) { return {ErrorCode::kVerificationFailed, std::move(m)}; }
inline Status Internal(std::string m) { return {ErrorCode::kInternal, std::move(m)}; }
inline Status Unauthenticated(std::string m) { return {ErrorCode::kUnauthenticated, std::move(m)}; }
inline Status Unavailable(std::string m) { return {ErrorCode::kUnavailable, std::move(m)}; }
inline Status AlreadyExists(std::string m) { return {ErrorCode::kAlreadyExists, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {ErrorCode::kFailedPrecondition, std::move(m)}; }

/// Either a value of type T or a non-OK Status. Constructing a Result from an OK
/// Status is a bug (asserted; turned into kInternal in release builds).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!status_.ok());
    if (status_.ok()) status_ = Internal("Result constructed from an OK status without a value");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & { assert(ok()); return *value_; }
  const T& value() const& { assert(ok()); return *value_; }
  T&& value() && { assert(ok()); return std::move(*value_); }

  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace shardwire

/// Return early from the enclosing function when `expr` (a Status) is not OK.
#define SW_RETURN_IF_ERROR(expr)                   \
  do {                                             \
    ::shardwire::Status sw_status_ = (expr);       \
    if (!sw_status_.ok()) return sw_status_;       \
  } while (0)

#define SW_CONCAT_INNER_(a, b) a##b
#define SW_CONCAT_(a, b) SW_CONCAT_INNER_(a, b)
/// `SW_ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the error.
#define SW_ASSIGN_OR_RETURN(lhs, expr)                                   \
  auto SW_CONCAT_(sw_result_, __LINE__) = (expr);                        \
  if (!SW_CONCAT_(sw_result_, __LINE__).ok())                            \
    return SW_CONCAT_(sw_result_, __LINE__).status();                    \
  lhs = std::move(SW_CONCAT_(sw_result_, __LINE__)).value()
