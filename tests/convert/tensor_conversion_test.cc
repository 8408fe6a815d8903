// Conversion specs: rename, fuse (concatenation along any dim), cast and FP8, streamed in chunks;
// checked against concatenation written out index by index here and against the kernels
// themselves (which the oracle tests cover); shape/dtype errors name the tensors.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "shardwire/cast.h"
#include "shardwire/fp8_block.h"
#include "shardwire/tensor_conversion.h"

namespace shardwire {
namespace {

struct Owned {
  TensorSpec spec;
  std::vector<std::byte> bytes;
  TensorView view() const { return {spec, bytes}; }
};

// bf16 tensor whose element k holds the value (tag * 1000 + k) % 251 - 125 (exact in bf16).
Owned MakeBf16(const std::string& name, std::vector<std::int64_t> shape, int tag) {
  Owned o{TensorSpec{name, DType::kBF16, std::move(shape)}, {}};
  std::vector<float> v(static_cast<std::size_t>(o.spec.numel()));
  for (std::size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(static_cast<int>((tag * 1000 + k) % 251) - 125);
  o.bytes.resize(v.size() * 2);
  EXPECT_TRUE(CastElements(DType::kF32, DType::kBF16, std::as_bytes(std::span(v)), o.bytes).ok());
  return o;
}

// Runs the converter with `chunk` bytes per call (ascending), like the streaming writer.
std::vector<std::byte> Drain(TensorConverter& c, std::size_t chunk, bool scale = false) {
  const auto& spec = scale ? *c.outputs().scale : c.outputs().destination;
  std::vector<std::byte> out(spec.nbytes());
  for (std::size_t off = 0; off < out.size(); off += chunk) {
    const std::size_t len = std::min(chunk, out.size() - off);
    const Status s = scale ? c.FillScale(off, std::span(out).subspan(off, len))
                           : c.FillDestination(off, std::span(out).subspan(off, len));
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return out;
}

TEST(TensorConversion, FuseQkvAlongDim0AndCastToF32) {
  const auto q = MakeBf16("q_proj.weight", {8, 6}, 1);
  const auto k = MakeBf16("k_proj.weight", {4, 6}, 2);
  const auto v = MakeBf16("v_proj.weight", {4, 6}, 3);
  ConversionSpec spec{"qkv_proj.weight", {q.spec.name, k.spec.name, v.spec.name}, 0, DType::kF32};
  auto c = TensorConverter::Create(spec, {q.view(), k.view(), v.view()});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->outputs().destination, (TensorSpec{"qkv_proj.weight", DType::kF32, {16, 6}}));
  EXPECT_FALSE(c->outputs().scale.has_value());
  const auto out = Drain(*c, 20);  // 5 floats per chunk: chunks straddle the sources
  std::vector<float> got(16 * 6);
  std::memcpy(got.data(), out.data(), out.size());
  for (int r = 0; r < 16; ++r) {
    const Owned& src = r < 8 ? q : (r < 12 ? k : v);
    const int sr = r < 8 ? r : (r < 12 ? r - 8 : r - 12);
    for (int j = 0; j < 6; ++j) {
      std::uint16_t h;
      std::memcpy(&h, src.bytes.data() + (sr * 6 + j) * 2, 2);
      std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
      float want;
      std::memcpy(&want, &u, 4);
      ASSERT_EQ(got[r * 6 + j], want) << r << "," << j;
    }
  }
}

TEST(TensorConversion, FuseExpertsGateUpAlongDim1KeepsDtype) {
  const auto gate = MakeBf16("experts.gate", {3, 2, 5}, 4);
  const auto up = MakeBf16("experts.up", {3, 3, 5}, 5);
  auto c = TensorConverter::Create({"experts.w13", {"experts.gate", "experts.up"}, 1, DType::kBF16},
                                   {gate.view(), up.view()});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->outputs().destination.shape, (std::vector<std::int64_t>{3, 5, 5}));
  const auto out = Drain(*c, 6);
  for (int e = 0; e < 3; ++e) {
    for (int r = 0; r < 5; ++r) {
      const Owned& src = r < 2 ? gate : up;
      const int rows = r < 2 ? 2 : 3, sr = r < 2 ? r : r - 2;
      EXPECT_EQ(std::memcmp(out.data() + ((e * 5 + r) * 5) * 2, src.bytes.data() + ((e * rows + sr) * 5) * 2, 10), 0);
    }
  }
}

TEST(TensorConversion, RenameIsACopy) {
  const auto w = MakeBf16("model.embed_tokens.weight", {7, 3}, 6);
  auto c = TensorConverter::Create({"embed.weight", {w.spec.name}, 0, DType::kBF16}, {w.view()});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Drain(*c, 8), w.bytes);
}

TEST(TensorConversion, FusedFp8QuantisesTheConcatenation) {
  // gate/up of 100 rows each: the block-row at rows 0..127 straddles the two sources.
  const auto gate = MakeBf16("gate_proj.weight", {100, 200}, 7);
  const auto up = MakeBf16("up_proj.weight", {100, 200}, 8);
  ConversionSpec spec{"gate_up_proj.weight", {gate.spec.name, up.spec.name}, 0, DType::kF8E4M3};
  auto c = TensorConverter::Create(spec, {gate.view(), up.view()});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(c->outputs().scale.has_value());
  EXPECT_EQ(*c->outputs().scale, (TensorSpec{"gate_up_proj.weight_scale_inv", DType::kF32, {2, 2}}));
  const auto q = Drain(*c, 1000);
  const auto s = Drain(*c, 8, true);
  // Reference: concatenate by hand, quantise whole.
  std::vector<std::byte> cat(gate.bytes);
  cat.insert(cat.end(), up.bytes.begin(), up.bytes.end());
  std::vector<std::uint8_t> rq(200 * 200);
  std::vector<float> rs(4);
  ASSERT_TRUE(QuantizeFp8BlockTensor({TensorSpec{"x", DType::kBF16, {200, 200}}, cat}, rq, rs, {}).ok());
  EXPECT_EQ(std::memcmp(q.data(), rq.data(), rq.size()), 0);
  EXPECT_EQ(std::memcmp(s.data(), rs.data(), 16), 0);
  // Scale first (before any weight chunk) gives the same bits.
  auto c2 = TensorConverter::Create(spec, {gate.view(), up.view()});
  ASSERT_TRUE(c2.ok());
  EXPECT_EQ(Drain(*c2, 16, true), s);
}

// Found by review: FillScale quantised one block-row past the range it was asked for (its end
// was taken as inclusive), so a NaN in block-row 1 failed a read of row 0's scales; and a
// destination of zero columns (no scale elements) divided by zero.
TEST(TensorConversion, FillScaleQuantisesOnlyTheBlockRowsItWrites) {
  auto w = MakeBf16("w.weight", {256, 128}, 3);
  const std::uint16_t nan = 0x7FC0;  // bf16 NaN at element [200, 0]: block-row 1
  std::memcpy(w.bytes.data() + 200 * 128 * 2, &nan, 2);
  auto c = TensorConverter::Create({"w.weight", {"w.weight"}, 0, DType::kF8E4M3}, {w.view()});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->outputs().scale->shape, (std::vector<std::int64_t>{2, 1}));
  std::vector<std::byte> row0(4);
  ASSERT_TRUE(c->FillScale(0, row0).ok()) << "block-row 1's NaN failed a read of block-row 0's scale";
  std::vector<float> ref_q_scale(1);
  std::vector<std::uint8_t> ref_q(128 * 128);
  ASSERT_TRUE(
      QuantizeFp8BlockTensor({TensorSpec{"x", DType::kBF16, {128, 128}}, std::span(w.bytes).first(128 * 128 * 2)},
                             ref_q, ref_q_scale, {})
          .ok());
  EXPECT_EQ(std::memcmp(row0.data(), ref_q_scale.data(), 4), 0);
  std::vector<std::byte> row1(4);
  const Status bad = c->FillScale(4, row1);
  EXPECT_EQ(bad.code(), ErrorCode::kCorruptData) << bad.ToString();
  // Zero columns: a [128, 0] destination has a [1, 0] scale, no bytes to fill.
  const auto empty = MakeBf16("e.weight", {128, 0}, 1);
  auto e = TensorConverter::Create({"e.weight", {"e.weight"}, 0, DType::kF8E4M3}, {empty.view()});
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_TRUE(e->FillScale(0, {}).ok());
}

TEST(TensorConversion, ShapeAndDtypeErrorsNameTheTensors) {
  const TensorSpec q{"q", DType::kBF16, {8, 6}}, k{"k", DType::kBF16, {4, 5}}, k3{"k3", DType::kBF16, {4, 6, 1}};
  auto r = ResolveConversion({"qkv", {"q", "k"}, 0, DType::kBF16}, {q, k});
  EXPECT_EQ(r.status().code(), ErrorCode::kLayoutMismatch);
  EXPECT_NE(r.status().message().find("\"q\" [8, 6] and \"k\" [4, 5] differ in dim 1"), std::string::npos)
      << r.status().message();
  r = ResolveConversion({"qkv", {"q", "k3"}, 0, DType::kBF16}, {q, k3});
  EXPECT_EQ(r.status().code(), ErrorCode::kLayoutMismatch);
  r = ResolveConversion({"qkv", {"q", "q"}, 2, DType::kBF16}, {q, q});
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("concat dim 2"), std::string::npos) << r.status().message();
  r = ResolveConversion({"qkv", {"q", "k"}, 0, DType::kBF16}, {q, TensorSpec{"other", DType::kBF16, {4, 6}}});
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  r = ResolveConversion({"x", {"i"}, 0, DType::kBF16}, {TensorSpec{"i", DType::kI32, {4}}});
  EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.status().message().find("\"i\" is I32"), std::string::npos);
  r = ResolveConversion({"x", {"q"}, 0, DType::kF8E5M2}, {q});
  EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported);
  r = ResolveConversion({"norm", {"n"}, 0, DType::kF8E4M3}, {TensorSpec{"n", DType::kBF16, {64}}});
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("destination \"norm\""), std::string::npos) << r.status().message();
  r = ResolveConversion({"x", {"q", "mixed"}, 0, DType::kBF16}, {q, TensorSpec{"mixed", DType::kF32, {8, 6}}});
  EXPECT_EQ(r.status().code(), ErrorCode::kLayoutMismatch);
  r = ResolveConversion({"", {"q"}, 0, DType::kBF16}, {q});
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  // A converter refuses ranges past the end and FillScale on a cast.
  const auto w = MakeBf16("w", {2, 2}, 9);
  auto c = TensorConverter::Create({"w", {"w"}, 0, DType::kBF16}, {w.view()});
  ASSERT_TRUE(c.ok());
  std::vector<std::byte> buf(8);
  EXPECT_EQ(c->FillDestination(2, buf).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(c->FillScale(0, std::span(buf).first(4)).code(), ErrorCode::kFailedPrecondition);
}

}  // namespace
}  // namespace shardwire
