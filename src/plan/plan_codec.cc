#include "shardwire/plan_codec.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <xxhash.h>
#include <zstd.h>

#include "shardwire/dtype.h"

namespace shardwire {
namespace {

// offset + (count - 1) * stride + length, the end of a move's last run, fits in 64 bits
// (count >= 1). Executors compare that end with buffer sizes, which a wrapped sum would defeat.
bool ExtentFits(std::uint64_t offset, std::uint64_t count, std::uint64_t stride, std::uint64_t length) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  const std::uint64_t runs = count - 1;
  if (stride != 0 && runs > kMax / stride) return false;
  const std::uint64_t last = runs * stride;
  return last <= kMax - offset && length <= kMax - offset - last;
}

constexpr std::uint32_t kMagic = 0x4C505753;  // "SWPL"
constexpr std::uint16_t kVersion = 1;
constexpr std::uint16_t kFlagPart = 1;
constexpr int kZstdLevel = 3;
constexpr std::uint64_t kMaxBodyBytes = 1ull << 32;

class Writer {
 public:
  void Fixed(std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
  }
  void Varint(std::uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<std::byte>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<std::byte>(v));
  }
  void Zigzag(std::int64_t v) { Varint((static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63)); }
  std::vector<std::byte>& bytes() { return out_; }

 private:
  std::vector<std::byte> out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  Result<std::uint64_t> Fixed(int bytes, const char* what) {
    if (pos_ + static_cast<std::size_t>(bytes) > in_.size())
      return CorruptData(fmt::format("plan truncated in {}", what));
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(in_[pos_++]) << (8 * i);
    return v;
  }
  Result<std::uint64_t> Varint(const char* what) {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= in_.size()) return CorruptData(fmt::format("plan truncated in {}", what));
      const auto b = static_cast<std::uint8_t>(in_[pos_++]);
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    return CorruptData(fmt::format("plan has an overlong varint in {}", what));
  }
  Result<std::int64_t> Zigzag(const char* what) {
    SW_ASSIGN_OR_RETURN(const std::uint64_t u, Varint(what));
    return static_cast<std::int64_t>(u >> 1) ^ -static_cast<std::int64_t>(u & 1);
  }
  std::size_t remaining() const { return in_.size() - pos_; }

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

// `reduction_rank` < 0: all reductions; else those the source rank takes part in.
std::vector<std::byte> Encode(const TransferPlan& plan, const std::vector<std::size_t>& bucket_ids, bool part,
                              std::int64_t reduction_rank) {
  Writer w;
  w.Varint(static_cast<std::uint64_t>(plan.src_world()));
  w.Varint(static_cast<std::uint64_t>(plan.dst_world()));
  w.Varint(plan.runs_before_coalescing());
  std::set<std::uint32_t> group_ids;
  for (std::size_t b : bucket_ids) group_ids.insert(plan.buckets()[b].dst_group);
  w.Varint(group_ids.size());
  for (std::uint32_t g : group_ids) {
    const auto& ranks = plan.dst_groups()[g];
    w.Varint(g);
    w.Varint(ranks.size());
    std::uint32_t prev = 0;
    for (std::uint32_t r : ranks) {
      w.Varint(r - prev);
      prev = r;
    }
  }
  w.Varint(bucket_ids.size());
  for (std::size_t id : bucket_ids) {
    const Bucket& b = plan.buckets()[id];
    w.Varint(b.src_rank);
    w.Varint(b.dst_group);
    w.Varint(static_cast<std::uint64_t>(b.delivery));
    w.Varint(b.round);
    w.Varint(b.move_count);
    std::uint64_t src_end = 0, dst_end = 0;
    for (std::uint64_t i = b.first_move; i < b.first_move + b.move_count; ++i) {
      const Move& m = plan.moves()[i];
      // Differences modulo 2^64 (unsigned, then the C++20 two's-complement conversion): a
      // plan decoded from untrusted bytes may hold any 64-bit offset, and a signed
      // subtraction of two such overflows (UBSan, plan_codec_fuzzer). The decoder adds them
      // back modulo 2^64, so every offset round-trips.
      w.Zigzag(static_cast<std::int64_t>(m.src_offset - src_end));
      w.Zigzag(static_cast<std::int64_t>(m.dst_offset - dst_end));
      w.Varint(m.length);
      w.Varint(m.count);
      if (m.count > 1) {
        w.Varint(m.src_stride);
        w.Varint(m.dst_stride);
      }
      src_end = m.src_offset + m.length;
      dst_end = m.dst_offset + m.length;
    }
  }
  // Reductions of Partial sources: scratch sizes, copies, sums.
  const bool all = reduction_rank < 0;
  const auto mine = [&](std::uint32_t rank) { return all || rank == static_cast<std::uint32_t>(reduction_rank); };
  const bool has_scratch = !plan.reductions().empty();
  w.Varint(has_scratch ? static_cast<std::uint64_t>(plan.src_world()) : 0);
  for (int r = 0; has_scratch && r < plan.src_world(); ++r) w.Varint(plan.scratch_bytes(r));
  std::vector<const ReduceCopy*> copies;
  for (const ReduceCopy& c : plan.reduce_copies()) {
    if (mine(c.reducer) || mine(c.src_rank)) copies.push_back(&c);
  }
  w.Varint(copies.size());
  for (const ReduceCopy* c : copies) {
    for (std::uint64_t v : {std::uint64_t{c->reducer}, std::uint64_t{c->src_rank}, c->src_offset, c->slot_offset,
                            c->length, c->count, c->src_stride, c->slot_stride}) {
      w.Varint(v);
    }
  }
  std::vector<const Reduction*> sums;
  for (const Reduction& r : plan.reductions()) {
    if (mine(r.reducer)) sums.push_back(&r);
  }
  w.Varint(sums.size());
  for (const Reduction* r : sums) {
    for (std::uint64_t v :
         {std::uint64_t{r->reducer}, r->scratch_offset, r->bytes, std::uint64_t{r->addends}, std::uint64_t{r->dtype}}) {
      w.Varint(v);
    }
  }
  // Header, raw body size, zstd frame of the body, XXH64 of everything before it.
  const std::vector<std::byte>& body = w.bytes();
  Writer out;
  out.Fixed(kMagic, 4);
  out.Fixed(kVersion, 2);
  out.Fixed(part ? kFlagPart : 0, 2);
  out.Fixed(body.size(), 8);
  std::vector<std::byte>& bytes = out.bytes();
  const std::size_t header = bytes.size();
  bytes.resize(header + ZSTD_compressBound(body.size()));
  const std::size_t n =
      ZSTD_compress(bytes.data() + header, bytes.size() - header, body.data(), body.size(), kZstdLevel);
  bytes.resize(header + (ZSTD_isError(n) ? 0 : n));  // cannot fail: the bound was reserved
  out.Fixed(XXH64(bytes.data(), bytes.size(), 0), 8);
  return std::move(bytes);
}

}  // namespace

std::vector<std::byte> SerializePlan(const TransferPlan& plan) {
  std::vector<std::size_t> all(plan.buckets().size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  return Encode(plan, all, false, -1);
}

std::vector<std::byte> SerializePlanPart(const TransferPlan& plan, PlanSide side, int rank) {
  std::vector<std::size_t> ids;
  const auto r = static_cast<std::uint32_t>(rank);
  for (std::size_t i = 0; i < plan.buckets().size(); ++i) {
    const Bucket& b = plan.buckets()[i];
    const auto& group = plan.dst_groups()[b.dst_group];
    if (side == PlanSide::kSource ? b.src_rank == r : std::binary_search(group.begin(), group.end(), r)) {
      ids.push_back(i);
    }
  }
  return Encode(plan, ids, true, side == PlanSide::kSource ? rank : std::numeric_limits<std::int64_t>::max());
}

Result<TransferPlan> DeserializePlan(std::span<const std::byte> bytes) {
  if (bytes.size() < 24) return CorruptData(fmt::format("plan of {} bytes is truncated", bytes.size()));
  std::uint64_t stored = 0;
  for (int i = 0; i < 8; ++i)
    stored |= static_cast<std::uint64_t>(bytes[bytes.size() - 8 + static_cast<std::size_t>(i)]) << (8 * i);
  Reader h(bytes.first(16));
  SW_ASSIGN_OR_RETURN(const std::uint64_t magic, h.Fixed(4, "magic"));
  if (magic != kMagic) return CorruptData("bad magic: not a Shardwire plan");
  SW_ASSIGN_OR_RETURN(const std::uint64_t version, h.Fixed(2, "version"));
  if (version != kVersion)
    return CorruptData(fmt::format("unsupported plan version {} (this build reads {})", version, kVersion));
  if (XXH64(bytes.data(), bytes.size() - 8, 0) != stored) return CorruptData("plan checksum mismatch");
  SW_RETURN_IF_ERROR(h.Fixed(2, "flags").status());
  SW_ASSIGN_OR_RETURN(const std::uint64_t body_size, h.Fixed(8, "body size"));
  if (body_size > kMaxBodyBytes) return CorruptData(fmt::format("plan body of {} bytes is implausible", body_size));
  const std::span<const std::byte> frame = bytes.subspan(16, bytes.size() - 24);
  // The frame must declare the same size (the encoder's ZSTD_compress always records it)
  // before anything is allocated: the checksum is no authentication, and 24 bytes with a
  // body size of 4 GiB would otherwise commit 4 GiB before the frame failed.
  if (ZSTD_getFrameContentSize(frame.data(), frame.size()) != body_size)
    return CorruptData("plan body's zstd frame does not declare the recorded body size");
  std::vector<std::byte> body(body_size);
  const std::size_t n = ZSTD_decompress(body.data(), body.size(), frame.data(), frame.size());
  if (ZSTD_isError(n) || n != body_size) return CorruptData("plan body does not decompress to its recorded size");
  Reader r(body);
  SW_ASSIGN_OR_RETURN(const std::uint64_t src_world, r.Varint("src_world"));
  SW_ASSIGN_OR_RETURN(const std::uint64_t dst_world, r.Varint("dst_world"));
  SW_ASSIGN_OR_RETURN(const std::uint64_t runs, r.Varint("runs"));
  if (src_world > (1u << 24) || dst_world > (1u << 24)) return CorruptData("plan world size out of range");
  SW_ASSIGN_OR_RETURN(const std::uint64_t group_count, r.Varint("group count"));
  if (group_count > r.remaining()) return CorruptData("plan group count overruns the blob");
  std::vector<std::vector<std::uint32_t>> groups;
  for (std::uint64_t i = 0; i < group_count; ++i) {
    SW_ASSIGN_OR_RETURN(const std::uint64_t id, r.Varint("group id"));
    SW_ASSIGN_OR_RETURN(const std::uint64_t size, r.Varint("group size"));
    // Group ids index a vector: an id is bounded by kMaxPlanGroups so that a few bytes
    // cannot make us allocate hundreds of MB (2^24 ids were 400 MB of empty groups).
    if (id >= kMaxPlanGroups || size > dst_world || size > r.remaining()) return CorruptData("plan group out of range");
    // The encoder writes each group once, ids ascending; a repeated id would append a
    // second run of ranks to the first (unsorted, possibly repeated ranks).
    if (id < groups.size()) return CorruptData(fmt::format("plan group id {} repeated or out of order", id));
    groups.resize(id + 1);
    std::uint64_t rank = 0;
    for (std::uint64_t j = 0; j < size; ++j) {
      SW_ASSIGN_OR_RETURN(const std::uint64_t delta, r.Varint("group rank"));
      rank += delta;
      if (rank >= dst_world || (j > 0 && delta == 0)) return CorruptData("plan group rank out of range or repeated");
      groups[id].push_back(static_cast<std::uint32_t>(rank));
    }
  }
  SW_ASSIGN_OR_RETURN(const std::uint64_t bucket_count, r.Varint("bucket count"));
  if (bucket_count > r.remaining()) return CorruptData("plan bucket count overruns the blob");
  std::vector<Bucket> buckets;
  std::vector<Move> moves;
  for (std::uint64_t i = 0; i < bucket_count; ++i) {
    Bucket b;
    SW_ASSIGN_OR_RETURN(const std::uint64_t src, r.Varint("bucket source"));
    SW_ASSIGN_OR_RETURN(const std::uint64_t group, r.Varint("bucket group"));
    SW_ASSIGN_OR_RETURN(const std::uint64_t delivery, r.Varint("bucket delivery"));
    SW_ASSIGN_OR_RETURN(const std::uint64_t round, r.Varint("bucket round"));
    SW_ASSIGN_OR_RETURN(const std::uint64_t count, r.Varint("bucket move count"));
    if (src >= src_world || group >= groups.size() || groups[group].empty() ||
        delivery > static_cast<std::uint64_t>(DeliveryKind::kBroadcast) || round > (1u << 30) ||
        count > r.remaining()) {
      return CorruptData(fmt::format("plan bucket {} has a source, group, delivery, round or count out of range", i));
    }
    // TransferPlan keeps buckets sorted by source rank (MovesFrom and SourcesOf search it).
    if (!buckets.empty() && src < buckets.back().src_rank)
      return CorruptData(fmt::format("plan bucket {}: source rank {} after rank {} (buckets are sorted by source)", i,
                                     src, buckets.back().src_rank));
    b.src_rank = static_cast<std::uint32_t>(src);
    b.dst_group = static_cast<std::uint32_t>(group);
    b.delivery = static_cast<DeliveryKind>(delivery);
    b.round = static_cast<std::uint32_t>(round);
    b.first_move = moves.size();
    b.move_count = count;
    std::uint64_t src_end = 0, dst_end = 0;
    for (std::uint64_t j = 0; j < count; ++j) {
      Move m;
      m.src_rank = b.src_rank;
      m.dst_group = b.dst_group;
      SW_ASSIGN_OR_RETURN(const std::int64_t src_gap, r.Zigzag("move source offset"));
      SW_ASSIGN_OR_RETURN(const std::int64_t dst_delta, r.Zigzag("move destination offset"));
      SW_ASSIGN_OR_RETURN(m.length, r.Varint("move length"));
      SW_ASSIGN_OR_RETURN(m.count, r.Varint("move count"));
      if (m.count == 0) return CorruptData("plan move with a count of 0");
      if (m.count > 1) {
        SW_ASSIGN_OR_RETURN(m.src_stride, r.Varint("move source stride"));
        SW_ASSIGN_OR_RETURN(m.dst_stride, r.Varint("move destination stride"));
      }
      // Unsigned (wrapping) sums: the encoder's deltas are differences modulo 2^64, and a
      // signed sum could overflow (undefined) on hostile input. The extents are checked next.
      m.src_offset = src_end + static_cast<std::uint64_t>(src_gap);
      m.dst_offset = dst_end + static_cast<std::uint64_t>(dst_delta);
      if (!ExtentFits(m.src_offset, m.count, m.src_stride, m.length) ||
          !ExtentFits(m.dst_offset, m.count, m.dst_stride, m.length) ||
          m.length > std::numeric_limits<std::uint64_t>::max() / m.count ||
          m.bytes() > std::numeric_limits<std::uint64_t>::max() - b.bytes) {
        return CorruptData(fmt::format("plan bucket {} move {}: byte range overflows 64 bits", i, j));
      }
      src_end = m.src_offset + m.length;
      dst_end = m.dst_offset + m.length;
      b.bytes += m.bytes();
      moves.push_back(m);
    }
    buckets.push_back(b);
  }
  SW_ASSIGN_OR_RETURN(const std::uint64_t scratch_count, r.Varint("scratch count"));
  if (scratch_count != 0 && scratch_count != src_world) return CorruptData("plan scratch table has the wrong size");
  std::vector<std::uint64_t> scratch;
  for (std::uint64_t i = 0; i < scratch_count; ++i) {
    SW_ASSIGN_OR_RETURN(const std::uint64_t v, r.Varint("scratch bytes"));
    scratch.push_back(v);
  }
  SW_ASSIGN_OR_RETURN(const std::uint64_t copy_count, r.Varint("reduce copy count"));
  if (copy_count > r.remaining()) return CorruptData("plan reduce copy count overruns the blob");
  std::vector<ReduceCopy> copies;
  for (std::uint64_t i = 0; i < copy_count; ++i) {
    std::uint64_t v[8];
    for (auto& x : v) {
      SW_ASSIGN_OR_RETURN(x, r.Varint("reduce copy"));
    }
    // Ranks in range; both extents (the addend in the source's buffer, the run in the slot)
    // and the byte count within 64 bits, as for moves.
    if (v[0] >= src_world || v[1] >= src_world || v[5] == 0 || !ExtentFits(v[2], v[5], v[6], v[4]) ||
        !ExtentFits(v[3], v[5], v[7], v[4]) || v[4] > std::numeric_limits<std::uint64_t>::max() / v[5]) {
      return CorruptData(fmt::format("plan reduce copy {}: rank or byte range out of range", i));
    }
    copies.push_back(ReduceCopy{static_cast<std::uint32_t>(v[0]), static_cast<std::uint32_t>(v[1]), v[2], v[3], v[4],
                                v[5], v[6], v[7]});
  }
  SW_ASSIGN_OR_RETURN(const std::uint64_t sum_count, r.Varint("reduction count"));
  if (sum_count > r.remaining()) return CorruptData("plan reduction count overruns the blob");
  std::vector<Reduction> sums;
  for (std::uint64_t i = 0; i < sum_count; ++i) {
    std::uint64_t v[5];
    for (auto& x : v) {
      SW_ASSIGN_OR_RETURN(x, r.Varint("reduction"));
    }
    // The addends' slots (scratch_offset + addends x bytes) within 64 bits.
    if (v[0] >= src_world || v[3] == 0 || v[3] > (1u << 24) || v[4] > static_cast<std::uint64_t>(DType::kF8E5M2) ||
        !ExtentFits(v[1], v[3], v[2], v[2])) {
      return CorruptData(fmt::format("plan reduction {}: rank, addends, dtype or byte range out of range", i));
    }
    sums.push_back(Reduction{static_cast<std::uint32_t>(v[0]), v[1], v[2], static_cast<std::uint32_t>(v[3]),
                             static_cast<std::uint8_t>(v[4])});
  }
  if (r.remaining() != 0) return CorruptData(fmt::format("plan has {} trailing bytes", r.remaining()));
  TransferPlan plan(static_cast<int>(src_world), static_cast<int>(dst_world), std::move(groups), std::move(moves),
                    std::move(buckets), runs);
  if (!sums.empty() || !copies.empty()) plan.SetReductions(std::move(copies), std::move(sums), std::move(scratch));
  return plan;
}

}  // namespace shardwire
