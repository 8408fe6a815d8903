// Test fixture for pushes that convert on the way (tests/workflows): bf16 trainer tensors
// (FSDP=3 splits rows at non-multiples of 128) and the FP8 block-128 engine tensors they become
// (DeepSeek-V3's `weight_scale_inv` layout: F8_E4M3 weights with F32 128x128 block scales), with
// an independent oracle.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "shardwire/cast.h"
#include "shardwire/fp8_block.h"
#include "shardwire/layout.h"

namespace shardwire::weight_sync_test {

// Conversion in the push: bf16 trainers (FSDP=3, rows split at non-multiples of 128) into
// FP8 block-128 engines (TP=2, 2 replicas). Oracle: each engine rank quantises the WHOLE
// tensor with QuantizeFp8BlockTensor (checked against numpy in tests/convert) and compares its
// shards of weights and scales byte for byte; the norm arrives cast to fp32.

inline std::vector<TensorSpec> TrainerBf16() {
  return {{"emb", DType::kBF16, {200, 64}},
          {"wq", DType::kBF16, {512, 256}},
          {"wo", DType::kBF16, {256, 512}},
          {"wk", DType::kBF16, {200, 320}},
          {"norm", DType::kBF16, {256}}};
}

inline std::vector<TensorSpec> EngineFp8() {
  return {{"emb", DType::kBF16, {200, 64}},      {"wq", DType::kF8E4M3, {512, 256}},
          {"wq_scale_inv", DType::kF32, {4, 2}}, {"wo", DType::kF8E4M3, {256, 512}},
          {"wo_scale_inv", DType::kF32, {2, 4}}, {"wk", DType::kF8E4M3, {200, 320}},
          {"wk_scale_inv", DType::kF32, {2, 3}}, {"norm", DType::kF32, {256}}};
}

// Finite bf16 values of the whole trainer tensor at `version`: magnitudes vary per block and
// peak in one row of each block-row (so a straddling block's amax lies in one shard),
// every 7th element of version 2 is zero, and wk's first block is all zero in version 3.
inline std::vector<std::byte> FullBf16(const TensorSpec& spec, std::uint64_t version) {
  const std::int64_t n = spec.numel();
  std::vector<std::byte> out(static_cast<std::size_t>(n) * 2);
  const std::int64_t cols = spec.shape.size() == 2 ? spec.shape[1] : 1;
  for (std::int64_t e = 0; e < n; ++e) {
    std::uint32_t h = static_cast<std::uint32_t>(e * 2654435761u) ^ static_cast<std::uint32_t>(version * 40503u) ^
                      static_cast<std::uint32_t>(spec.name.size() * 97u);
    h ^= h >> 13;
    const std::int64_t block = (e / cols / 128) * 7 + (e % cols) / 128;
    // Row 5 of every block-row is 16x larger: the block's amax sits in one shard only.
    const std::uint32_t exponent = 110 +
                                   static_cast<std::uint32_t>((block * 5 + static_cast<std::int64_t>(version)) % 30) +
                                   ((e / cols) % 128 == 5 ? 4u : 0u);
    std::uint16_t bits = static_cast<std::uint16_t>((h & 0x8000u) | (exponent << 7) | (h & 0x7Fu));
    if (version == 2 && e % 7 == 0) bits = 0;
    if (version == 3 && spec.name == "wk" && e / cols < 128 && e % cols < 128) bits = 0x8000;  // -0.0
    std::memcpy(out.data() + e * 2, &bits, 2);
  }
  return out;
}

// The bytes of `box` from a dense row-major full tensor with elements of `esize` bytes.
inline std::vector<std::byte> Crop(std::span<const std::byte> full, const std::vector<std::int64_t>& shape, const Box& box,
                            std::size_t esize) {
  const std::int64_t cols = shape.size() == 2 ? shape[1] : 1;
  const std::int64_t r0 = box.offset.empty() ? 0 : box.offset[0], rows = box.shape.empty() ? 1 : box.shape[0];
  const std::int64_t c0 = box.offset.size() == 2 ? box.offset[1] : 0, bc = box.shape.size() == 2 ? box.shape[1] : 1;
  std::vector<std::byte> out(static_cast<std::size_t>(rows * bc) * esize);
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(out.data() + static_cast<std::size_t>(r * bc) * esize,
                full.data() + static_cast<std::size_t>((r0 + r) * cols + c0) * esize,
                static_cast<std::size_t>(bc) * esize);
  return out;
}

// Writes trainer rank `rank`'s shards of `version` (FullBf16, cropped to each shard's box) into
// its buffer `w`. `edit`, when set, may change a shard's bytes first (a NaN put in).
inline void WriteTrainerBf16(const Layout& trainer, int rank, std::uint64_t version, std::span<std::byte> w,
                             const std::function<void(const TensorSpec&, std::vector<std::byte>&)>& edit = {}) {
  for (const ShardRef& s : trainer.rank(rank).shards) {
    const TensorSpec& spec = trainer.tensors()[s.tensor];
    auto bytes = Crop(FullBf16(spec, version), spec.shape, s.box, 2);
    if (edit) edit(spec, bytes);
    std::memcpy(w.data() + s.byte_offset, bytes.data(), bytes.size());
  }
}

// Bytes of engine rank `rank`'s buffer that differ from what the whole bf16 trainer tensors
// `full` (by name) become: each FP8 weight and its scales from quantising the whole tensor, the
// norm cast to fp32, the rest unchanged.
inline std::size_t CheckFp8Engine(const Layout& engine, int rank, std::span<const std::byte> buf,
                                  std::map<std::string, std::vector<std::byte>> full) {
  std::size_t bad = 0;
  for (const ShardRef& s : engine.rank(rank).shards) {
    const TensorSpec& spec = engine.tensors()[s.tensor];
    std::vector<std::byte> want;
    if (spec.dtype == DType::kBF16) {
      want = Crop(full[spec.name], spec.shape, s.box, 2);
    } else if (spec.dtype == DType::kF32 && spec.name == "norm") {
      std::vector<std::byte> f32(static_cast<std::size_t>(spec.numel()) * 4);
      EXPECT_TRUE(CastElements(DType::kBF16, DType::kF32, full["norm"], f32).ok());
      want = Crop(f32, spec.shape, s.box, 4);
    } else {
      const bool scale = spec.dtype == DType::kF32;
      const std::string weight = scale ? spec.name.substr(0, spec.name.size() - 10) : spec.name;
      const TensorSpec wspec{weight, DType::kBF16, engine.tensors()[engine.TensorIndex(weight).value()].shape};
      std::vector<std::uint8_t> q(static_cast<std::size_t>(wspec.numel()));
      const auto sshape = Fp8BlockScaleShape(wspec.shape, {}).value();
      std::vector<float> sc(static_cast<std::size_t>(sshape[0] * sshape[1]));
      EXPECT_TRUE(QuantizeFp8BlockTensor(TensorView{wspec, full[weight]}, q, sc, {}).ok());
      want = scale ? Crop(std::as_bytes(std::span(sc)), sshape, s.box, 4)
                   : Crop(std::as_bytes(std::span(q)), wspec.shape, s.box, 1);
    }
    for (std::size_t b = 0; b < want.size(); ++b) bad += buf[s.byte_offset + b] != want[b];
  }
  return bad;
}

// Bytes of engine rank `rank`'s buffer that differ from the oracle at `version`.
inline std::size_t CheckFp8Engine(const Layout& engine, int rank, std::span<const std::byte> buf,
                                  std::uint64_t version) {
  std::map<std::string, std::vector<std::byte>> full;  // trainer-dtype values by name
  for (const TensorSpec& t : TrainerBf16()) full[t.name] = FullBf16(t, version);
  return CheckFp8Engine(engine, rank, buf, std::move(full));
}

}  // namespace shardwire::weight_sync_test
