#include "shardwire/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace shardwire {
namespace {

TEST(DType, NamesRoundTrip) {
  for (int i = 0; i <= static_cast<int>(DType::kF8E5M2); ++i) {
    auto d = static_cast<DType>(i);
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF8E4M3), 1u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  auto bad = ParseDType("F12");
  EXPECT_EQ(bad.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(bad.status().message().find("F12"), std::string::npos);
}

// Known bit patterns, taken from the formats' definitions (not from our encoder).
TEST(DType, KnownEncodings) {
  std::byte buf[4];
  StoreFromFloat(DType::kBF16, 1.0f, buf);
  std::uint16_t u16;
  std::memcpy(&u16, buf, 2);
  EXPECT_EQ(u16, 0x3F80);
  StoreFromFloat(DType::kF16, 1.0f, buf);
  std::memcpy(&u16, buf, 2);
  EXPECT_EQ(u16, 0x3C00);
  StoreFromFloat(DType::kF16, -2.5f, buf);
  std::memcpy(&u16, buf, 2);
  EXPECT_EQ(u16, 0xC100);
  StoreFromFloat(DType::kF8E4M3, 448.0f, buf);
  EXPECT_EQ(static_cast<unsigned>(buf[0]), 0x7Eu);
  StoreFromFloat(DType::kF8E4M3, 1000.0f, buf);  // saturates
  EXPECT_EQ(static_cast<unsigned>(buf[0]), 0x7Eu);
  StoreFromFloat(DType::kF8E4M3, 1.0f, buf);
  EXPECT_EQ(static_cast<unsigned>(buf[0]), 0x38u);
  StoreFromFloat(DType::kF8E5M2, 57344.0f, buf);
  EXPECT_EQ(static_cast<unsigned>(buf[0]), 0x7Bu);
  StoreFromFloat(DType::kF8E5M2, -1.0f, buf);
  EXPECT_EQ(static_cast<unsigned>(buf[0]), 0xBCu);
  // Smallest E4M3 subnormal is 2^-9.
  StoreFromFloat(DType::kF8E4M3, std::ldexp(1.0f, -9), buf);
  EXPECT_EQ(static_cast<unsigned>(buf[0]), 0x01u);
}

TEST(DType, RoundTripAllSmallFormats) {
  for (DType d : {DType::kF8E4M3, DType::kF8E5M2}) {
    for (unsigned bits = 0; bits < 256; ++bits) {
      std::byte in = static_cast<std::byte>(bits);
      float f = LoadAsFloat(d, &in);
      if (std::isnan(f)) continue;
      std::byte out;
      StoreFromFloat(d, f, &out);
      if (f == 0.0f) {
        EXPECT_EQ(LoadAsFloat(d, &out), 0.0f);
        continue;
      }
      EXPECT_EQ(static_cast<unsigned>(out), bits) << DTypeName(d) << " value " << f;
    }
  }
  for (unsigned bits = 0; bits < 65536; bits += 7) {
    std::uint16_t in = static_cast<std::uint16_t>(bits);
    std::byte b[2];
    std::memcpy(b, &in, 2);
    float f = LoadAsFloat(DType::kF16, b);
    if (std::isnan(f)) continue;
    std::byte out[2];
    StoreFromFloat(DType::kF16, f, out);
    std::uint16_t got;
    std::memcpy(&got, out, 2);
    EXPECT_EQ(got, in) << f;
  }
}

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1 + 2^-7: ties go to even (1.0).
  std::byte buf[2];
  StoreFromFloat(DType::kBF16, 1.0f + std::ldexp(1.0f, -8), buf);
  EXPECT_EQ(LoadAsFloat(DType::kBF16, buf), 1.0f);
  StoreFromFloat(DType::kBF16, 1.0f + 3 * std::ldexp(1.0f, -8), buf);
  EXPECT_EQ(LoadAsFloat(DType::kBF16, buf), 1.0f + std::ldexp(1.0f, -6));
}

}  // namespace
}  // namespace shardwire
