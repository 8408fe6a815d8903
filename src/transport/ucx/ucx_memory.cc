// The UCX backend's regions: caller (or agent-owned private) memory registered
// with ucp_mem_map, arenas UCX allocates (UCP_MEM_MAP_ALLOCATE: sysv/posix
// shared memory on one host, which same-host peers map), and their packed rkeys.
#include <fmt/format.h>

#include "transport/ucx/ucx_backend.h"

namespace shardwire::transport::ucx {

namespace {

Result<std::vector<std::byte>> PackRkey(ucp_context_h ctx, ucp_mem_h memh) {
  void* raw = nullptr;
  std::size_t size = 0;
  ucs_status_t st = ucp_rkey_pack(ctx, memh, &raw, &size);
  if (st != UCS_OK) return UcsError("ucp_rkey_pack", st);
  RkeyBuffer buffer(raw);
  const auto* b = static_cast<const std::byte*>(raw);
  return std::vector<std::byte>(b, b + size);
}

// Maps `length` bytes with ucp_mem_map: at `addr` (caller memory), or, with
// `flags` = UCP_MEM_MAP_ALLOCATE and `addr` null, memory UCX allocates; then
// finds the mapped base (ucp_mem_query) and packs the rkey. `what` names the
// region in errors (kTransportError from UCX, kInternal for a short mapping).
Result<BackendRegion> MapAndPack(ucp_context_h ctx, void* addr, std::size_t length, unsigned flags,
                                 std::string_view what) {
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  p.address = addr;
  p.length = length;
  p.flags = flags;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(ctx, &p, &raw);
  if (st != UCS_OK) return UcsError(fmt::format("ucp_mem_map({})", what), st);
  MemHandle memh(ctx, raw);
  void* base = addr;
  if ((flags & UCP_MEM_MAP_ALLOCATE) != 0) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    st = ucp_mem_query(raw, &attr);
    if (st != UCS_OK) return UcsError("ucp_mem_query", st);
    if (attr.address == nullptr || attr.length < length)
      return Internal(fmt::format("ucp_mem_map({}) returned {} bytes at {} for a {}-byte request", what,
                                  attr.length, attr.address, length));
    base = attr.address;
  }
  BackendRegion r;
  SW_ASSIGN_OR_RETURN(r.remote_key, PackRkey(ctx, raw));
  r.base = static_cast<std::byte*>(base);
  r.length = length;
  r.key = memh.release();
  return r;
}

}  // namespace

Result<BackendRegion> UcxBackend::RegisterRegion(void* addr, std::size_t length, std::string_view what) {
  return MapAndPack(context_.get(), addr, length, 0, what);
}

Result<BackendRegion> UcxBackend::AllocateRegion(std::size_t length) {
  return MapAndPack(context_.get(), nullptr, length, UCP_MEM_MAP_ALLOCATE,
                    fmt::format("ALLOCATE, {} bytes", length));
}

void UcxBackend::ReleaseRegion(void* key) {
  if (key != nullptr) MemHandle(context_.get(), static_cast<ucp_mem_h>(key));  // ucp_mem_unmap
}

}  // namespace shardwire::transport::ucx
