// UcsError (src/transport/ucx/ucx_raii.h): which ErrorCode each UCX status becomes. Callers
// branch on the code (a dead peer is re-planned around, a transport error is not), so a status
// mapped to the wrong code changes what a push or a load does.
#include "transport/ucx/ucx_raii.h"

#include <gtest/gtest.h>

namespace shardwire::transport {
namespace {

TEST(UcsError, APeerThatWentAwayIsPeerDisconnectedNamingTheCallAndTheStatus) {
  for (ucs_status_t gone : {UCS_ERR_CONNECTION_RESET, UCS_ERR_ENDPOINT_TIMEOUT, UCS_ERR_UNREACHABLE,
                            UCS_ERR_NOT_CONNECTED, UCS_ERR_CANCELED, UCS_ERR_SHMEM_SEGMENT}) {
    const Status s = UcsError("ucp_put_nbx", gone);
    EXPECT_EQ(s.code(), ErrorCode::kPeerDisconnected) << s.ToString();
    EXPECT_NE(s.message().find("ucp_put_nbx failed: "), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find(ucs_status_string(gone)), std::string::npos) << s.ToString();
  }
  // A killed same-host target whose segment was removed mid-put (CI, session 35: "Shared memory
  // error" instead of a disconnected peer in StoppedTarget.OtherPeerUnaffectedAndReplacementReconnects).
  EXPECT_NE(UcsError("ucp_put_nbx", UCS_ERR_SHMEM_SEGMENT).message().find("did its process exit"),
            std::string::npos);
}

TEST(UcsError, TimeoutsAndEverythingElse) {
  EXPECT_EQ(UcsError("ucp_worker_arm", UCS_ERR_TIMED_OUT).code(), ErrorCode::kTimedOut);
  for (ucs_status_t other : {UCS_ERR_NO_MEMORY, UCS_ERR_INVALID_PARAM, UCS_ERR_IO_ERROR, UCS_ERR_UNSUPPORTED}) {
    EXPECT_EQ(UcsError("ucp_mem_map", other).code(), ErrorCode::kTransportError) << ucs_status_string(other);
  }
}

}  // namespace
}  // namespace shardwire::transport
