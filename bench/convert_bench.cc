// bench/convert_bench: the convert layer's kernels on one core against one-thread memcpy of
// the same input bytes, measured in the same run (issue 9 item 7; goal >= 0.5x for FP8).
//
// Usage: convert_bench [rows cols]   (default 4096 x 7168, a DeepSeek-V3-sized projection;
//        its bf16 input is 58.7 MB, larger than the caches)
// Each figure is the best of 5 runs over the whole matrix, timed in thread CPU time (the
// machine is shared); throughput counts INPUT bytes. Every kernel runs once per kernel path
// the CPU supports (src/convert/fp8_kernels.h: portable, avx2, avx512; the active one is marked),
// each beside the memcpy reference of the same input bytes measured in the same run.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "convert/fp8_kernels.h"
#include "shardwire/cast.h"
#include "shardwire/fp8_block.h"

namespace {

// Thread CPU time, not wall time: on a shared machine the kernel and the reference are both
// charged only for the time they actually ran.
double ThreadSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

template <typename F>
double BestSeconds(F&& f) {
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const double t = ThreadSeconds();
    f();
    best = std::min(best, ThreadSeconds() - t);
  }
  return best;
}

std::vector<std::byte> RandomMatrix(std::size_t n, shardwire::DType dtype) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  std::vector<std::byte> out(n * shardwire::DTypeSize(dtype));
  (void)shardwire::CastElements(shardwire::DType::kF32, dtype, std::as_bytes(std::span(v)), out);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace shardwire;
  const std::int64_t rows = argc > 2 ? std::stoll(argv[1]) : 4096;
  const std::int64_t cols = argc > 2 ? std::stoll(argv[2]) : 7168;
  const std::size_t n = static_cast<std::size_t>(rows * cols);
  fmt::print("convert_bench: [{} x {}] = {} elements, one thread\n", rows, cols, n);
  const convert::ConvertKernels& chosen = convert::Kernels();
  fmt::print("kernel path chosen for this CPU: {}\n", chosen.name);
  fmt::print("{:<34} {:<10} {:>10} {:>12} {:>10}\n", "kernel", "path", "input MB", "GB/s (in)", "x memcpy");

  std::string path = "-";
  auto report = [&](const std::string& name, double in_bytes, double seconds, double ref_gbps) {
    const double gbps = in_bytes / seconds / 1e9;
    fmt::print("{:<34} {:<10} {:>10.1f} {:>12.2f} {:>10.2f}\n", name, path, in_bytes / 1e6, gbps, gbps / ref_gbps);
  };

  const auto bf16 = RandomMatrix(n, DType::kBF16);
  const auto f16 = RandomMatrix(n, DType::kF16);
  const auto f32 = RandomMatrix(n, DType::kF32);
  std::vector<std::uint8_t> q(n);
  std::vector<float> scales(static_cast<std::size_t>(((rows + 127) / 128) * ((cols + 127) / 128)));
  std::vector<std::byte> out(n * 4);

  // References: memcpy of the same input bytes, measured here, per input size.
  auto memcpy_gbps = [&](std::size_t bytes) {
    std::vector<std::byte> dst(bytes);
    const std::byte* src = bytes == bf16.size() ? bf16.data() : f32.data();
    const double s = BestSeconds([&] { std::memcpy(dst.data(), src, bytes); });
    return static_cast<double>(bytes) / s / 1e9;
  };
  const double ref2 = memcpy_gbps(bf16.size());
  const double ref4 = memcpy_gbps(f32.size());
  report("memcpy (reference, 2-byte input)", static_cast<double>(bf16.size()), bf16.size() / ref2 / 1e9, ref2);
  report("memcpy (reference, 4-byte input)", static_cast<double>(f32.size()), f32.size() / ref4 / 1e9, ref4);

  auto quant = [&](const char* name, DType dt, const std::vector<std::byte>& src, Fp8BlockOptions o, double ref) {
    Status st;
    const double s = BestSeconds([&] { st = QuantizeFp8BlockRows(dt, src, rows, cols, q, scales, o, {"bench"}); });
    if (!st.ok()) fmt::print(stderr, "{}: {}\n", name, st.ToString());
    report(name, static_cast<double>(src.size()), s, ref);
  };
  auto cast = [&](const char* name, DType from, DType to, const std::vector<std::byte>& src, double ref) {
    std::span<std::byte> dst(out.data(), n * DTypeSize(to));
    const double s = BestSeconds([&] { (void)CastElements(from, to, src, dst); });
    report(name, static_cast<double>(src.size()), s, ref);
  };
  for (convert::KernelIsa isa :
       {convert::KernelIsa::kPortable, convert::KernelIsa::kAvx2, convert::KernelIsa::kAvx512}) {
    if (!convert::SelectKernels(isa)) continue;
    path = std::string(convert::Kernels().name) + (convert::Kernels().isa == chosen.isa ? "*" : "");
    quant("fp8 block-128 from bf16", DType::kBF16, bf16, {}, ref2);
    Fp8BlockOptions ue8m0;
    ue8m0.scale_format = Fp8ScaleFormat::kUe8m0;
    quant("fp8 block-128 from bf16, ue8m0", DType::kBF16, bf16, ue8m0, ref2);
    quant("fp8 block-128 from fp16", DType::kF16, f16, {}, ref2);
    quant("fp8 block-128 from fp32", DType::kF32, f32, {}, ref4);
  }
  for (convert::KernelIsa isa :
       {convert::KernelIsa::kPortable, convert::KernelIsa::kAvx2, convert::KernelIsa::kAvx512}) {
    if (!convert::SelectKernels(isa)) continue;
    path = std::string(convert::Kernels().name) + (convert::Kernels().isa == chosen.isa ? "*" : "");
    cast("cast bf16 -> fp32", DType::kBF16, DType::kF32, bf16, ref2);
    cast("cast fp32 -> bf16", DType::kF32, DType::kBF16, f32, ref4);
    cast("cast bf16 -> fp16", DType::kBF16, DType::kF16, bf16, ref2);
    cast("cast fp16 -> bf16", DType::kF16, DType::kBF16, f16, ref2);
    cast("cast fp32 -> fp16", DType::kF32, DType::kF16, f32, ref4);
    cast("cast fp16 -> fp32", DType::kF16, DType::kF32, f16, ref2);
  }
  convert::SelectKernels(chosen.isa);
  // The reference again at the end: how much the machine's speed moved during the run.
  path = "-";
  report("memcpy (reference again, 2-byte)", static_cast<double>(bf16.size()),
         bf16.size() / memcpy_gbps(bf16.size()) / 1e9, ref2);
  return 0;
}
