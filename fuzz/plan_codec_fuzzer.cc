// libFuzzer target for the plan codec (DeserializePlan, shardwire/plan_codec.h): plan
// parts travel between processes.
//
// Properties checked on every input:
//   * decoding never crashes, hangs, overflows or exhausts memory (ASan, UBSan,
//     libFuzzer's -rss_limit_mb and -timeout);
//   * a rejected blob is kCorruptData with a message;
//   * an accepted plan is usable: every bucket's moves lie inside moves() and name the
//     bucket's source and group, groups are sorted and distinct, the byte extent of every
//     move (offset + (count - 1) * stride + length, both sides) fits in 64 bits, and its
//     re-encoding decodes again and re-encodes to the same bytes.
// The checksum and the zstd frame make random mutations rarely reach the body, so every
// input is also decoded as a body: the first 2 bytes are the flags, the rest the raw
// body, wrapped in a correct header, zstd frame and checksum ("sealed").
//
// With -DSHARDWIRE_FUZZ_SEED_MAIN the same file builds a seed-corpus writer instead
// (plans and plan parts between FSDP, HSDP and TP layouts of fuzz/fuzz_models.h, in both
// forms: the blob, and flags + raw body as the sealed path reads it).
// Fuzz links: shardwire_plan
#include <xxhash.h>
#include <zstd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "fuzz_models.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_layouts.h"
#include "shardwire/plan_codec.h"
#include "shardwire/planner.h"

namespace {

constexpr const char* kName = "plan_codec_fuzzer";
using shardwire::fuzz::Check;

bool FitsIn64(std::uint64_t offset, std::uint64_t count, std::uint64_t stride, std::uint64_t length) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  const std::uint64_t runs = count - 1;
  if (stride != 0 && runs > kMax / stride) return false;
  const std::uint64_t last = runs * stride;
  return last <= kMax - offset && length <= kMax - offset - last;
}

void DecodeAndCheck(std::span<const std::byte> blob) {
  auto plan = shardwire::DeserializePlan(blob);
  if (!plan.ok()) {
    shardwire::fuzz::CheckRejection(plan.status(), kName, {shardwire::ErrorCode::kCorruptData});
    return;
  }
  const auto& groups = plan->dst_groups();
  for (const auto& g : groups) {
    for (std::size_t i = 1; i < g.size(); ++i) Check(g[i - 1] < g[i], kName, "groups sorted and distinct");
    for (auto r : g) Check(static_cast<std::int64_t>(r) < plan->dst_world(), kName, "group ranks < dst_world");
  }
  for (const auto& b : plan->buckets()) {
    Check(static_cast<std::int64_t>(b.src_rank) < plan->src_world(), kName, "bucket source < src_world");
    Check(b.dst_group < groups.size() && !groups[b.dst_group].empty(), kName, "bucket group exists");
    Check(b.first_move <= plan->moves().size() && b.move_count <= plan->moves().size() - b.first_move, kName,
          "bucket moves inside moves()");
    for (std::uint64_t i = 0; i < b.move_count; ++i) {
      const auto& m = plan->moves()[b.first_move + i];
      Check(m.src_rank == b.src_rank && m.dst_group == b.dst_group, kName, "move names its bucket's ranks");
      Check(m.count >= 1, kName, "move count >= 1");
      Check(FitsIn64(m.src_offset, m.count, m.src_stride, m.length) &&
                FitsIn64(m.dst_offset, m.count, m.dst_stride, m.length),
            kName, "move extents fit in 64 bits");
    }
  }
  const std::vector<std::byte> again = shardwire::SerializePlan(*plan);
  auto plan2 = shardwire::DeserializePlan(again);
  Check(plan2.ok(), kName, "a re-encoded plan decodes");
  Check(shardwire::SerializePlan(*plan2) == again, kName, "re-encoding is stable");
}

// magic "SWPL", version 1, flags, raw body size, zstd frame, XXH64 (plan_codec.h).
std::vector<std::byte> Seal(std::uint16_t flags, std::span<const std::byte> body) {
  std::vector<std::byte> out(16 + ZSTD_compressBound(body.size()) + 8);
  auto put = [&](std::size_t at, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out[at + static_cast<std::size_t>(i)] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
  };
  put(0, 0x4C505753, 4);
  put(4, 1, 2);
  put(6, flags, 2);
  put(8, body.size(), 8);
  const std::size_t n = ZSTD_compress(out.data() + 16, out.size() - 24, body.data(), body.size(), 1);
  Check(!ZSTD_isError(n), kName, "ZSTD_compress");
  out.resize(16 + n + 8);
  put(16 + n, XXH64(out.data(), 16 + n, 0), 8);
  return out;
}

// The raw body of a well-formed blob (for the seeds of the sealed path).
std::vector<std::byte> Unseal(std::span<const std::byte> blob) {
  std::uint64_t size = 0;
  for (int i = 0; i < 8; ++i) size |= static_cast<std::uint64_t>(blob[8 + static_cast<std::size_t>(i)]) << (8 * i);
  std::vector<std::byte> body(2 + size);
  body[0] = blob[6];
  body[1] = blob[7];
  const std::size_t n = ZSTD_decompress(body.data() + 2, size, blob.data() + 16, blob.size() - 24);
  Check(!ZSTD_isError(n) && n == size, kName, "ZSTD_decompress of a seed");
  return body;
}

}  // namespace

#ifndef SHARDWIRE_FUZZ_SEED_MAIN
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  DecodeAndCheck(input);
  if (size >= 2) {
    const auto flags = static_cast<std::uint16_t>(data[0] | (data[1] << 8));
    DecodeAndCheck(Seal(flags, input.subspan(2)));
  }
  return 0;
}
#else
int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  int n = 0;
  auto write = [&](const std::vector<std::byte>& bytes) {
    const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(n++);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::exit(1);
    std::fclose(f);
  };
  const std::pair<std::string_view, std::pair<const char*, const char*> > cases[] = {
      {shardwire::fuzz::kDenseConfig, {"fsdp=2", "tp=2"}},
      {shardwire::fuzz::kDenseConfig, {"fsdp=4", "tp=2,dp=2"}},
      {shardwire::fuzz::kDenseConfig, {"hsdp=2x2", "tp=4"}},
      {shardwire::fuzz::kMoeConfig, {"fsdp=4,ep=2", "tp=2,ep=2"}},
  };
  for (const auto& [config_text, specs] : cases) {
    auto config = shardwire::ParseModelConfig(config_text, "fuzz_models.h");
    auto model = shardwire::DescribeModel(*config);
    auto src = shardwire::MakeLayoutFromString(*model, specs.first);
    auto dst = shardwire::MakeLayoutFromString(*model, specs.second);
    if (!src.ok() || !dst.ok()) {
      std::fprintf(stderr, "seed layouts %s -> %s: %s %s\n", specs.first, specs.second, src.status().ToString().c_str(),
                   dst.status().ToString().c_str());
      return 1;
    }
    shardwire::PlanOptions options;
    options.bucket_bytes = 4096;
    auto plan = shardwire::PlanTransfer(*src, *dst, options);
    if (!plan.ok()) return 1;
    const auto whole = shardwire::SerializePlan(*plan);
    write(whole);
    write(Unseal(whole));
    const auto part = shardwire::SerializePlanPart(*plan, shardwire::PlanSide::kDestination, 1);
    write(part);
    write(Unseal(part));
  }
  return 0;
}
#endif
