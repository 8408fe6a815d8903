// A lane's progress thread (Agent::Impl::RunLane): progress the backend's lane
// (UCX: its worker), reap failed peers, advance its jobs, let the backend serve
// what it owes (UCX: fence acknowledgements), then sleep on the backend's event
// fd and the lane's wake eventfd.
#include <poll.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "transport/agent_impl.h"

namespace shardwire {

namespace {

// Upper bound on consecutive TransportBackend::Progress calls per loop round.
constexpr int kMaxProgressSpins = 64;
// Longest sleep of an idle lane: bounds liveness checks and UCX keepalive.
constexpr std::chrono::milliseconds kIdleSleep{100};
// Backoff while Arm reports kBusy without progress (UCX has
// sends queued on a transport that cannot signal free space, e.g. a shared-
// memory FIFO the peer does not drain).
constexpr std::chrono::microseconds kMinBackoff{20};
constexpr std::chrono::microseconds kMaxBackoff{4000};
// Event-fd wake-ups in a row without any progress before the lane stops
// trusting the event fd and backs off instead.
constexpr int kHotWakeups = 8;

}  // namespace

void Agent::Impl::RunLane(Lane& lane) {
  if (options.lane_sched_batch) {
    // SCHED_BATCH (nice unchanged, no privilege needed): a lane woken by its
    // event fd (e.g. a peer's notification signalled through UCX's
    // shared-memory transport) does not preempt the running thread at
    // wake-up but runs at the next scheduling point. Without it, every
    // SendMessage to a sleeping same-host peer preempted the sender for
    // 60-900 us on a 2-core host (measured with getrusage ru_nivcsw).
    sched_param sp{};
    if (::pthread_setschedparam(::pthread_self(), SCHED_BATCH, &sp) != 0)
      spdlog::debug("shardwire agent {}: SCHED_BATCH refused for lane {}", options.name, lane.index);
  }
  transport::TransportBackend& be = *backend;
  const int efd = be.EventFd(lane.index);
  std::unique_lock<std::mutex> lk(lane.mu);
  auto backoff = kMinBackoff;
  int hot_wakeups = 0;  // consecutive event-fd wake-ups that found nothing to do
  bool may_spin = false;  // the last round did work: poll for the next post before sleeping
  while (!lane.stop) {
    // Wakes up to here asked for work this round sees (jobs are pushed under lk before Wake).
    const std::uint64_t seen_wakes = lane.wakes.load();
    lane.StartRound();
    unsigned events = 0;
    for (int i = 0; i < kMaxProgressSpins; ++i) {
      const unsigned n = be.Progress(lane.index);
      if (n == 0) break;
      events += n;
    }
    ReapFailedPeers(lane);
    bool did = AdvanceJobs(lane);
    did = be.Service(lane.index) || did;
    if (lane.index == 0) CheckLiveness();
    if (events != 0 || did) {
      backoff = kMinBackoff;
      hot_wakeups = 0;
      may_spin = true;
      continue;
    }
    if (may_spin && options.idle_spin_s > 0) {
      // Idle after work: poll for a Wake (a new post) for idle_spin_s before sleeping, without
      // the lock, then run one more round (which also progresses what arrived meanwhile).
      may_spin = false;
      lk.unlock();
      transport::SpinUntil(options.idle_spin_s, [&] { return lane.wakes.load(std::memory_order_relaxed) != seen_wakes; });
      lk.lock();
      continue;
    }
    std::string arm_error;
    const transport::ArmResult armed = be.Arm(lane.index, arm_error);
    std::chrono::nanoseconds sleep = kIdleSleep;
    bool watch_efd = true;
    if (armed == transport::ArmResult::kBusy || hot_wakeups >= kHotWakeups) {
      // Nothing progressed, yet UCX cannot sleep (sends queued on a transport
      // that cannot signal free space) or its event fd keeps firing without
      // events (seen while a stopped peer's endpoint wires up): back off.
      sleep = backoff;
      backoff = std::min<std::chrono::microseconds>(backoff * 2, kMaxBackoff);
      watch_efd = armed != transport::ArmResult::kArmed ? false : hot_wakeups < kHotWakeups;
    } else if (armed != transport::ArmResult::kArmed) {
      spdlog::warn("shardwire agent {}: {}", options.name, arm_error);
      sleep = kMaxBackoff;
    }
    lk.unlock();
    // Announce the sleep, then look once more: a Wake after this store writes the eventfd, one
    // before it changed `wakes` (both sequentially consistent; Lane::Wake).
    lane.sleeping.store(true);
    if (lane.wakes.load() != seen_wakes) {
      lane.sleeping.store(false);
      lk.lock();
      continue;
    }
    pollfd fds[2] = {{lane.wake.get(), POLLIN, 0}, {efd, POLLIN, 0}};
    timespec ts{static_cast<time_t>(sleep.count() / 1000000000), static_cast<long>(sleep.count() % 1000000000)};
    const int ready = ::ppoll(fds, watch_efd ? 2 : 1, &ts, nullptr);
    lane.sleeping.store(false);
    if ((fds[0].revents & POLLIN) != 0) {
      std::uint64_t v = 0;
      ssize_t r = ::read(lane.wake.get(), &v, sizeof(v));
      (void)r;
      backoff = kMinBackoff;
      hot_wakeups = 0;
    } else if (ready > 0 && watch_efd && (fds[1].revents & POLLIN) != 0) {
      ++hot_wakeups;  // reset as soon as a round makes progress
    }
    lk.lock();
  }
}

}  // namespace shardwire
