#include "cli/synthetic_update.h"

#include <algorithm>

#include <xxhash.h>

#include "shardwire/cast.h"
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

// v[i] += delta of global element `global + i`, in float: the same sum the per-element loop
// below computes for one element, as one loop the compiler can keep in registers.
inline void AddDeltasLoop(float* v, std::uint64_t salt, std::int64_t global, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) v[i] += Delta(Mix(salt + static_cast<std::uint64_t>(global) + i));
}

// The same loop compiled for AVX-512 (DQ: 64-bit multiplies and u64 -> float in vectors), chosen
// at run time as the convert kernels are (no ifunc / target_clones: their resolvers run before
// ThreadSanitizer's runtime is up, and the TSan build of the binary crashed at start).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx512f,avx512dq,avx512vl"))) void AddDeltasAvx512(float* v, std::uint64_t salt,
                                                                          std::int64_t global, std::size_t n) {
  AddDeltasLoop(v, salt, global, n);
}
#endif

void AddDeltas(float* v, std::uint64_t salt, std::int64_t global, std::size_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool avx512 =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (avx512) return AddDeltasAvx512(v, salt, global, n);
#endif
  AddDeltasLoop(v, salt, global, n);
}

// BF16 and F32 runs: widened to float by the convert layer's casts (exact), the deltas added,
// narrowed back with its round-to-nearest-even (NaN kept quiet, as FloatToBf16 in dtype.cc),
// kChunk elements at a time through a stack buffer. Byte for byte what the per-element loop
// gives (tests/cli/synthetic_update_test.cc), and several times faster, which matters because
// every trainer rank and every verifying engine rank runs this over its whole shard every step:
// it was most of the demo's CPU time (docs/benchmarks_history.md, "The demo's own work between pushes").
constexpr std::size_t kChunk = 2048;
void UpdateRunThroughFloat(DType dtype, std::byte* p, std::uint64_t salt, std::int64_t global, std::int64_t n) {
  const std::size_t esize = DTypeSize(dtype);
  float f[kChunk];
  const std::span<std::byte> floats(reinterpret_cast<std::byte*>(f), sizeof(f));
  for (std::int64_t done = 0; done < n;) {
    const auto k = static_cast<std::size_t>(std::min<std::int64_t>(kChunk, n - done));
    const std::span<std::byte> bytes(p + static_cast<std::size_t>(done) * esize, k * esize);
    // Cannot fail: BF16 and F32 are cast dtypes and the sizes match by construction.
    (void)CastElements(dtype, DType::kF32, bytes, floats.first(k * 4));
    AddDeltas(f, salt, global + done, k);
    (void)CastElements(DType::kF32, dtype, floats.first(k * 4), bytes);
    done += static_cast<std::int64_t>(k);
  }
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
    if (spec.dtype == DType::kBF16 || spec.dtype == DType::kF32) {
      UpdateRunThroughFloat(spec.dtype, p, salt, global, n);
      return;
    }
    for (std::int64_t i = 0; i < n; ++i, p += esize) {
      const std::uint64_t h = Mix(salt + static_cast<std::uint64_t>(global + i));
      if (IsFloatingPoint(spec.dtype)) {
        StoreFromFloat(spec.dtype, LoadAsFloat(spec.dtype, p) + Delta(h), p);
      } else {
        for (std::size_t b = 0; b < esize; ++b) p[b] ^= static_cast<std::byte>((h >> (8 * b)) & 0xFF);
      }
    }
  });
}

}  // namespace shardwire::cli
