// The portable kernel table (fp8_kernels.h): the loops of fp8_kernel_loops.inc for the build's
// baseline target. The reference the other paths are tested against.
#define SW_LOOP_TARGET
#define SW_LOOP_NS portable
#define SW_LOOP_TABLE kPortableKernels
#define SW_LOOP_ISA KernelIsa::kPortable
#define SW_LOOP_NAME "portable"
#include "convert/fp8_kernel_loops.inc"
