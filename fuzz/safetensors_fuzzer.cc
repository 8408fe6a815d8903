// libFuzzer target for the safetensors header parser (SafetensorsFile::Open): a
// checkpoint file is untrusted input. Each input is written to an in-memory file
// (memfd_create) and opened through /proc/self/fd/N, so the real Open path (open, fstat,
// mmap, header parse, tiling checks) runs unchanged.
//
// Properties checked on every input:
//   * Open never crashes, hangs or reads outside the file (ASan, UBSan; a read past the
//     mapping would be SIGSEGV/SIGBUS);
//   * a rejected file is kCorruptData with a message (safetensors.h);
//   * an accepted file's tensors tile its data section: the sum of their nbytes() is
//     data_size(); each Get() succeeds with data.size() == nbytes() and every byte of it
//     is readable.
// A random 8-byte length prefix almost never matches the header, so every input is also
// opened a second time with the prefix set to end the header at the input's last '}'
// ("resealed"), which lets the fuzzer explore the JSON checks.
// Seeds: the .safetensors files of ../shared/models (fuzz/run_fuzzer.sh); dictionary:
// fuzz/safetensors_fuzzer.dict.
// Fuzz links: shardwire_model
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "shardwire/safetensors.h"

namespace {

constexpr const char* kName = "safetensors_fuzzer";

int MemFd() {
  static const int fd = memfd_create("safetensors_fuzzer", MFD_CLOEXEC);
  shardwire::fuzz::Check(fd >= 0, kName, "memfd_create");
  return fd;
}

void OpenAndCheck(const std::uint8_t* data, std::size_t size) {
  using shardwire::fuzz::Check;
  const int fd = MemFd();
  Check(ftruncate(fd, 0) == 0, kName, "ftruncate");
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    Check(n > 0, kName, "pwrite");
    done += static_cast<std::size_t>(n);
  }
  auto file = shardwire::SafetensorsFile::Open("/proc/self/fd/" + std::to_string(fd));
  if (!file.ok()) {
    shardwire::fuzz::CheckRejection(file.status(), kName, {shardwire::ErrorCode::kCorruptData});
    return;
  }
  std::uint64_t sum = 0;
  unsigned char x = 0;
  for (const auto& spec : file->tensors()) {
    auto view = file->Get(spec.name);
    Check(view.ok(), kName, "every listed tensor can be got");
    Check(view->data.size() == spec.nbytes(), kName, "data.size() == nbytes()");
    for (std::byte b : view->data) x ^= static_cast<unsigned char>(b);
    sum += spec.nbytes();
  }
  Check(sum == file->data_size(), kName, "tensors tile the data section");
  Check(file->data_offset() + file->data_size() == size, kName, "data section ends at the end of the file");
  asm volatile("" : : "r"(x));  // keep the reads
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  OpenAndCheck(data, size);
  if (size > 8) {
    std::size_t last = size;
    for (std::size_t i = size; i > 8; --i) {
      if (data[i - 1] == '}') {
        last = i;
        break;
      }
    }
    if (last != size || data[size - 1] == '}') {
      std::vector<std::uint8_t> sealed(data, data + size);
      const std::uint64_t n = last - 8;
      for (int i = 0; i < 8; ++i) sealed[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
      OpenAndCheck(sealed.data(), sealed.size());
    }
  }
  return 0;
}
