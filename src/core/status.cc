#include "shardwire/status.h"

namespace shardwire {

std::string_view ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kCorruptData: return "corrupt data";
    case ErrorCode::kLayoutMismatch: return "layout mismatch";
    case ErrorCode::kIoError: return "I/O error";
    case ErrorCode::kTransportError: return "transport error";
    case ErrorCode::kPeerDisconnected: return "peer disconnected";
    case ErrorCode::kTimedOut: return "timed out";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kVerificationFailed: return "verification failed";
    case ErrorCode::kInternal: return "internal error";
    case ErrorCode::kUnauthenticated: return "unauthenticated";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kAlreadyExists: return "already exists";
    case ErrorCode::kFailedPrecondition: return "failed precondition";
  }
  return "unknown error";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s(ErrorCodeName(code_));
  s += ": ";
  s += message_;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m));
}

}  // namespace shardwire
