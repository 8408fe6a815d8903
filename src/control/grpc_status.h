// Internal to the control layer: the one place where Shardwire ErrorCodes and gRPC
// status codes are mapped onto each other (service answers, client results).
//
//   ErrorCode             <->  grpc::StatusCode
//   kInvalidArgument           INVALID_ARGUMENT (client also: RESOURCE_EXHAUSTED,
//                              OUT_OF_RANGE: the request was too large)
//   kNotFound                  NOT_FOUND
//   kAlreadyExists             ALREADY_EXISTS
//   kFailedPrecondition        FAILED_PRECONDITION
//   kUnauthenticated           UNAUTHENTICATED (client also: PERMISSION_DENIED)
//   kUnavailable               UNAVAILABLE (client also: CANCELLED by a stopping server)
//   kTimedOut                  DEADLINE_EXCEEDED
//   kUnsupported               UNIMPLEMENTED
//   kCorruptData               DATA_LOSS
//   anything else              INTERNAL (message prefixed with the code's name)
//
// Thread-safety: pure functions.
#pragma once

#include <grpcpp/support/status.h>

#include <string_view>

#include "shardwire/status.h"

namespace shardwire::control {

/// The gRPC status a service answers for `status` (OK for OK).
grpc::Status ToGrpcStatus(const Status& status);

/// The Status a client returns for a gRPC answer of `method` from the coordinator
/// at `address` (OK for OK). Messages name the method and address.
Status FromGrpcStatus(const grpc::Status& status, std::string_view method, std::string_view address);

}  // namespace shardwire::control
