// Agent::PrepareTransfer: validate the descriptors against the local and remote
// regions, choose each block's path (UCX, direct copy, kernel copy), slice the
// descriptors (CutIntoBlocks, strided_rows.h), divide the slices among the lanes
// (DivideAmongLanes, lane_division.h), and pre-fault this process's mappings of
// the peer's pages (AgentOptions::prefault_remote). API thread.
#include <algorithm>
#include <set>
#include <system_error>

#include <fmt/format.h>

#include "transport/agent_impl.h"
#include "transport/lane_division.h"
#include "transport/prefault.h"
#include "transport/strided_rows.h"

namespace shardwire {

using transport::EncodeNotification;

std::uint64_t Agent::Impl::PrefaultLane(PeerState& peer, const TransferCore& t, std::uint32_t l) {
  Lane& lane = *lanes[l];
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  std::vector<transport::PageRange> ranges;
  {
    std::lock_guard<std::mutex> g(lane.mu);
    const LaneEp& lep = peer.lanes[l];
    if (!lep.open) return 0;
    for (const PreparedOp& o : t.lane_ops[l]) {
      if (o.kernel_copy) continue;  // the kernel writes the peer's pages: nothing mapped here
      if (o.rkey_index >= lep.mapped_delta.size() || !lep.mapped_delta[o.rkey_index]) continue;
      const auto mapped =
          static_cast<std::uintptr_t>(static_cast<std::intptr_t>(o.remote_addr) + *lep.mapped_delta[o.rkey_index]);
      transport::AppendRowPages(mapped, o.count, o.length, o.remote_stride, page, ranges);
    }
  }
  transport::MergePageRanges(ranges);
  std::uint64_t pages = 0;
  for (const transport::PageRange& r : ranges) {
    for (std::uintptr_t a = r.begin; a < r.end;) {
      const std::uintptr_t b = std::min(r.end, a + kPrefaultChunk);
      std::lock_guard<std::mutex> g(lane.mu);
      if (!peer.lanes[l].open || peer.lanes[l].mapped_delta.empty()) return pages;  // torn down meanwhile
      transport::PrefaultForWrite(reinterpret_cast<void*>(a), b - a);
      pages += (b - a) / page;
      a = b;
    }
  }
  return pages;
}

void Agent::Impl::PrefaultRemotePages(PeerState& peer, const TransferCore& t) {
  const auto t0 = Clock::now();
  std::vector<std::uint64_t> pages(lanes.size(), 0);
  std::vector<std::thread> helpers;
  for (std::uint32_t l = 1; l < lanes.size(); ++l) {
    if (t.lane_ops[l].empty()) continue;
    try {
      helpers.emplace_back([this, &peer, &t, &pages, l] { pages[l] = PrefaultLane(peer, t, l); });
    } catch (const std::system_error&) {
      pages[l] = PrefaultLane(peer, t, l);  // no thread: do it here
    }
  }
  if (!t.lane_ops[0].empty()) pages[0] = PrefaultLane(peer, t, 0);
  for (auto& h : helpers) h.join();
  std::uint64_t total = 0;
  for (std::uint64_t p : pages) total += p;
  counters.prefaulted_pages.fetch_add(total, std::memory_order_relaxed);
  counters.prefault_ns.fetch_add(
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()),
      std::memory_order_relaxed);
}

void Agent::Impl::PrefaultRemoteReadRanges(PeerState& peer, const TransferCore& t) {
  for (auto& lp : lanes) {
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;  // [begin, end) in this process
    {
      std::lock_guard<std::mutex> g(lp->mu);
      LaneEp& lep = peer.lanes[lp->index];
      if (!lep.open) continue;
      if (lp->index >= t.lane_ops.size()) continue;
      for (const PreparedOp& o : t.lane_ops[lp->index]) {
        if (o.kernel_copy) continue;  // the kernel reads the peer's pages: nothing mapped here
        if (o.rkey_index >= lep.mapped_delta.size() || !lep.mapped_delta[o.rkey_index]) continue;
        void* ptr =
            reinterpret_cast<void*>(static_cast<std::intptr_t>(o.remote_addr) + *lep.mapped_delta[o.rkey_index]);
        const std::uint64_t span = o.count > 1 ? (o.count - 1) * o.remote_stride + o.length : o.length;
        ranges.emplace_back(reinterpret_cast<std::uintptr_t>(ptr), reinterpret_cast<std::uintptr_t>(ptr) + span);
      }
    }
    std::sort(ranges.begin(), ranges.end());
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> merged;
    for (const auto& r : ranges) {
      if (!merged.empty() && r.first <= merged.back().second + 4096) {
        merged.back().second = std::max(merged.back().second, r.second);
      } else {
        merged.push_back(r);
      }
    }
    // The mapping lives as long as the rkey, which only this thread destroys.
    for (const auto& [b, e] : merged) (void)transport::PrefaultForRead(reinterpret_cast<const void*>(b), e - b);
  }
}

Result<TransferHandle> Agent::PrepareTransfer(TransferOp op, const std::string& peer_name,
                                              std::vector<TransferDescriptor> descriptors,
                                              std::optional<std::vector<std::byte>> notification_payload) {
  Impl& im = *impl_;
  auto pit = im.peers.find(peer_name);
  if (pit == im.peers.end()) return NotFound(fmt::format("PrepareTransfer: peer {} is not imported", peer_name));
  std::shared_ptr<Impl::PeerState> peer = pit->second;
  if (peer->failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    return peer->failure.WithContext("PrepareTransfer");
  }
  if (notification_payload && notification_payload->size() > (std::size_t{1} << 31))
    return InvalidArgument(
        fmt::format("PrepareTransfer: notification payload of {} bytes exceeds 2^31", notification_payload->size()));

  auto t = std::make_shared<TransferCore>();
  t->op = op;
  t->peer_name = peer_name;
  t->peer_serial = peer->serial;
  t->metrics = im.metrics.ForTransfer(peer_name, op);
  t->am_write = op == TransferOp::kWrite && peer->write_path == WritePath::kActiveMessage;
  std::vector<PreparedOp> slices;
  slices.reserve(descriptors.size());
  std::map<RegionId, std::uint32_t> pins;
  std::set<std::uint32_t> remote_used;
  std::vector<transport::RowBlock> blocks;
  std::uint64_t total = 0;
  const std::uint64_t slice = im.options.slice_bytes;
  {
    std::lock_guard<std::mutex> g(im.regions_mu);
    for (std::size_t i = 0; i < descriptors.size(); ++i) {
      const TransferDescriptor& d = descriptors[i];
      auto lit = im.regions.find(d.local_region);
      if (lit == im.regions.end())
        return InvalidArgument(
            fmt::format("PrepareTransfer: descriptor {}: local region {} is not registered", i, d.local_region));
      const Impl::LocalRegion& lr = lit->second;
      SW_RETURN_IF_ERROR(transport::CheckRows(d.local_offset, d.local_stride, d.count, d.length, lr.length,
                                              fmt::format("descriptor {}: local region {}:", i, d.local_region))
                             .WithContext("PrepareTransfer"));
      auto rit = peer->region_index.find(d.remote_region);
      if (rit == peer->region_index.end())
        return InvalidArgument(
            fmt::format("PrepareTransfer: descriptor {}: peer {} has no region {}", i, peer_name, d.remote_region));
      const RemoteRegion& rr = peer->regions[rit->second];
      SW_RETURN_IF_ERROR(transport::CheckRows(
                             d.remote_offset, d.remote_stride, d.count, d.length, rr.length,
                             fmt::format("descriptor {}: remote region {} of peer {}:", i, d.remote_region, peer_name))
                             .WithContext("PrepareTransfer"));
      ++pins[d.local_region];
      if (d.length == 0 || d.count == 0) continue;
      remote_used.insert(rit->second);
      const bool remote_mapped = rit->second < peer->region_mapped.size() && peer->region_mapped[rit->second];
      const bool kernel_copy =
          op == TransferOp::kRead
              ? peer->kernel_copy.valid() && (im.options.read_path == ReadPath::kKernelCopy ||
                                              (im.options.read_path == ReadPath::kAuto && (lr.huge || !remote_mapped)))
              : !t->am_write && peer->kernel_copy.valid() &&
                    (im.options.write_path == WritePath::kKernelCopy ||
                     (im.options.write_path == WritePath::kAuto && !remote_mapped));
      blocks.clear();
      transport::CutIntoBlocks(d, slice, /*one_row_per_block=*/t->am_write, blocks);
      for (const transport::RowBlock& b : blocks) {
        PreparedOp o;
        o.length = b.length;
        o.count = b.count;
        o.local_stride = b.local_stride;
        o.remote_stride = b.remote_stride;
        o.local = lr.base + b.local_offset;
        o.remote_addr = rr.base + b.remote_offset;
        o.local_key = lr.key.get();
        o.rkey_index = rit->second;
        o.place.region = d.remote_region;
        o.place.offset = b.remote_offset;
        o.kernel_copy = kernel_copy;
        slices.push_back(o);
      }
      if (d.bytes() > UINT64_MAX - total)
        return InvalidArgument(fmt::format("PrepareTransfer: descriptor {}: total bytes overflow 64 bits", i));
      total += d.bytes();
    }
    for (const auto& [id, n] : pins) {
      im.regions.at(id).pins += n;
      t->pinned.insert(t->pinned.end(), n, id);
    }
  }
  // Contiguous runs of about total/lanes bytes per lane (keeps locality); a
  // transfer of at most half a slice, or one whose contiguous writes overlap, stays on
  // one lane (lane_division.h).
  const std::size_t nl = im.lanes.size();
  t->lane_ops.resize(nl);
  t->total_bytes = total;
  std::vector<std::uint64_t> slice_sizes(slices.size());
  for (std::size_t i = 0; i < slices.size(); ++i) slice_sizes[i] = slices[i].bytes();
  bool writes_overlap = false;
  if (nl > 1 && total > transport::OneLaneMaxBytes(slice)) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> written;
    written.reserve(slices.size());
    for (const PreparedOp& o : slices) {
      if (o.count != 1) continue;  // strided rows: planned moves, which never overlap
      const std::uint64_t at = op == TransferOp::kWrite ? o.remote_addr : reinterpret_cast<std::uintptr_t>(o.local);
      written.emplace_back(at, at + o.length);
    }
    writes_overlap = transport::AnyRangesOverlap(std::move(written));
  }
  const std::vector<std::uint32_t> lane_of =
      transport::DivideAmongLanes(slice_sizes, writes_overlap ? UINT64_MAX : transport::OneLaneMaxBytes(slice),
                                  static_cast<std::uint32_t>(nl), im.next_transfer);
  t->lane_bytes.assign(nl, 0);
  for (std::size_t i = 0; i < slices.size(); ++i) {
    t->lane_ops[lane_of[i]].push_back(slices[i]);
    t->lane_bytes[lane_of[i]] += slice_sizes[i];
  }
  if (notification_payload) t->prepared_wire = EncodeNotification(im.options.name, *notification_payload);

  // Pre-fault the pages of this process's mappings of the peer's shared-memory
  // regions that each lane will write (see AgentOptions::prefault_remote).
  if (im.options.prefault_remote && op == TransferOp::kWrite && !t->am_write && total > 0)
    im.PrefaultRemotePages(*peer, *t);

  // READs copy from this process's mapping of the peer's shared-memory region: populate
  // the ranges each lane will read (one madvise per contiguous range) instead of taking
  // a read fault per 4 KiB page during the copy (a VM exit each: a quarter of a P2P
  // load's CPU time in perf). Ranges only, not whole regions: a loader reads a part.
  if (im.options.prefault_remote && op == TransferOp::kRead) im.PrefaultRemoteReadRanges(*peer, *t);

  t->id = im.next_transfer++;
  const TransferHandle h{t->id};
  im.transfers.emplace(h.id, std::move(t));
  return h;
}

}  // namespace shardwire
