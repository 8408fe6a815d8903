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
// So every wait of the push and the load moves its deadlines by such gaps
// (docs/reliability.md, "Own pauses").
//
// Thread-safety: none; each wait owns its own (one thread at a time).
#pragma once

#include <chrono>
#include <functional>

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

/// A wait's deadline, `timeout_s` seconds after its start, that moves by every pause of this
/// process its OwnPauseDetector finds (so the peers get the whole timeout of running time).
class OwnPauseDeadline {
 public:
  /// `timeout_s` >= 0 (+inf: never), `slice_s` as for OwnPauseDetector.
  OwnPauseDeadline(double timeout_s, double slice_s, PauseClock::time_point start = PauseClock::now())
      : detector_(slice_s, start), start_(start), timeout_s_(timeout_s) {}

  /// Seconds left at `now` (<= 0: the timeout passed while this process ran), after moving
  /// the deadline by any pause since the previous call. Call it once per turn of the loop.
  double Left(PauseClock::time_point now = PauseClock::now()) {
    detector_.Check(now);
    return timeout_s_ - (std::chrono::duration<double>(now - start_).count() - detector_.paused_s());
  }

  /// Seconds by which the deadline moved.
  double paused_s() const { return detector_.paused_s(); }

 private:
  OwnPauseDetector detector_;
  PauseClock::time_point start_;
  double timeout_s_;
};

/// Agent::Wait for `h` in slices of `slice_s` seconds against an OwnPauseDeadline of
/// `timeout_s` (> 0): this process's own pauses do not count. `between_slices`, when set, is
/// called after every slice that ended without a completion; its non-OK status ends the wait
/// and is returned (an interrupt hook). Errors: the transfer's own error; kTimedOut naming
/// timeout_s (and the pause forgiven, if any) when the transfer is not complete after that much
/// running time; the hook's status. Thread-safety: as Agent::Wait.
Status WaitTransferWithoutOwnPauses(Agent& agent, TransferHandle h, double timeout_s, double slice_s,
                                    const std::function<Status()>& between_slices = {});

}  // namespace shardwire::workflows
