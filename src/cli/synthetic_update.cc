#include "cli/synthetic_update.h"

#include <cstring>

#include <xxhash.h>

#include "shardwire/dtype.h"
#include "shardwire/shard_io.h"

namespace shardwire::cli {
namespace {

inline std::uint64_t Mix(std::uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// delta in [-2^-7, 2^-7): small against typical weights, but changes most bf16 values.
inline float Delta(std::uint64_t h) { return (static_cast<float>(h >> 40) / 16777216.0f - 0.5f) * (1.0f / 64.0f); }

template <typename Fn>
void ForEachRun(const TensorSpec& spec, const Box& box, Fn&& fn) {
  ForEachContiguousRun(box, WholeBox(spec.shape), box, fn);
}

}  // namespace

void WriteUpdatedBox(const TensorSpec& spec, std::span<const std::byte> full, const Box& box, std::uint64_t step,
                     std::span<std::byte> out) {
  CopyBoxFromTensor(spec, full, box, out);
  if (step == 0) return;
  const std::size_t esize = DTypeSize(spec.dtype);
  const std::uint64_t salt = XXH3_64bits(spec.name.data(), spec.name.size()) ^ Mix(step);
  ForEachRun(spec, box, [&](std::int64_t global, std::int64_t local, std::int64_t n) {
    std::byte* p = out.data() + static_cast<std::size_t>(local) * esize;
    for (std::int64_t i = 0; i < n; ++i, p += esize) {
      const std::uint64_t h = Mix(salt + static_cast<std::uint64_t>(global + i));
      if (spec.dtype == DType::kBF16) {
        std::uint16_t v;
        std::memcpy(&v, p, 2);
        std::uint32_t bits = static_cast<std::uint32_t>(v) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        StoreFromFloat(DType::kBF16, f + Delta(h), p);
      } else if (IsFloatingPoint(spec.dtype)) {
        StoreFromFloat(spec.dtype, LoadAsFloat(spec.dtype, p) + Delta(h), p);
      } else {
        for (std::size_t b = 0; b < esize; ++b) p[b] ^= static_cast<std::byte>((h >> (8 * b)) & 0xFF);
      }
    }
  });
}

}  // namespace shardwire::cli
