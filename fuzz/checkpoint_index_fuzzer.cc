// libFuzzer target for the sharded-checkpoint index (`*.safetensors.index.json`, read by
// Checkpoint::Open): untrusted JSON that names the shard files to open.
//
// Setup (once): a private temporary folder holding two generated shard files,
// model-00001-of-00002.safetensors (a.weight F32 [2, 3], b.bias BF16 [4]) and
// model-00002-of-00002.safetensors (c.weight F32 [3]); with SHARDWIRE_SHARED_DIR set, the
// real shard files of ../shared/models are linked in beside them. Each input is written
// to model.safetensors.index.json in that folder and opened.
//
// Properties checked on every input:
//   * Open never crashes, hangs or reads outside the inputs (ASan, UBSan), and never
//     opens a file outside the folder (shard names with "..", absolute paths or empty
//     names are kCorruptData);
//   * a rejection is kCorruptData, kNotFound or kIoError (checkpoint.h) with a message;
//   * an accepted index yields a checkpoint whose every tensor can be got with
//     data.size() == nbytes(), and total_bytes() is their sum.
// Seeds: the index files of ../shared/models; dictionary: fuzz/checkpoint_index_fuzzer.dict.
// Fuzz links: shardwire_model
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "shardwire/checkpoint.h"
#include "shardwire/safetensors.h"

namespace {

namespace fs = std::filesystem;
constexpr const char* kName = "checkpoint_index_fuzzer";
std::string g_index_path;

void WriteShard(const fs::path& path, const std::vector<shardwire::TensorSpec>& specs) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<shardwire::TensorView> views;
  for (const auto& spec : specs) storage.emplace_back(spec.nbytes(), std::byte{0x3C});
  for (std::size_t i = 0; i < specs.size(); ++i) views.push_back({specs[i], storage[i]});
  const auto status = shardwire::WriteSafetensors(path.string(), views);
  shardwire::fuzz::Check(status.ok(), kName, "writing a generated shard");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char templ[] = "/tmp/shardwire-index-fuzz-XXXXXX";
  shardwire::fuzz::Check(mkdtemp(templ) != nullptr, kName, "mkdtemp");
  const fs::path dir(templ);
  using shardwire::DType;
  WriteShard(dir / "model-00001-of-00002.safetensors",
             {{"a.weight", DType::kF32, {2, 3}}, {"b.bias", DType::kBF16, {4}}});
  WriteShard(dir / "model-00002-of-00002.safetensors", {{"c.weight", DType::kF32, {3}}});
  if (const char* shared = std::getenv("SHARDWIRE_SHARED_DIR")) {
    std::error_code ec;
    for (const char* sub : {"models/tiny-llama-f32-sharded", "models/tiny-qwen3-sharded-mlx4bit"}) {
      for (const auto& entry : fs::directory_iterator(fs::path(shared) / sub, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.find("-of-") != std::string::npos && !fs::exists(dir / name)) {
          fs::create_symlink(entry.path(), dir / name, ec);
        }
      }
    }
  }
  g_index_path = (dir / "model.safetensors.index.json").string();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using shardwire::ErrorCode;
  using shardwire::fuzz::Check;
  {
    std::ofstream out(g_index_path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    Check(out.good(), kName, "writing the index");
  }
  auto checkpoint = shardwire::Checkpoint::Open(g_index_path);
  if (!checkpoint.ok()) {
    shardwire::fuzz::CheckRejection(checkpoint.status(), kName,
                                    {ErrorCode::kCorruptData, ErrorCode::kNotFound, ErrorCode::kIoError});
    return 0;
  }
  std::uint64_t sum = 0;
  for (const auto& spec : checkpoint->tensors()) {
    auto view = checkpoint->Get(spec.name);
    Check(view.ok(), kName, "every listed tensor can be got");
    Check(view->data.size() == spec.nbytes(), kName, "data.size() == nbytes()");
    sum += spec.nbytes();
  }
  Check(sum == checkpoint->total_bytes(), kName, "total_bytes is the sum of nbytes");
  return 0;
}
