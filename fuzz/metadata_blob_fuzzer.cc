// libFuzzer target for the metadata blob parser (DecodeAgentMetadata), the one
// piece of the transport that parses bytes from another process, and for the
// parser of the UCX backend's section inside it (DecodeUcxSection: the worker
// and message channel addresses of each lane, src/transport/ucx/ucx_backend.h).
//
// Properties checked on every input:
//   * decoding never crashes, hangs or reads outside the input (ASan, UBSan);
//   * a rejected blob is always kCorruptData;
//   * an accepted blob re-encodes to exactly the same bytes (the format has a
//     single encoding) and decodes again to an equal value;
//   * the same three for the UCX section, both for the connection bytes of an
//     accepted blob's "ucx" section and for the raw input taken as a section.
// Checksums make random mutations rarely reach the body checks, so every input
// is also decoded a second time with its checksum recomputed ("resealed"),
// which lets the fuzzer explore the body parser.
//
// Built and run by fuzz/run_fuzzer.sh (clang, -fsanitize=fuzzer,address,undefined).
// With -DSHARDWIRE_FUZZ_SEED_MAIN the same file builds a seed-corpus writer
// instead (valid blobs of 0, 1 and 3 regions, 1 and 2 lanes).
// Fuzz links: shardwire_transport
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "transport/metadata_blob.h"
#include "transport/ucx/ucx_backend.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "metadata_blob_fuzzer: property violated: %s\n", what);
    std::abort();
  }
}

void DecodeUcxSectionAndCheck(std::span<const std::byte> section) {
  auto r = shardwire::transport::ucx::DecodeUcxSection(section);
  if (!r.ok()) {
    Check(r.status().code() == shardwire::ErrorCode::kCorruptData, "UCX section rejection is kCorruptData");
    Check(!r.status().message().empty(), "UCX section rejection has a message");
    return;
  }
  Check(!r->workers.empty(), "an accepted UCX section has a worker address");
  const std::vector<std::byte> again = shardwire::transport::ucx::EncodeUcxSection(*r);
  Check(again.size() == section.size() && std::equal(again.begin(), again.end(), section.begin()),
        "accepted UCX section re-encodes to the same bytes");
  auto r2 = shardwire::transport::ucx::DecodeUcxSection(again);
  Check(r2.ok() && *r2 == *r, "re-encoded UCX section decodes to an equal value");
}

void DecodeAndCheck(const std::vector<std::byte>& blob) {
  auto r = shardwire::transport::DecodeAgentMetadata(blob);
  if (!r.ok()) {
    Check(r.status().code() == shardwire::ErrorCode::kCorruptData, "rejection is kCorruptData");
    Check(!r.status().message().empty(), "rejection has a message");
    return;
  }
  const std::vector<std::byte> again = shardwire::transport::EncodeAgentMetadata(*r);
  Check(again == blob, "accepted blob re-encodes to the same bytes");
  auto r2 = shardwire::transport::DecodeAgentMetadata(again);
  Check(r2.ok() && *r2 == *r, "re-encoded blob decodes to an equal value");
  for (const auto& section : r->sections)
    if (section.backend == "ucx") DecodeUcxSectionAndCheck(section.connection);
}

shardwire::transport::AgentMetadata Sample(int regions, int lanes) {
  shardwire::transport::AgentMetadata m;
  m.name = "fuzz-agent";
  shardwire::transport::ucx::UcxSection addresses;
  addresses.workers.resize(static_cast<std::size_t>(lanes));
  for (int l = 0; l < lanes; ++l)
    for (int i = 0; i < 24 + l; ++i)
      addresses.workers[static_cast<std::size_t>(l)].push_back(static_cast<std::byte>(i * 3 + l));
  // Odd lane counts: no message channels; even: a channel address per lane.
  if (lanes % 2 == 0) {
    addresses.message_channels = addresses.workers;
    for (auto& a : addresses.message_channels) a.push_back(std::byte{0x4D});
  }
  shardwire::transport::BackendSection ucx{"ucx", shardwire::transport::ucx::EncodeUcxSection(addresses), {}};
  shardwire::transport::BackendSection inproc{"inproc", std::vector<std::byte>(8, std::byte{7}), {}};
  m.process = {"boot/pid:[1]", 42, 4242};
  for (int r = 0; r < regions; ++r) {
    shardwire::transport::RegionRecord rec;
    rec.id = static_cast<shardwire::RegionId>(r + 1);
    rec.base = 0x7f0000000000ull + static_cast<std::uint64_t>(r) * 4096;
    rec.length = 4096;
    m.regions.push_back(rec);
    ucx.region_keys.push_back(std::vector<std::byte>(static_cast<std::size_t>(12 + r), std::byte{0x5A}));
    inproc.region_keys.push_back(std::vector<std::byte>(8, static_cast<std::byte>(r)));
  }
  m.sections.push_back(ucx);
  if (lanes % 2 == 0) m.sections.push_back(inproc);
  return m;
}

}  // namespace

#ifndef SHARDWIRE_FUZZ_SEED_MAIN
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> blob(size);
  if (size != 0) std::memcpy(blob.data(), data, size);
  DecodeAndCheck(blob);
  DecodeUcxSectionAndCheck(blob);
  if (size >= shardwire::transport::kMetadataHeaderSize + shardwire::transport::kMetadataChecksumSize) {
    const std::size_t summed = size - shardwire::transport::kMetadataChecksumSize;
    const std::uint64_t h = XXH64(blob.data(), summed, 0);
    for (int i = 0; i < 8; ++i) blob[summed + static_cast<std::size_t>(i)] = static_cast<std::byte>((h >> (8 * i)) & 0xFF);
    DecodeAndCheck(blob);
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
  for (int regions : {0, 1, 3})
    for (int lanes : {1, 2}) {
      const auto blob = shardwire::transport::EncodeAgentMetadata(Sample(regions, lanes));
      const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(n++);
      FILE* f = std::fopen(path.c_str(), "wb");
      if (f == nullptr || std::fwrite(blob.data(), 1, blob.size(), f) != blob.size()) return 1;
      std::fclose(f);
    }
  return 0;
}
#endif
