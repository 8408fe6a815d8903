// The agent's local regions: register caller memory (one region, or ranges
// merged into few regions), allocate arenas (backend-allocated shared memory or
// private huge pages), deregister, and export them in the metadata blob (with
// the backend's section).
#include <algorithm>

#include <fmt/format.h>

#include "transport/agent_impl.h"

namespace shardwire {

RegionId Agent::Impl::AddRegion(transport::BackendRegion b, bool arena, transport::PrivateMapping owned) {
  LocalRegion r;
  r.key = RegionKey(backend.get(), b.key);
  r.remote_key = std::move(b.remote_key);
  r.base = b.base;
  r.length = b.length;
  r.arena = arena;
  r.huge = owned.huge_pages();
  r.owned = std::move(owned);
  std::lock_guard<std::mutex> g(regions_mu);
  r.id = next_region++;
  const RegionId id = r.id;
  regions.emplace(id, std::move(r));
  return id;
}

Result<RegionId> Agent::RegisterMemory(void* addr, std::size_t length) {
  if (addr == nullptr) return InvalidArgument("RegisterMemory: address is null");
  if (length == 0) return InvalidArgument("RegisterMemory: length is 0");
  SW_ASSIGN_OR_RETURN(transport::BackendRegion b,
                      impl_->backend->RegisterRegion(addr, length, fmt::format("{} bytes at {}", length, addr)));
  return impl_->AddRegion(std::move(b), /*arena=*/false, {});
}

Result<std::vector<Agent::RangeLocation>> Agent::RegisterRanges(std::span<const MemoryRange> ranges,
                                                                std::size_t max_gap) {
  if (ranges.empty()) return InvalidArgument("RegisterRanges: no ranges");
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const auto a = reinterpret_cast<std::uintptr_t>(ranges[i].addr);
    if (ranges[i].addr == nullptr) return InvalidArgument(fmt::format("RegisterRanges: range {} has a null address", i));
    if (ranges[i].length == 0) return InvalidArgument(fmt::format("RegisterRanges: range {} has length 0", i));
    if (a + ranges[i].length < a) return InvalidArgument(fmt::format("RegisterRanges: range {} wraps around", i));
  }
  std::vector<std::size_t> order(ranges.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
    return reinterpret_cast<std::uintptr_t>(ranges[x].addr) < reinterpret_cast<std::uintptr_t>(ranges[y].addr);
  });
  std::vector<RangeLocation> out(ranges.size());
  std::vector<RegionId> created;
  auto rollback = [&] {
    for (RegionId id : created) (void)Deregister(id);
  };
  std::size_t k = 0;
  while (k < order.size()) {
    const auto start = reinterpret_cast<std::uintptr_t>(ranges[order[k]].addr);
    std::uintptr_t end = start + ranges[order[k]].length;
    std::size_t m = k + 1;
    while (m < order.size() && reinterpret_cast<std::uintptr_t>(ranges[order[m]].addr) <= end + max_gap &&
           end + max_gap >= end) {
      end = std::max(end, reinterpret_cast<std::uintptr_t>(ranges[order[m]].addr) + ranges[order[m]].length);
      ++m;
    }
    auto id = RegisterMemory(reinterpret_cast<void*>(start), end - start);
    if (!id.ok()) {
      rollback();
      return id.status().WithContext("RegisterRanges");
    }
    created.push_back(*id);
    for (std::size_t q = k; q < m; ++q)
      out[order[q]] = {*id, reinterpret_cast<std::uintptr_t>(ranges[order[q]].addr) - start};
    k = m;
  }
  return out;
}

Result<RegionId> Agent::AllocateArena(std::size_t length, ArenaMemory memory) {
  if (memory == ArenaMemory::kShared) return AllocateArena(length);
  if (length == 0) return InvalidArgument("AllocateArena: length is 0");
  SW_ASSIGN_OR_RETURN(transport::PrivateMapping owned, transport::PrivateMapping::Map(length));
  SW_ASSIGN_OR_RETURN(transport::BackendRegion b,
                      impl_->backend->RegisterRegion(owned.data(), length,
                                                     fmt::format("private arena, {} bytes", length)));
  return impl_->AddRegion(std::move(b), /*arena=*/true, std::move(owned));
}

Result<RegionId> Agent::AllocateArena(std::size_t length) {
  if (length == 0) return InvalidArgument("AllocateArena: length is 0");
  SW_ASSIGN_OR_RETURN(transport::BackendRegion b, impl_->backend->AllocateRegion(length));
  return impl_->AddRegion(std::move(b), /*arena=*/true, {});
}

std::span<std::byte> Agent::RegionBytes(RegionId id) const {
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  auto it = impl_->regions.find(id);
  if (it == impl_->regions.end()) return {};
  return {it->second.base, it->second.length};
}

Status Agent::Deregister(RegionId id) {
  Impl::LocalRegion doomed;
  {
    std::lock_guard<std::mutex> g(impl_->regions_mu);
    auto it = impl_->regions.find(id);
    if (it == impl_->regions.end()) return NotFound(fmt::format("Deregister: region {} is not registered", id));
    if (it->second.pins > 0)
      return InvalidArgument(fmt::format(
          "Deregister: region {} is used by {} prepared transfer(s); Release them first", id, it->second.pins));
    doomed = std::move(it->second);
    impl_->regions.erase(it);
  }
  return Status::Ok();  // `doomed` unmaps outside the lock
}

Result<std::vector<std::byte>> Agent::ExportMetadata() const {
  transport::AgentMetadata m;
  m.name = impl_->options.name;
  transport::BackendSection& section = m.sections.emplace_back();
  section.backend = std::string(impl_->backend->name());
  section.connection = impl_->backend->ConnectionInfo();
  m.process = impl_->self;
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  m.regions.reserve(impl_->regions.size());
  section.region_keys.reserve(impl_->regions.size());
  for (const auto& [id, r] : impl_->regions) {
    m.regions.push_back(transport::RegionRecord{id, reinterpret_cast<std::uint64_t>(r.base), r.length});
    section.region_keys.push_back(r.remote_key);
  }
  return transport::EncodeAgentMetadata(m);
}

}  // namespace shardwire
