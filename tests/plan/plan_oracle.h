// The planner's oracle: a byte-level simulator that shares no code with the planner.
// Every shard buffer is filled element by element from a pure function of (tensor,
// global element index); a plan is applied with memcpy; every destination byte is
// compared with what the oracle says belongs there (the full tensor sliced directly).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/transfer_plan.h"

namespace shardwire::testing {

inline std::byte OracleByte(const std::string& tensor, std::int64_t element, std::size_t byte) {
  std::uint64_t x = std::hash<std::string>{}(tensor) ^ (static_cast<std::uint64_t>(element) << 4) ^ byte;
  x ^= x >> 31;
  x *= 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  return static_cast<std::byte>(x & 0xFF);
}

/// Each rank's buffer filled by walking its shards' elements one by one (padding: 0).
inline std::vector<std::vector<std::byte>> Materialise(const Layout& layout) {
  std::vector<std::vector<std::byte>> buffers;
  for (int r = 0; r < layout.world_size(); ++r) {
    std::vector<std::byte> buf(layout.rank(r).buffer_bytes, std::byte{0});
    for (const ShardRef& s : layout.rank(r).shards) {
      const TensorSpec& spec = layout.tensors()[s.tensor];
      const std::size_t esize = DTypeSize(spec.dtype);
      for (std::int64_t local = 0; local < s.box.numel(); ++local) {
        std::int64_t rem = local, global = 0, gstride = 1;
        for (std::size_t d = spec.shape.size(); d-- > 0;) {
          global += (rem % s.box.shape[d] + s.box.offset[d]) * gstride;
          rem /= s.box.shape[d];
          gstride *= spec.shape[d];
        }
        for (std::size_t b = 0; b < esize; ++b) {
          buf[s.byte_offset + static_cast<std::uint64_t>(local) * esize + b] = OracleByte(spec.name, global, b);
        }
      }
    }
    buffers.push_back(std::move(buf));
  }
  return buffers;
}

/// Applies `plan` to materialised source buffers and compares every destination rank
/// with its materialisation. Returns "" when correct, else what is wrong (first found).
inline std::string CheckPlanAgainstOracle(const Layout& src, const Layout& dst, const TransferPlan& plan) {
  const auto src_bufs = Materialise(src);
  const auto expected = Materialise(dst);
  std::vector<std::vector<std::byte>> got;
  std::vector<std::vector<std::uint8_t>> writes;
  for (int r = 0; r < dst.world_size(); ++r) {
    got.emplace_back(dst.rank(r).buffer_bytes, std::byte{0});
    writes.emplace_back(dst.rank(r).buffer_bytes, 0);
  }
  for (std::size_t i = 0; i < plan.moves().size(); ++i) {
    const Move& m = plan.moves()[i];
    if (m.src_rank >= src_bufs.size() || m.dst_group >= plan.dst_groups().size() || m.count < 1) {
      return "move " + std::to_string(i) + " names a rank or group out of range";
    }
    for (std::uint64_t k = 0; k < m.count; ++k) {
      const std::uint64_t so = m.src_offset + k * m.src_stride, dof = m.dst_offset + k * m.dst_stride;
      if (so + m.length > src_bufs[m.src_rank].size()) return "move " + std::to_string(i) + " reads outside its source";
      for (std::uint32_t d : plan.dst_groups()[m.dst_group]) {
        if (d >= got.size() || dof + m.length > got[d].size()) {
          return "move " + std::to_string(i) + " writes outside destination " + std::to_string(d);
        }
        std::memcpy(got[d].data() + dof, src_bufs[m.src_rank].data() + so, m.length);
        for (std::uint64_t b = 0; b < m.length; ++b) ++writes[d][dof + b];
      }
    }
  }
  for (int r = 0; r < dst.world_size(); ++r) {
    const auto ri = static_cast<std::size_t>(r);
    std::vector<std::uint8_t> want(dst.rank(r).buffer_bytes, 0);
    for (const ShardRef& s : dst.rank(r).shards) {
      const std::uint64_t n = static_cast<std::uint64_t>(s.box.numel()) * DTypeSize(dst.tensors()[s.tensor].dtype);
      std::memset(want.data() + s.byte_offset, 1, n);
    }
    if (writes[ri] != want) {
      for (std::size_t b = 0; b < want.size(); ++b) {
        if (writes[ri][b] != want[b]) {
          return "destination rank " + std::to_string(r) + " byte " + std::to_string(b) + " written " +
                 std::to_string(writes[ri][b]) + " times, expected " + std::to_string(want[b]);
        }
      }
    }
    if (got[ri] != expected[ri]) return "destination rank " + std::to_string(r) + " holds wrong bytes";
  }
  return "";
}

}  // namespace shardwire::testing
