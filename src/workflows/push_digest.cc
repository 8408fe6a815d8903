#include "workflows/push_digest.h"

#include "workflows/xxh3_dispatch.h"

namespace shardwire::workflows {

PushDigest::PushDigest() : state_(XXH3_createState()) { XXH3_64bits_reset(state_.get()); }

void PushDigest::Add(const std::byte* base, const std::vector<Move>& moves, MoveSide side) {
  for (const Move& m : moves) {
    const std::uint64_t offset = side == MoveSide::kSource ? m.src_offset : m.dst_offset;
    const std::uint64_t stride = side == MoveSide::kSource ? m.src_stride : m.dst_stride;
    for (std::uint64_t row = 0; row < m.count; ++row) {
      XXH3_64bits_update(state_.get(), base + offset + row * stride, m.length);
    }
  }
}

void PushDigest::AddSource(std::span<const std::byte> buffer, std::span<const std::byte> scratch,
                           const std::vector<Move>& moves) {
  for (const Move& m : moves) {
    const bool in_scratch = m.src_offset >= buffer.size();
    const std::byte* base = in_scratch ? scratch.data() : buffer.data();
    const std::uint64_t offset = in_scratch ? m.src_offset - buffer.size() : m.src_offset;
    for (std::uint64_t row = 0; row < m.count; ++row) {
      XXH3_64bits_update(state_.get(), base + offset + row * m.src_stride, m.length);
    }
  }
}

std::uint64_t PushDigest::value() const { return XXH3_64bits_digest(state_.get()); }

}  // namespace shardwire::workflows
