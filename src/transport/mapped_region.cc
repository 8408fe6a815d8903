// MappedRegion and MappedRegion::Access (shardwire/mapped_region.h): a lease on
// lane 0's mapping of one peer region, revoked by the agent (peer_failure.cc).
#include <atomic>
#include <chrono>

#include <fmt/format.h>

#include "transport/agent_impl.h"
#include "transport/prefault.h"

namespace shardwire {

MappedRegion::Access::Access(std::shared_ptr<Lease> lease, std::span<std::byte> bytes)
    : lease_(std::move(lease)), lock_(lease_->mu), bytes_(bytes) {}

MappedRegion::Access::~Access() {
  // Stores through the mapping become visible before whatever the caller does next (e.g. a
  // notification to the peer); a no-op instruction on x86-64.
  if (lock_.owns_lock()) std::atomic_thread_fence(std::memory_order_release);
}

Result<std::span<std::byte>> MappedRegion::Access::Range(std::uint64_t offset, std::uint64_t length) const {
  if (offset > bytes_.size() || length > bytes_.size() - offset) {
    return InvalidArgument(fmt::format("mapped region {} of peer {}: bytes [{}, +{}) lie outside its {} bytes",
                                       lease_->region, lease_->peer, offset, length, bytes_.size()));
  }
  return bytes_.subspan(offset, length);
}

const std::string& MappedRegion::peer() const {
  static const std::string kNone;
  return lease_ ? lease_->peer : kNone;
}
RegionId MappedRegion::region() const { return lease_ ? lease_->region : 0; }
std::uint64_t MappedRegion::size() const { return lease_ ? lease_->length : 0; }

Result<MappedRegion::Access> MappedRegion::Acquire() const {
  if (!lease_) return InvalidArgument("MappedRegion::Acquire on an empty MappedRegion");
  Access a(lease_, std::span<std::byte>(lease_->base, lease_->length));
  if (lease_->revoked) {
    return lease_->why.WithContext(fmt::format("mapped region {} of peer {}", lease_->region, lease_->peer));
  }
  return a;
}

Result<std::uint64_t> MappedRegion::PrefaultForWrite(std::uint64_t offset, std::uint64_t length) const {
  SW_ASSIGN_OR_RETURN(const Access a, Acquire());
  SW_ASSIGN_OR_RETURN(const std::span<std::byte> range, a.Range(offset, length));
  if (range.empty()) return std::uint64_t{0};
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t pages = transport::PrefaultForWrite(range.data(), range.size()).touched_pages;
  // Counted as the agent's own pre-faults are (AgentStats::prefaulted_pages, prefault_s).
  if (lease_->prefaulted_pages) lease_->prefaulted_pages->fetch_add(pages, std::memory_order_relaxed);
  if (lease_->prefault_ns) {
    lease_->prefault_ns->fetch_add(
        static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count()),
        std::memory_order_relaxed);
  }
  return pages;
}

}  // namespace shardwire
