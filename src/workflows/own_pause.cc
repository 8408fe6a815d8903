#include "workflows/own_pause.h"

#include <algorithm>
#include <numeric>
#include <string>

#include <fmt/format.h>

namespace shardwire::workflows {

Status WaitTransfersWithoutOwnPauses(Agent& agent, std::span<const TransferHandle> handles, double timeout_s,
                                     double slice_s, const std::function<void(std::size_t, const Status&)>& on_end,
                                     const std::function<Status()>& between_slices) {
  OwnPauseDeadline deadline(timeout_s, slice_s, PauseClock::now(), LaneStallOf(agent));
  std::vector<std::size_t> running(handles.size());
  std::iota(running.begin(), running.end(), std::size_t{0});
  while (true) {
    std::vector<std::size_t> still;
    for (const std::size_t i : running) {
      const Result<bool> done = agent.Test(handles[i]);
      if (done.ok() && !*done) {
        still.push_back(i);
      } else {
        on_end(i, done.ok() ? Status::Ok() : done.status());
      }
    }
    running = std::move(still);
    if (running.empty()) return Status::Ok();
    const double left = deadline.Left();
    if (left <= 0) {
      const std::string paused =
          deadline.paused_s() > 0
              ? fmt::format(" of this process and its lanes running (held up for {:.2f} s, {:.2f} s of it the lanes)",
                            deadline.paused_s(), deadline.lanes_s())
              : std::string();
      const std::string shared =
          handles.size() > 1 ? fmt::format(" (one deadline for {} transfers)", handles.size()) : std::string();
      const Status timed_out =
          TimedOut(fmt::format("transfer not complete within {:.1f} s{}{}", timeout_s, paused, shared));
      for (const std::size_t i : running) on_end(i, timed_out);
      return Status::Ok();
    }
    // Ends early when that transfer ends (it is reported at the next turn's Test).
    const Status st = agent.Wait(handles[running.front()], std::min(left, slice_s));
    if (st.code() == ErrorCode::kTimedOut && between_slices) SW_RETURN_IF_ERROR(between_slices());
  }
}

Status WaitTransferWithoutOwnPauses(Agent& agent, TransferHandle h, double timeout_s, double slice_s,
                                    const std::function<Status()>& between_slices) {
  Status result;
  SW_RETURN_IF_ERROR(WaitTransfersWithoutOwnPauses(
      agent, std::span<const TransferHandle>(&h, 1), timeout_s, slice_s,
      [&result](std::size_t, const Status& st) { result = st; }, between_slices));
  return result;
}

}  // namespace shardwire::workflows
