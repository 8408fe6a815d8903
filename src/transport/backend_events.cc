// What a backend reports to the agent (BackendEvents, backend.h): notifications
// that arrived, where a WRITE sent as messages lands in this agent's regions,
// and peers the backend found dead. See agent_impl.h for the locks.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "transport/agent_impl.h"

namespace shardwire {

using transport::DecodeNotification;

void Agent::Impl::OnMessage(std::uint32_t /*lane*/, const std::byte* data, std::size_t length) {
  EnqueueNotification(data, length);
}

void Agent::Impl::EnqueueNotification(const std::byte* data, std::size_t length) {
  auto n = DecodeNotification(data, length);
  if (!n) {
    spdlog::warn("shardwire agent {}: dropped a malformed notification of {} bytes", options.name, length);
    return;
  }
  std::lock_guard<std::mutex> g(mu);
  notifications.push_back(std::move(*n));
  NotifyWaiters();
}

std::byte* Agent::Impl::Locate(const transport::RemotePlace& place, std::size_t length) {
  std::lock_guard<std::mutex> g(regions_mu);
  auto it = regions.find(place.region);
  if (it != regions.end() && place.offset <= it->second.length && length <= it->second.length - place.offset)
    return it->second.base + place.offset;
  return nullptr;
}

void Agent::Impl::OnPeerFailed(std::uint64_t peer_token, const std::string& why) {
  std::shared_ptr<PeerState> p;
  {
    std::lock_guard<std::mutex> g(mu);
    auto it = peers_by_serial.find(peer_token);
    if (it == peers_by_serial.end()) return;
    p = it->second;
  }
  MarkPeerFailed(*p, why);
}

}  // namespace shardwire
