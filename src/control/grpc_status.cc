#include "control/grpc_status.h"

#include <fmt/format.h>

namespace shardwire::control {

grpc::Status ToGrpcStatus(const Status& status) {
  using grpc::StatusCode;
  StatusCode code = StatusCode::INTERNAL;
  std::string message = status.message();
  switch (status.code()) {
    case ErrorCode::kOk:
      return grpc::Status::OK;
    case ErrorCode::kInvalidArgument:
      code = StatusCode::INVALID_ARGUMENT;
      break;
    case ErrorCode::kNotFound:
      code = StatusCode::NOT_FOUND;
      break;
    case ErrorCode::kAlreadyExists:
      code = StatusCode::ALREADY_EXISTS;
      break;
    case ErrorCode::kFailedPrecondition:
      code = StatusCode::FAILED_PRECONDITION;
      break;
    case ErrorCode::kUnauthenticated:
      code = StatusCode::UNAUTHENTICATED;
      break;
    case ErrorCode::kUnavailable:
      code = StatusCode::UNAVAILABLE;
      break;
    case ErrorCode::kTimedOut:
      code = StatusCode::DEADLINE_EXCEEDED;
      break;
    case ErrorCode::kUnsupported:
      code = StatusCode::UNIMPLEMENTED;
      break;
    case ErrorCode::kCorruptData:
      code = StatusCode::DATA_LOSS;
      break;
    default:
      message = status.ToString();
      break;
  }
  return grpc::Status(code, message);
}

Status FromGrpcStatus(const grpc::Status& status, std::string_view method, std::string_view address) {
  using grpc::StatusCode;
  if (status.ok()) return Status::Ok();
  const std::string where = fmt::format("coordinator {} at {}", method, address);
  const std::string msg = fmt::format("{}: {}", where, status.error_message());
  switch (status.error_code()) {
    case StatusCode::INVALID_ARGUMENT:
    case StatusCode::OUT_OF_RANGE:
    case StatusCode::RESOURCE_EXHAUSTED:
      return InvalidArgument(msg);
    case StatusCode::NOT_FOUND:
      return NotFound(msg);
    case StatusCode::ALREADY_EXISTS:
      return AlreadyExists(msg);
    case StatusCode::FAILED_PRECONDITION:
      return FailedPrecondition(msg);
    case StatusCode::UNAUTHENTICATED:
    case StatusCode::PERMISSION_DENIED:
      return Unauthenticated(msg);
    case StatusCode::UNAVAILABLE:
    case StatusCode::CANCELLED:
      return Unavailable(msg);
    case StatusCode::DEADLINE_EXCEEDED:
      return TimedOut(msg);
    case StatusCode::UNIMPLEMENTED:
      return Unsupported(msg);
    case StatusCode::DATA_LOSS:
      return CorruptData(msg);
    default:
      return Internal(fmt::format("{} (gRPC code {})", msg, static_cast<int>(status.error_code())));
  }
}

}  // namespace shardwire::control
