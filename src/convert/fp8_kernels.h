// Internal: the hot loops of the FP8 block quantiser and of the casts, in one table per
// instruction set, chosen once at run time for the CPU (no -march in the build):
//
//  * kPortable: plain C++ loops (float_bits.h), compiled for the build's baseline target; the
//    reference every other path must equal bit for bit.
//  * kAvx2: the same C++ loops compiled with __attribute__((target("avx2,f16c"))) (GCC
//    vectorises them for 256-bit registers).
//  * kAvx512: hand-written AVX-512F/BW/VL intrinsics (fp8_kernels_avx512.cc): bf16 handled as
//    32 lanes per register (even/odd elements widened in place, no shuffles), fp16 through
//    vcvtph2ps, the E4M3 rounding in integer ops, partial vectors by masked loads/stores.
//
// Every path computes the same bits: only integer operations and single IEEE fp32 operations
// in round-to-nearest-even (the layer is built with -ffp-contract=off: no FMA contraction).
// tests/convert/kernel_paths_test.cc compares every path the CPU supports with kPortable, and
// the oracle tests run every path against the numpy oracle.
//
// The quantiser's kernels work on a 2-D region: `nrows` rows of `cols` elements, `src_stride`
// bytes between rows, split into column blocks of `bc` elements (the last may be shorter).
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardwire::convert {

/// Raises maxes[b] to the largest magnitude bit pattern in column block b of every row:
/// x & 0x7FFF for 16-bit floats (bf16, fp16), x & 0x7FFFFFFF for fp32. Integer order equals |x|
/// order, and Inf/NaN patterns are the largest (the caller checks them against its dtype).
using BlockMaxFn = void (*)(const std::byte* src, std::int64_t src_stride, std::int64_t nrows, std::int64_t cols,
                            std::int64_t bc, std::uint32_t* maxes);
/// out[r * out_stride + c] = e4m3_rne(fp32(src[r][c]) * muls[c / bc]). Contract: finite input and
/// |fp32(x) * mul| < 464 (FloatToE4m3InRange), which the quantiser's multipliers guarantee.
/// `prefetch_offset` (bytes; 0: none): while it computes, the kernel prefetches the cache lines
/// at src[r][c] + prefetch_offset, i.e. with block_rows * src_stride the same elements of the
/// next block-row, which the quantiser's amax pass reads next. That pass is bound by memory and
/// this one by arithmetic; overlapping them took the AVX2 bf16 quantiser from 0.52-0.59x to
/// 0.64-0.83x one-thread memcpy on the Zen 3 development VM (bench/convert_bench). Prefetches
/// never fault, so the addresses may lie past the matrix. The portable loops ignore it.
using ToE4m3Fn = void (*)(const std::byte* src, std::int64_t src_stride, std::int64_t nrows, std::int64_t cols,
                          std::int64_t bc, const float* muls, std::uint8_t* out, std::int64_t out_stride,
                          std::int64_t prefetch_offset);
/// Element-wise cast of `n` elements, round-to-nearest-even (CastElements).
using CastFn = void (*)(const std::byte* src, std::byte* dst, std::size_t n);

enum class KernelIsa : std::uint8_t { kPortable, kAvx2, kAvx512 };

struct ConvertKernels {
  KernelIsa isa;
  const char* name;  ///< "portable", "avx2", "avx512"
  BlockMaxFn block_max16, block_max32;
  ToE4m3Fn bf16_to_e4m3, f16_to_e4m3, f32_to_e4m3;
  CastFn bf16_to_f32, bf16_to_f16, f16_to_f32, f16_to_bf16, f32_to_bf16, f32_to_f16;
};

/// The table of `isa`, or nullptr when this CPU (or this build: non-x86-64, non-GCC/Clang)
/// cannot run it. kPortable is always available.
const ConvertKernels* KernelsFor(KernelIsa isa);

/// The active table. Chosen once, on first use: the environment variable
/// SHARDWIRE_CONVERT_KERNELS (portable / avx2 / avx512) when set to a supported path, otherwise the
/// widest one the CPU supports (__builtin_cpu_supports); a value naming no path this CPU runs
/// logs a warning (spdlog) naming the paths it runs and the one used. Thread-safe.
const ConvertKernels& Kernels();

/// Makes `isa` the active table (tests and benchmarks compare the paths). Returns false, changing
/// nothing, when it is not supported. Thread-safe, but conversions running concurrently may use
/// either table (they compute the same bits).
bool SelectKernels(KernelIsa isa);

// The per-ISA tables (defined in fp8_kernels_portable.cc, fp8_kernels_avx2.cc, fp8_kernels_avx512.cc).
extern const ConvertKernels kPortableKernels;
extern const ConvertKernels kAvx2Kernels;    // only on x86-64 builds
extern const ConvertKernels kAvx512Kernels;  // only on x86-64 builds

}  // namespace shardwire::convert
