#include "workflows/own_pause.h"

#include <algorithm>
#include <string>

#include <fmt/format.h>

namespace shardwire::workflows {

Status WaitTransferWithoutOwnPauses(Agent& agent, TransferHandle h, double timeout_s, double slice_s,
                                    const std::function<Status()>& between_slices) {
  OwnPauseDeadline deadline(timeout_s, slice_s, PauseClock::now(), LaneStallOf(agent));
  while (true) {
    Status st = agent.Wait(h, std::clamp(deadline.Left(), 0.0, slice_s));
    if (st.code() != ErrorCode::kTimedOut) return st;
    if (deadline.Left() <= 0) {
      const std::string paused =
          deadline.paused_s() > 0
              ? fmt::format(" of this process and its lanes running (held up for {:.2f} s, {:.2f} s of it the lanes)",
                            deadline.paused_s(), deadline.lanes_s())
              : std::string();
      return TimedOut(
          fmt::format("transfer not complete within {:.1f} s{} (last slice: {})", timeout_s, paused, st.message()));
    }
    if (between_slices) SW_RETURN_IF_ERROR(between_slices());
  }
}

}  // namespace shardwire::workflows
