// agent_registration: time to make a real model's tensors transferable, and
// the metadata a peer must receive, per-tensor registration vs one arena vs
// coalesced caller memory.
//
// Usage: agent_registration [--budget-mib N] [MODEL_CONFIG.json ...]
//   Default models: ../shared/models/{Llama-3.1-8B,Qwen3-30B-A3B}/config.json
//   (291 and 18,867 tensors). Tensor sizes are scaled by one common factor so
//   the model fits --budget-mib (default 2048) of memory; counts and relative
//   sizes are real. Columns:
//     per-tensor : each tensor its own allocation and RegisterMemory call.
//     arena      : one AllocateArena + ArenaAllocator sub-allocations.
//     ranges     : tensors laid out in one caller allocation, RegisterRanges
//                  (coalesced into one region).
//   For each: registration wall time, metadata blob bytes, and the time a peer
//   takes to ImportMetadata it (endpoint creation + one rkey unpack per region
//   and lane). Memory is touched before timing (page faults excluded).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/arena_allocator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"

namespace {

using shardwire::Agent;
using Clock = std::chrono::steady_clock;
double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

struct Row {
  double register_ms = 0;
  std::size_t blob_bytes = 0;
  double import_ms = 0;
  std::size_t regions = 0;
  std::string note;
};

double ImportMs(const std::vector<std::byte>& blob) {
  auto peer = Agent::Create({.name = "peer"});
  if (!peer.ok()) return -1;
  const auto t0 = Clock::now();
  auto r = (*peer)->ImportMetadata(blob);
  const auto t1 = Clock::now();
  return r.ok() ? Ms(t0, t1) : -1;
}

Row PerTensor(const std::vector<std::uint64_t>& sizes) {
  Row row;
  std::vector<void*> bufs;
  for (auto s : sizes) {
    void* p = std::aligned_alloc(64, (s + 63) / 64 * 64);
    std::memset(p, 1, s);
    bufs.push_back(p);
  }
  {
    auto a = Agent::Create({.name = "owner"});
    if (a.ok()) {
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < sizes.size(); ++i) (void)(*a)->RegisterMemory(bufs[i], sizes[i]);
      const auto t1 = Clock::now();
      row.register_ms = Ms(t0, t1);
      auto blob = (*a)->ExportMetadata();
      if (blob.ok()) {
        row.blob_bytes = blob->size();
        row.import_ms = ImportMs(*blob);
      }
      row.regions = sizes.size();
    }
  }
  for (void* p : bufs) std::free(p);
  return row;
}

Row Arena(const std::vector<std::uint64_t>& sizes, std::uint64_t total) {
  Row row;
  auto a = Agent::Create({.name = "owner"});
  if (!a.ok()) return row;
  const auto t0 = Clock::now();
  auto region = (*a)->AllocateArena(total);
  if (!region.ok()) return row;
  const auto ta = Clock::now();
  shardwire::ArenaAllocator al(total);
  for (auto s : sizes) (void)al.Allocate(s, 64);
  const auto t1 = Clock::now();
  row.register_ms = Ms(t0, t1);
  row.note = "AllocateArena " + std::to_string(static_cast<int>(Ms(t0, ta))) + " ms + sub-allocation " +
             std::to_string(Ms(ta, t1)).substr(0, 5) + " ms";
  auto blob = (*a)->ExportMetadata();
  if (blob.ok()) {
    row.blob_bytes = blob->size();
    row.import_ms = ImportMs(*blob);
  }
  row.regions = 1;
  return row;
}

Row Ranges(const std::vector<std::uint64_t>& sizes, std::uint64_t total) {
  Row row;
  std::vector<std::byte> mem(total, std::byte{1});
  std::vector<Agent::MemoryRange> ranges;
  std::uint64_t at = 0;
  for (auto s : sizes) {
    ranges.push_back({mem.data() + at, s});
    at += (s + 63) / 64 * 64;
  }
  auto a = Agent::Create({.name = "owner"});
  if (!a.ok()) return row;
  const auto t0 = Clock::now();
  auto loc = (*a)->RegisterRanges(ranges, /*max_gap=*/64);  // 64-byte alignment padding
  const auto t1 = Clock::now();
  if (!loc.ok()) {
    std::fprintf(stderr, "RegisterRanges: %s\n", loc.status().ToString().c_str());
    return row;
  }
  row.register_ms = Ms(t0, t1);
  auto blob = (*a)->ExportMetadata();
  if (blob.ok()) {
    row.blob_bytes = blob->size();
    row.import_ms = ImportMs(*blob);
  }
  std::vector<shardwire::RegionId> ids;
  for (auto& l : *loc) ids.push_back(l.region);
  std::sort(ids.begin(), ids.end());
  row.regions = static_cast<std::size_t>(std::unique(ids.begin(), ids.end()) - ids.begin());
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t budget = 2048ull << 20;
  std::vector<std::string> configs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--budget-mib" && i + 1 < argc) {
      budget = std::strtoull(argv[++i], nullptr, 10) << 20;
    } else {
      configs.push_back(a);
    }
  }
  if (configs.empty()) {
    const char* shared = std::getenv("SHARDWIRE_SHARED_DIR");
    const std::string root = shared != nullptr ? shared : "../shared";
    configs = {root + "/models/Llama-3.1-8B/config.json", root + "/models/Qwen3-30B-A3B/config.json"};
  }
  std::printf("| model | tensors | real bytes | scaled to | way | regions | register ms | metadata bytes | peer import "
              "ms | note |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---|\n");
  for (const auto& path : configs) {
    auto cfg = shardwire::LoadModelConfig(path);
    if (!cfg.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), cfg.status().ToString().c_str());
      continue;
    }
    auto desc = shardwire::DescribeModel(*cfg);
    if (!desc.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), desc.status().ToString().c_str());
      continue;
    }
    std::uint64_t real = 0;
    for (const auto& t : desc->tensors) real += t.spec.nbytes();
    const double scale = std::min(1.0, static_cast<double>(budget) / static_cast<double>(real));
    std::vector<std::uint64_t> sizes;
    std::uint64_t total = 0;
    for (const auto& t : desc->tensors) {
      const auto s = std::max<std::uint64_t>(64, static_cast<std::uint64_t>(static_cast<double>(t.spec.nbytes()) * scale));
      sizes.push_back(s);
      total += (s + 63) / 64 * 64;
    }
    const std::string name = path.substr(0, path.rfind('/')).substr(path.substr(0, path.rfind('/')).rfind('/') + 1);
    auto print = [&](const char* way, const Row& r) {
      std::printf("| %s | %zu | %.1f GB | %.2f GB | %s | %zu | %.1f | %zu | %.1f | %s |\n", name.c_str(), sizes.size(),
                  static_cast<double>(real) / 1e9, static_cast<double>(total) / 1e9, way, r.regions, r.register_ms,
                  r.blob_bytes, r.import_ms, r.note.c_str());
      std::fflush(stdout);
    };
    print("per-tensor RegisterMemory", PerTensor(sizes));
    print("one arena + ArenaAllocator", Arena(sizes, total));
    print("RegisterRanges (coalesced)", Ranges(sizes, total));
  }
  return 0;
}
