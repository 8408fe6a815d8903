// StreamCopy (core/streaming_store.h) against a byte-by-byte oracle: every destination
// alignment within 16 bytes (the plain head), lengths around the 16- and 64-byte steps of the
// streaming middle and the plain tail, and no byte outside [dst, dst + length) touched.
#include "core/streaming_store.h"

#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

namespace shardwire {
namespace {

TEST(StreamCopy, MatchesAByteLoopAtEveryAlignmentAndLength) {
  constexpr std::size_t kPad = 64;
  std::vector<std::byte> src(4096 + 64);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::byte>((i * 131 + 7) & 0xFF);
  const std::uint64_t lengths[] = {0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 1000, 4095};
  for (std::uint64_t dst_align = 0; dst_align < 16; ++dst_align) {
    for (std::uint64_t src_align : {std::uint64_t{0}, std::uint64_t{3}}) {
      for (std::uint64_t length : lengths) {
        std::vector<std::byte> dst(kPad + 4096 + 16 + kPad, std::byte{0xEE});
        std::byte* to = dst.data() + kPad + dst_align;
        StreamCopy(to, src.data() + src_align, length);
        StreamFence();
        for (std::size_t i = 0; i < dst.size(); ++i) {
          const std::size_t at = i - (kPad + dst_align);
          const bool inside = i >= kPad + dst_align && at < length;
          const std::byte want = inside ? src[src_align + at] : std::byte{0xEE};
          ASSERT_EQ(dst[i], want) << "dst_align " << dst_align << " src_align " << src_align << " length " << length
                                  << " byte " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace shardwire
