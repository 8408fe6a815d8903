// The AVX2 kernel table (fp8_kernels.h): the loops of fp8_kernel_loops.inc, every function
// compiled with __attribute__((target("avx2,f16c"))); only called after __builtin_cpu_supports
// said the CPU has both (fp8_kernels.cc). x86-64 GCC/Clang builds only.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SW_LOOP_TARGET __attribute__((target("avx2,f16c")))
#define SW_LOOP_NS avx2
#define SW_LOOP_TABLE kAvx2Kernels
#define SW_LOOP_ISA KernelIsa::kAvx2
#define SW_LOOP_NAME "avx2"
#include "convert/fp8_kernel_loops.inc"
#endif
