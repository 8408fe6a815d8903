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
#include <utility>

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

/// Seconds an agent's lanes were held up so far (Agent::LaneStallSeconds), as a function for
/// OwnPauseDeadline and OwnPauseForgiveness. `agent` must outlive the function.
inline std::function<double()> LaneStallOf(const Agent& agent) {
  return [&agent] { return agent.LaneStallSeconds(); };
}

/// What a wait forgives at each look: this process's own pauses (OwnPauseDetector) and the
/// growth of its agent's lane stall (Agent::LaneStallSeconds: a lane held up moves no bytes and
/// delivers no message, whatever the peers do). One stop of the process shows up in both: the
/// larger of the two is forgiven, never their sum.
class OwnPauseForgiveness {
 public:
  /// `slice_s` as for OwnPauseDetector; `lane_stall_s`: LaneStallOf(agent), or empty (own pauses
  /// only); it is first read here.
  OwnPauseForgiveness(double slice_s, PauseClock::time_point start, std::function<double()> lane_stall_s = {})
      : detector_(slice_s, start), lane_stall_s_(std::move(lane_stall_s)) {
    if (lane_stall_s_) lane_seen_s_ = lane_stall_s_();
  }

  /// What to forgive at `now` (zero, or the gap since the previous look): the larger of this
  /// process's pause and the lanes' stall since the previous call. `now` must not go back.
  PauseClock::duration Check(PauseClock::time_point now) {
    const PauseClock::duration own = detector_.Check(now);
    PauseClock::duration lanes = PauseClock::duration::zero();
    if (lane_stall_s_) {
      const double total = lane_stall_s_();
      if (total > lane_seen_s_) {
        lanes = std::chrono::duration_cast<PauseClock::duration>(std::chrono::duration<double>(total - lane_seen_s_));
        lane_seen_s_ = total;
      }
    }
    const PauseClock::duration forgiven = std::max(own, lanes);
    forgiven_ += forgiven;
    if (lanes > own) lanes_forgiven_ += lanes;
    return forgiven;
  }

  /// Seconds forgiven so far, and the part of them the lanes' stall accounted for (more than
  /// this process's own pause at the same look).
  double forgiven_s() const { return std::chrono::duration<double>(forgiven_).count(); }
  double lanes_s() const { return std::chrono::duration<double>(lanes_forgiven_).count(); }

 private:
  OwnPauseDetector detector_;
  std::function<double()> lane_stall_s_;
  double lane_seen_s_ = 0;
  PauseClock::duration forgiven_ = PauseClock::duration::zero();
  PauseClock::duration lanes_forgiven_ = PauseClock::duration::zero();
};

/// A wait's deadline, `timeout_s` seconds after its start, that moves by every pause of this
/// process its OwnPauseDetector finds, and by every stall of its agent's lanes when given one
/// (OwnPauseForgiveness): the peers get the whole timeout of time this side could listen.
class OwnPauseDeadline {
 public:
  /// `timeout_s` >= 0 (+inf: never), `slice_s` as for OwnPauseDetector, `lane_stall_s` as for
  /// OwnPauseForgiveness.
  OwnPauseDeadline(double timeout_s, double slice_s, PauseClock::time_point start = PauseClock::now(),
                   std::function<double()> lane_stall_s = {})
      : forgiveness_(slice_s, start, std::move(lane_stall_s)), start_(start), timeout_s_(timeout_s) {}

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

}  // namespace shardwire::workflows
