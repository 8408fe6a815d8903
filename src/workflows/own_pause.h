// Internal (src/workflows): telling this process's own pauses apart from a peer's silence.
//
// A wait loop looks at its deadline at least once per poll slice (milliseconds to 1 s). A much
// longer gap between two looks means this process did not run: stopped (SIGSTOP, a debugger),
// a paused VM, or starved of CPU. The peers it waits for were not silent meanwhile: their
// answers wait in the agent's queues, and after a stop the lane threads deliver them only once
// they run again, maybe after the waiting thread's next look. A deadline that counts such a
// gap blames a healthy peer for this process's own pause, the peers' users' complaint of "a
// healthy source marked STALE for the target's own problem". Found twice by stopping
// processes: a P2P loader stopped 5-9 s marked its healthy seeds STALE (fault injection
// `p2p-loader-stop`, session 25), and a trainer stopped 11 s, longer than engine_timeout_s,
// made a ready engine rank miss a version ("no READY(v2326) ... within 10.0 s", session 29).
//
// The same holds when only the agent's lane threads did not run (starved while the waiting
// thread ran, or waiting for a lane lock another call held): the answers sat undelivered and
// the bytes unmoved. The agent measures that (Agent::LaneStallSeconds).
//
// So every wait of the push and the load moves its deadlines by such gaps
// (docs/reliability.md, "Own pauses").
//
// Thread-safety: none; each wait owns its own (one thread at a time).
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

using PauseClock = std::chrono::steady_clock;

/// A gap between two looks this much longer (seconds) than the loop's own poll slice is taken
/// as this process not running. Turns of the loops that use it take milliseconds beyond their
/// slice, so a real pause is never missed by more than this, and a slow turn is never this slow
/// unless the process was starved (which is forgiven too: the peers were not at fault).
inline constexpr double kOwnPauseSeconds = 0.5;

/// Measures this process's pauses from the gaps between a loop's looks at the clock.
class OwnPauseDetector {
 public:
  /// `slice_s`: the longest a turn of the caller's loop waits when the process runs (its poll
  /// slice, seconds, >= 0); `start`: when the wait began (the first gap is measured from it).
  explicit OwnPauseDetector(double slice_s, PauseClock::time_point start = PauseClock::now())
      : limit_(std::chrono::duration_cast<PauseClock::duration>(
            std::chrono::duration<double>(slice_s + kOwnPauseSeconds))),
        last_(start) {}

  /// The gap since the previous call (or the start) when it is longer than the slice plus
  /// kOwnPauseSeconds (this process did not run for it), else zero. `now` must not go back.
  PauseClock::duration Check(PauseClock::time_point now) {
    const PauseClock::duration gap = now - last_;
    last_ = now;
    if (gap <= limit_) return PauseClock::duration::zero();
    paused_ += gap;
    return gap;
  }

  /// Seconds of every pause Check found so far.
  double paused_s() const { return std::chrono::duration<double>(paused_).count(); }

 private:
  PauseClock::duration limit_;
  PauseClock::time_point last_;
  PauseClock::duration paused_ = PauseClock::duration::zero();
};

/// Seconds each lane of an agent was held up so far (Agent::LaneStallSeconds), as a function
/// for OwnPauseDeadline and OwnPauseForgiveness. `agent` must outlive the function.
using LaneStallFn = std::function<std::vector<double>()>;
inline LaneStallFn LaneStallOf(const Agent& agent) {
  return [&agent] { return agent.LaneStallSeconds(); };
}

/// What a wait forgives at each look: this process's own pauses (OwnPauseDetector) and the
/// growth of its agent's lane stalls (Agent::LaneStallSeconds: a lane held up moves no bytes
/// and delivers no message, whatever the peers do), the largest growth of one lane. One stop
/// of the process shows up in both: the larger of the two is forgiven, never their sum. What
/// the lanes account for is capped (`max_lanes_s`), so that a lane stuck for good cannot make
/// a wait without another bound wait for ever.
class OwnPauseForgiveness {
 public:
  /// `slice_s` as for OwnPauseDetector; `lane_stall_s`: LaneStallOf(agent), or empty (own pauses
  /// only), first read here; `max_lanes_s` >= 0: the most the lanes may account for in all.
  OwnPauseForgiveness(double slice_s, PauseClock::time_point start, LaneStallFn lane_stall_s = {},
                      double max_lanes_s = std::numeric_limits<double>::infinity())
      : detector_(slice_s, start), lane_stall_s_(std::move(lane_stall_s)), max_lanes_s_(max_lanes_s) {
    if (lane_stall_s_) lane_seen_s_ = lane_stall_s_();
  }

  /// What to forgive at `now` (zero, or the gap since the previous look): the larger of this
  /// process's pause and the largest stall of one lane since the previous call (within what
  /// is left of `max_lanes_s`). `now` must not go back.
  PauseClock::duration Check(PauseClock::time_point now) {
    const double own_s = std::chrono::duration<double>(detector_.Check(now)).count();
    double lanes_s = 0;
    if (lane_stall_s_) {
      const std::vector<double> total = lane_stall_s_();
      for (std::size_t i = 0; i < total.size(); ++i) {
        if (i >= lane_seen_s_.size()) lane_seen_s_.push_back(total[i]);
        lanes_s = std::max(lanes_s, total[i] - lane_seen_s_[i]);
        lane_seen_s_[i] = std::max(lane_seen_s_[i], total[i]);
      }
      lanes_s = std::min(lanes_s, std::max(0.0, max_lanes_s_ - lanes_forgiven_s_));
    }
    const double forgiven = std::max(own_s, lanes_s);
    forgiven_s_ += forgiven;
    if (lanes_s > own_s) lanes_forgiven_s_ += lanes_s;
    return std::chrono::duration_cast<PauseClock::duration>(std::chrono::duration<double>(forgiven));
  }

  /// Seconds forgiven so far, and the part of them the lanes' stall accounted for (more than
  /// this process's own pause at the same look).
  double forgiven_s() const { return forgiven_s_; }
  double lanes_s() const { return lanes_forgiven_s_; }

 private:
  OwnPauseDetector detector_;
  LaneStallFn lane_stall_s_;
  double max_lanes_s_;
  std::vector<double> lane_seen_s_;  // by lane
  double forgiven_s_ = 0;
  double lanes_forgiven_s_ = 0;
};

/// A wait's deadline, `timeout_s` seconds after its start, that moves by every pause of this
/// process its OwnPauseDetector finds, and by every stall of its agent's lanes when given one
/// (OwnPauseForgiveness): the peers get the whole timeout of time this side could listen. The
/// lanes move it by at most `timeout_s` in all: a wait ends within twice its timeout of this
/// process's running time, even with a lane stuck for good.
class OwnPauseDeadline {
 public:
  /// `timeout_s` >= 0 (+inf: never), `slice_s` as for OwnPauseDetector, `lane_stall_s` as for
  /// OwnPauseForgiveness.
  OwnPauseDeadline(double timeout_s, double slice_s, PauseClock::time_point start = PauseClock::now(),
                   LaneStallFn lane_stall_s = {})
      : forgiveness_(slice_s, start, std::move(lane_stall_s), timeout_s), start_(start), timeout_s_(timeout_s) {}

  /// Seconds left at `now` (<= 0: the timeout passed while this process and its lanes ran),
  /// after moving the deadline by what was forgiven since the previous call. Call it once per
  /// turn of the loop.
  double Left(PauseClock::time_point now = PauseClock::now()) {
    forgiveness_.Check(now);
    return timeout_s_ - (std::chrono::duration<double>(now - start_).count() - forgiveness_.forgiven_s());
  }

  /// Seconds by which the deadline moved, and the part the lanes' stall accounted for.
  double paused_s() const { return forgiveness_.forgiven_s(); }
  double lanes_s() const { return forgiveness_.lanes_s(); }

 private:
  OwnPauseForgiveness forgiveness_;
  PauseClock::time_point start_;
  double timeout_s_;
};

/// Agent::Wait for `h` in slices of `slice_s` seconds against an OwnPauseDeadline of
/// `timeout_s` (> 0): this process's own pauses and its agent's lane stalls do not count. `between_slices`, when set,
/// is called after every slice that ended without a completion; its non-OK status ends the wait and is returned (an
/// interrupt hook). Errors: the transfer's own error; kTimedOut naming timeout_s (and the pause forgiven, if any) when
/// the transfer is not complete after that much running time; the hook's status. Thread-safety: as Agent::Wait.
Status WaitTransferWithoutOwnPauses(Agent& agent, TransferHandle h, double timeout_s, double slice_s,
                                    const std::function<Status()>& between_slices = {});

/// Waits for several transfers (to different peers, say) at once, against one OwnPauseDeadline
/// of `timeout_s` (> 0) shared by all of them: k stalled peers cost one timeout, not k (a loop of
/// WaitTransferWithoutOwnPauses gives each the whole timeout after the previous one's). Every
/// transfer is looked at (Agent::Test) each turn, so one stuck in front does not delay noticing
/// the others. `on_end(i, status)` is called once per transfer `handles[i]`, as it is seen to
/// end: OK when complete, its own error (kPeerDisconnected, kCorruptData, ...) when failed, and
/// kTimedOut (naming timeout_s and what was forgiven) for every one still running when the
/// deadline passes, all at that one look; it runs on the calling thread and may call the agent.
/// A transfer that timed out keeps running (Cancel it or InvalidatePeer). Between turns the call
/// waits on the first transfer still running for at most `slice_s` seconds, then calls
/// `between_slices` if set (an interrupt hook): its non-OK status ends the wait and is returned,
/// and the transfers not yet reported get no on_end. Returns OK otherwise.
/// Thread-safety: as Agent::Wait.
Status WaitTransfersWithoutOwnPauses(Agent& agent, std::span<const TransferHandle> handles, double timeout_s,
                                     double slice_s, const std::function<void(std::size_t, const Status&)>& on_end,
                                     const std::function<Status()>& between_slices = {});

}  // namespace shardwire::workflows
