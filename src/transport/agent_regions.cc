// The agent's local regions: register caller memory (one region, or ranges
// merged into few regions), allocate arenas (UCX-allocated shared memory or
// private huge pages), deregister, and export them in the metadata blob.
#include <algorithm>

#include <fmt/format.h>

#include "transport/agent_impl.h"

namespace shardwire {

using transport::RkeyBuffer;

Result<std::vector<std::byte>> PackRkey(ucp_context_h ctx, ucp_mem_h memh) {
  void* raw = nullptr;
  std::size_t size = 0;
  ucs_status_t st = ucp_rkey_pack(ctx, memh, &raw, &size);
  if (st != UCS_OK) return UcsError("ucp_rkey_pack", st);
  RkeyBuffer buffer(raw);
  const auto* b = static_cast<const std::byte*>(raw);
  return std::vector<std::byte>(b, b + size);
}


Result<RegionId> Agent::RegisterMemory(void* addr, std::size_t length) {
  if (addr == nullptr) return InvalidArgument("RegisterMemory: address is null");
  if (length == 0) return InvalidArgument("RegisterMemory: length is 0");
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = addr;
  p.length = length;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(impl_->context.get(), &p, &raw);
  if (st != UCS_OK) return UcsError(fmt::format("ucp_mem_map({} bytes at {})", length, addr), st);
  Impl::LocalRegion r;
  r.memh = MemHandle(impl_->context.get(), raw);
  SW_ASSIGN_OR_RETURN(r.packed_rkey, PackRkey(impl_->context.get(), raw));
  r.base = static_cast<std::byte*>(addr);
  r.length = length;
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  r.id = impl_->next_region++;
  const RegionId id = r.id;
  impl_->regions.emplace(id, std::move(r));
  return id;
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
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = owned.data();
  p.length = length;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(impl_->context.get(), &p, &raw);
  if (st != UCS_OK) return UcsError(fmt::format("ucp_mem_map(private arena, {} bytes)", length), st);
  Impl::LocalRegion r;
  r.memh = MemHandle(impl_->context.get(), raw);
  SW_ASSIGN_OR_RETURN(r.packed_rkey, PackRkey(impl_->context.get(), raw));
  r.base = owned.data();
  r.length = length;
  r.arena = true;
  r.huge = owned.huge_pages();
  r.owned = std::move(owned);
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  r.id = impl_->next_region++;
  const RegionId id = r.id;
  impl_->regions.emplace(id, std::move(r));
  return id;
}

Result<RegionId> Agent::AllocateArena(std::size_t length) {
  if (length == 0) return InvalidArgument("AllocateArena: length is 0");
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  p.address = nullptr;
  p.length = length;
  p.flags = UCP_MEM_MAP_ALLOCATE;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(impl_->context.get(), &p, &raw);
  if (st != UCS_OK) return UcsError(fmt::format("ucp_mem_map(ALLOCATE, {} bytes)", length), st);
  Impl::LocalRegion r;
  r.memh = MemHandle(impl_->context.get(), raw);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  st = ucp_mem_query(raw, &attr);
  if (st != UCS_OK) return UcsError("ucp_mem_query", st);
  if (attr.address == nullptr || attr.length < length)
    return Internal(fmt::format("ucp_mem_map(ALLOCATE) returned {} bytes at {} for a {}-byte request", attr.length,
                                attr.address, length));
  SW_ASSIGN_OR_RETURN(r.packed_rkey, PackRkey(impl_->context.get(), raw));
  r.base = static_cast<std::byte*>(attr.address);
  r.length = length;
  r.arena = true;
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  r.id = impl_->next_region++;
  const RegionId id = r.id;
  impl_->regions.emplace(id, std::move(r));
  return id;
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
  AgentMetadata m;
  m.name = impl_->options.name;
  for (const auto& l : impl_->lanes) {
    const auto* a = static_cast<const std::byte*>(l->address.data());
    m.worker_addresses.emplace_back(a, a + l->address.size());
  }
  m.process = impl_->self;
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  m.regions.reserve(impl_->regions.size());
  for (const auto& [id, r] : impl_->regions)
    m.regions.push_back(RegionRecord{id, reinterpret_cast<std::uint64_t>(r.base), r.length, r.packed_rkey});
  return EncodeAgentMetadata(m);
}

}  // namespace shardwire
