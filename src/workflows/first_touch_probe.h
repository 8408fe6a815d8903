// How much the first write to a fresh 4 KiB page costs on this host: the one
// measurement that decides whether an engine's weight buffers are shared memory
// (which same-host trainers map, pre-fault and write with streaming stores) or
// private huge pages (which they write by kernel copy).
//
// Why (docs/benchmarks_history.md, "Streaming stores into mapped engine buffers"): a
// kernel copy (process_vm_writev) writes page by page with plain stores, each
// destination line read before it is written, and ran at ~0.6x of a streaming
// memcpy per CPU-second on both kinds of development VM. A trainer that maps the
// engine's shared memory writes it with streaming stores (CopyRowsStreaming) at
// ~0.8-0.95x, but must first pre-fault its mapping, one 4 KiB page at a time:
// ~2-3 us per page on hosts whose hardware walks the guest page tables (bare
// metal, KVM with EPT/NPT: ~1.5 s per 2.6 GB), 7-20 us under a shadow-paging
// hypervisor (PVM: 5-13 s), where the kernel copy is the better trade.
//
// Internal header (src/workflows); not part of the public API. Thread-safety:
// FirstWriteMicrosecondsPerPage may be called from any thread (it maps, touches
// and unmaps its own memory).
#pragma once

namespace shardwire::workflows {

/// Microseconds of this thread's CPU time per 4 KiB page to map fresh private
/// anonymous memory (4 MiB, MADV_NOHUGEPAGE) and write one byte of each page, unmap
/// included; the lowest of three trials. CPU time, not wall time: engines and
/// trainers start together on few cores, and a probe that waits for a core must
/// not look slow (a shadow-paging hypervisor's fault shows up as the guest's CPU
/// time). Takes ~10 ms with cheap faults,
/// ~60-250 ms under shadow paging. Returns a large value (1e9) if mmap fails.
double FirstWriteMicrosecondsPerPage();

/// Per-page first-write cost (us) below which BufferMemory::kAuto gives engines
/// shared memory (trainers map it): measured 2.3-2.6 us on a KVM/EPT development
/// VM, 11-20 us under PVM.
inline constexpr double kCheapFirstWriteMicroseconds = 6.0;

}  // namespace shardwire::workflows
