// The planner's oracle: a byte-level simulator that shares no code with the planner.
// Every shard buffer is filled element by element from a pure function of (tensor,
// global element index); a plan is applied with memcpy; every destination byte is
// compared with what the oracle says belongs there (the full tensor sliced directly).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <map>
#include <tuple>

#include "box_element_index.h"
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

/// How buffers are filled. kBytes: hash bytes (any dtype). kIntegers: every element is a
/// small integer v(tensor, element) in [-40, 40] stored in its dtype, and a Partial(sum)
/// shard holds an addend: members 0..n-2 of its sum group (by rank) get a pseudo-random
/// integer in [-20, 20], the last gets v minus their sum, so the addends sum to v exactly
/// in every dtype used (I32, I64, F32, BF16, F16).
enum class OracleValues { kBytes, kIntegers };

inline void StoreInteger(DType dtype, std::int64_t v, std::byte* out) {
  switch (dtype) {
    case DType::kI32: {
      const auto x = static_cast<std::int32_t>(v);
      std::memcpy(out, &x, 4);
      return;
    }
    case DType::kI64:
      std::memcpy(out, &v, 8);
      return;
    default:
      StoreFromFloat(dtype, static_cast<float>(v), out);
      return;
  }
}

inline std::int64_t LoadInteger(DType dtype, const std::byte* in) {
  switch (dtype) {
    case DType::kI32: {
      std::int32_t x;
      std::memcpy(&x, in, 4);
      return x;
    }
    case DType::kI64: {
      std::int64_t x;
      std::memcpy(&x, in, 8);
      return x;
    }
    default:
      return static_cast<std::int64_t>(LoadAsFloat(dtype, in));
  }
}

/// Each rank's buffer filled by walking its shards' elements one by one (padding: 0).
inline std::vector<std::vector<std::byte>> Materialise(const Layout& layout,
                                                       OracleValues values = OracleValues::kBytes) {
  // Sum groups of Partial shards: (tensor, box offset, partial group) -> member ranks.
  std::map<std::tuple<std::uint32_t, std::vector<std::int64_t>, std::uint32_t>, std::vector<int>> sum_groups;
  for (int r = 0; r < layout.world_size(); ++r) {
    for (const ShardRef& s : layout.rank(r).shards) {
      if (s.partial_group == 0) continue;
      sum_groups[{s.tensor, std::vector<std::int64_t>(s.box.offset.begin(), s.box.offset.end()), s.partial_group}]
          .push_back(r);
    }
  }
  std::vector<std::vector<std::byte>> buffers;
  for (int r = 0; r < layout.world_size(); ++r) {
    std::vector<std::byte> buf(layout.rank(r).buffer_bytes, std::byte{0});
    for (const ShardRef& s : layout.rank(r).shards) {
      const TensorSpec& spec = layout.tensors()[s.tensor];
      const std::size_t esize = DTypeSize(spec.dtype);
      std::size_t member = 0, members = 1;
      if (s.partial_group != 0) {
        const auto& group = sum_groups[{s.tensor, std::vector<std::int64_t>(s.box.offset.begin(), s.box.offset.end()),
                                        s.partial_group}];
        members = group.size();
        member = static_cast<std::size_t>(std::find(group.begin(), group.end(), r) - group.begin());
      }
      for (std::int64_t local = 0; local < s.box.numel(); ++local) {
        const std::int64_t global = testing_util::GlobalIndexOfBoxElement(s.box, spec.shape, local);
        std::byte* out = buf.data() + s.byte_offset + static_cast<std::uint64_t>(local) * esize;
        if (values == OracleValues::kBytes) {
          for (std::size_t b = 0; b < esize; ++b) out[b] = OracleByte(spec.name, global, b);
          continue;
        }
        const std::int64_t v =
            static_cast<std::int64_t>(static_cast<std::uint8_t>(OracleByte(spec.name, global, 0))) % 81 - 40;
        std::int64_t addend = v;
        if (members > 1) {
          auto part = [&](std::size_t k) {
            return static_cast<std::int64_t>(static_cast<std::uint8_t>(OracleByte(spec.name, global, 1 + k))) % 41 - 20;
          };
          if (member + 1 < members) {
            addend = part(member);
          } else {
            for (std::size_t k = 0; k + 1 < members; ++k) addend -= part(k);
          }
        }
        StoreInteger(spec.dtype, addend, out);
      }
    }
    buffers.push_back(std::move(buf));
  }
  return buffers;
}

/// Applies `plan` to materialised source buffers and compares every destination rank
/// with its materialisation. Returns "" when correct, else what is wrong (first found).
inline std::string CheckPlanAgainstOracle(const Layout& src, const Layout& dst, const TransferPlan& plan,
                                          OracleValues values = OracleValues::kBytes) {
  auto src_bufs = Materialise(src, values);
  const auto expected = Materialise(dst, values);
  // Reductions of Partial sources: addends into the reducers' scratch slots, then sums.
  for (int r = 0; r < src.world_size(); ++r)
    src_bufs[static_cast<std::size_t>(r)].resize(src.rank(r).buffer_bytes + plan.scratch_bytes(r));
  for (const ReduceCopy& c : plan.reduce_copies()) {
    const std::uint64_t base = src.rank(static_cast<int>(c.reducer)).buffer_bytes;
    for (std::uint64_t k = 0; k < c.count; ++k) {
      const std::uint64_t so = c.src_offset + k * c.src_stride, to = base + c.slot_offset + k * c.slot_stride;
      if (so + c.length > src.rank(static_cast<int>(c.src_rank)).buffer_bytes ||
          to + c.length > src_bufs[c.reducer].size()) {
        return "a reduce copy reads or writes out of range";
      }
      std::memcpy(src_bufs[c.reducer].data() + to, src_bufs[c.src_rank].data() + so, c.length);
    }
  }
  for (const Reduction& red : plan.reductions()) {
    const auto dtype = static_cast<DType>(red.dtype);
    const std::size_t esize = DTypeSize(dtype);
    std::byte* slot0 =
        src_bufs[red.reducer].data() + src.rank(static_cast<int>(red.reducer)).buffer_bytes + red.scratch_offset;
    for (std::uint64_t e = 0; e < red.bytes / esize; ++e) {
      std::int64_t sum = 0;
      for (std::uint32_t k = 0; k < red.addends; ++k) sum += LoadInteger(dtype, slot0 + k * red.bytes + e * esize);
      StoreInteger(dtype, sum, slot0 + e * esize);
    }
  }
  std::vector<std::vector<std::byte>> got;
  std::vector<std::vector<std::uint8_t>> writes;
  for (int r = 0; r < dst.world_size(); ++r) {
    got.emplace_back(dst.rank(r).buffer_bytes, std::byte{0});
    writes.emplace_back(dst.rank(r).buffer_bytes, 0);
  }
  // TransferPlan::moves()'s order: by (src_rank, dst_group, src_offset).
  for (std::size_t i = 1; i < plan.moves().size(); ++i) {
    const Move& p = plan.moves()[i - 1];
    const Move& m = plan.moves()[i];
    if (std::tie(m.src_rank, m.dst_group, m.src_offset) < std::tie(p.src_rank, p.dst_group, p.src_offset)) {
      return "moves " + std::to_string(i - 1) + " and " + std::to_string(i) + " are out of order";
    }
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
