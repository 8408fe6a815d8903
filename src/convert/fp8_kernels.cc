// Run-time choice of the kernel table (fp8_kernels.h): once, by __builtin_cpu_supports (which
// also checks that the OS saves the wide registers), or by SHARDWIRE_CONVERT_KERNELS.
#include "convert/fp8_kernels.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace shardwire::convert {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SW_HAVE_X86_KERNELS 1
#endif

#ifdef SW_HAVE_X86_KERNELS
// F16C (the half-precision conversions the AVX2 kernels use): CPUID leaf 1, ECX bit 29. Read
// with cpuid because clang 14's __builtin_cpu_supports does not know "f16c".
bool CpuHasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}
#endif

bool CpuHas(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kPortable:
      return true;
#ifdef SW_HAVE_X86_KERNELS
    case KernelIsa::kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && CpuHasF16c();
    case KernelIsa::kAvx512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
#endif
    default:
      return false;
  }
}

const ConvertKernels* Table(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kPortable:
      return &kPortableKernels;
#ifdef SW_HAVE_X86_KERNELS
    case KernelIsa::kAvx2:
      return &kAvx2Kernels;
    case KernelIsa::kAvx512:
      return &kAvx512Kernels;
#endif
    default:
      return nullptr;
  }
}

const ConvertKernels* Choose() {
  const ConvertKernels* widest = &kPortableKernels;
  for (KernelIsa isa : {KernelIsa::kAvx2, KernelIsa::kAvx512}) {
    if (const ConvertKernels* k = KernelsFor(isa)) widest = k;
  }
  const char* want = std::getenv("SHARDWIRE_CONVERT_KERNELS");
  if (want == nullptr || *want == '\0') return widest;
  std::vector<std::string_view> runnable;
  for (KernelIsa isa : {KernelIsa::kPortable, KernelIsa::kAvx2, KernelIsa::kAvx512}) {
    const ConvertKernels* k = KernelsFor(isa);
    if (k == nullptr) continue;
    if (std::strcmp(want, k->name) == 0) return k;
    runnable.push_back(k->name);
  }
  // A typo, or a path this CPU cannot run: said once, on stderr's logger, not ignored silently
  // (a benchmark comparing paths would otherwise compare one path with itself).
  spdlog::warn("SHARDWIRE_CONVERT_KERNELS={} is not a conversion kernel path this CPU runs (it runs: {}); using {}",
               want, fmt::join(runnable, ", "), widest->name);
  return widest;
}

std::atomic<const ConvertKernels*>& Active() {
  static std::atomic<const ConvertKernels*> active{Choose()};
  return active;
}

}  // namespace

const ConvertKernels* KernelsFor(KernelIsa isa) { return CpuHas(isa) ? Table(isa) : nullptr; }

const ConvertKernels& Kernels() { return *Active().load(std::memory_order_relaxed); }

bool SelectKernels(KernelIsa isa) {
  const ConvertKernels* k = KernelsFor(isa);
  if (k == nullptr) return false;
  Active().store(k, std::memory_order_relaxed);
  return true;
}

}  // namespace shardwire::convert
