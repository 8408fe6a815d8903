// The in-process backend's factory and fault injection (AgentOptions::backend =
// "inproc"; src/transport/inproc/inproc_backend.cc).
//
// Every agent of the backend lives in this process: a peer's blob names the
// peer's backend instance, an op is a memcpy between the two agents' registered
// regions (checked against the peer's current registrations under its lock, so
// a region deregistered meanwhile is an error, never a write into freed memory),
// a message is queued to the peer's lane (i mod its lanes) and wakes it. No
// mapping is offered (every op goes through the backend) and no kernel copy.
//
// Faults, injected per agent name into what that agent sends (tests):
//   drop_messages  the next N messages (notifications, SendMessage) are lost:
//                  the peer's WaitNotification times out.
//   corrupt_messages  the next N messages arrive with their first byte flipped:
//                  the peer's decoder drops them (a warning), WaitNotification
//                  times out.
//   corrupt_ops    the next N ops land with their first byte flipped and complete
//                  with kCorruptData (a link checksum catching it): Wait fails.
//   delay          every op completes, and every message arrives, this much later.
//   delay_to       per peer name: ops to that peer complete, and messages to it arrive, this
//                  much later (instead of `delay`): one stalled peer among healthy ones.
//   hold_lane      the lane that issues this agent's next op is then held up this long
//                  (once): that lane's thread, at the end of its next round, sleeps under the
//                  agent's lane lock, as a lane thread starved of CPU or waiting for its lock
//                  would (Agent::LaneStallSeconds); the op completes only after. A thread that
//                  runs a small post inline is not held.
//   Kill(name)     the agent is dead: ops to it fail with kPeerDisconnected, its
//                  peers' lanes report it failed (BackendEvents::OnPeerFailed) at
//                  their next progress (they are woken), its messages are lost.
// Thread-safety: InjectFaults, Kill and ClearFaults take the fabric's lock; any thread.
// Internal header (src/transport/inproc); tests include it.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "transport/backend.h"

namespace shardwire::transport::inproc {

/// Makes an in-process backend for `options` (lanes, name). Never fails but for
/// eventfd errors (kInternal).
Result<std::unique_ptr<TransportBackend>> MakeInProcessBackend(const AgentOptions& options);

/// Faults of what one agent sends; counts are consumed as they fire.
struct FaultPlan {
  int drop_messages = 0;
  int corrupt_messages = 0;
  int corrupt_ops = 0;
  std::chrono::milliseconds delay{0};
  std::map<std::string, std::chrono::milliseconds, std::less<>> delay_to{};
  std::chrono::milliseconds hold_lane{0};
};

/// Replaces the fault plan of the live in-process agent named `agent` (the most
/// recently created one of that name). Errors: kNotFound.
Status InjectFaults(std::string_view agent, const FaultPlan& plan);
/// Declares the live in-process agent named `agent` dead (see the file comment);
/// `why` appears in its peers' kPeerDisconnected messages. Errors: kNotFound.
Status Kill(std::string_view agent, const std::string& why);

}  // namespace shardwire::transport::inproc
