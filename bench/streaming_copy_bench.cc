// bench/streaming_copy_bench: why a same-host push writes mapped engine buffers with
// streaming stores (issue 10 item 1; docs/benchmarks_history.md, "Streaming stores into mapped
// engine buffers"). One thread copies a 256 MiB source into a 256 MiB destination
// (both private memory, 2 MiB pages where the kernel grants them) in each of the ways a
// push can write, beside glibc's memcpy of the whole buffer measured in the same run
// (which streams copies this large: its non-temporal threshold is ~3/4 of the shared
// cache):
//   * memcpy in 1 MiB and 4 KiB pieces: plain stores, each destination line read for
//     ownership before it is written (what memcpy of a row or a shard does);
//   * a kernel copy (process_vm_writev into this process): page by page, plain stores,
//     what a trainer's WRITE into a private engine arena costs;
//   * transport::CopyRowsStreaming (SSE2 movntdq), whole and as 2 KiB rows 4 KiB
//     apart, beside transport::CopyRows of the same rows;
//   * half of every source row into a contiguous destination (what a row-parallel shard of
//     an FSDP trainer is to a TP engine), by memcpy per row and by kernel copy.
// Each figure is the best of 5 passes in thread CPU time (GB/s of bytes copied).
//
// Usage: streaming_copy_bench [MiB=256]
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include <fmt/format.h>

#include "core/thread_cpu_time.h"

#include "transport/kernel_copy.h"
#include "transport/private_arena.h"
#include "transport/strided_rows.h"

namespace {

using shardwire::transport::CopyRows;
using shardwire::transport::CopyRowsStreaming;

double BestGbps(std::size_t bytes, const std::function<void()>& f) {
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const double t = shardwire::ThreadCpuSeconds();
    f();
    best = std::min(best, shardwire::ThreadCpuSeconds() - t);
  }
  return static_cast<double>(bytes) / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t n = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 256) << 20;
  auto src_map = shardwire::transport::PrivateMapping::Map(n);
  auto dst_map = shardwire::transport::PrivateMapping::Map(n);
  if (!src_map.ok() || !dst_map.ok() || n < (8u << 20)) {
    fmt::print(stderr, "streaming_copy_bench: cannot map 2 x {} bytes (at least 8 MiB each)\n", n);
    return 1;
  }
  std::byte* src = src_map->data();
  std::byte* dst = dst_map->data();
  std::memset(src, 1, n);
  std::memset(dst, 0, n);
  fmt::print("streaming_copy_bench: {} MiB, one thread, best of 5 in thread CPU time; 2 MiB pages: {}\n", n >> 20,
             src_map->huge_pages() && dst_map->huge_pages() ? "yes" : "no");
  fmt::print("{:<58} {:>8} {:>10}\n", "copy", "GB/s", "x memcpy");
  const double ref = BestGbps(n, [&] { std::memcpy(dst, src, n); });
  auto row = [&](const char* what, double gbps) { fmt::print("{:<58} {:8.2f} {:10.2f}\n", what, gbps, gbps / ref); };
  row("memcpy, whole buffer (reference; glibc streams it)", ref);
  row("memcpy in 1 MiB pieces (plain stores)", BestGbps(n, [&] {
        for (std::size_t o = 0; o < n; o += 1u << 20) std::memcpy(dst + o, src + o, 1u << 20);
      }));
  row("memcpy in 4 KiB pieces (plain stores)", BestGbps(n, [&] {
        for (std::size_t o = 0; o < n; o += 4096) std::memcpy(dst + o, src + o, 4096);
      }));
  auto self = shardwire::transport::PeerProcess::Open(::getpid(), reinterpret_cast<std::uint64_t>(dst));
  if (self.ok()) {
    row("kernel copy, process_vm_writev into this process, whole",
        BestGbps(n, [&] { (void)self->WriteRows(src, n, reinterpret_cast<std::uint64_t>(dst), n, 1, n); }));
  } else {
    fmt::print("{:<58} {:>8}\n", "kernel copy (process_vm_writev)", "n/a");
  }
  row("CopyRowsStreaming, whole buffer", BestGbps(n, [&] { CopyRowsStreaming(dst, n, src, n, 1, n); }));
  const std::size_t rows = n / 4096;
  row("CopyRows, 2 KiB rows 4 KiB apart (memcpy per row)",
      BestGbps(rows * 2048, [&] { CopyRows(dst, 4096, src, 4096, rows, 2048); }));
  row("CopyRowsStreaming, 2 KiB rows 4 KiB apart",
      BestGbps(rows * 2048, [&] { CopyRowsStreaming(dst, 4096, src, 4096, rows, 2048); }));
  // A row-parallel shard as a push moves it (o_proj, down_proj of an FSDP trainer into a TP
  // engine): half of every source row, into a contiguous destination. Row lengths of TinyLlama's
  // o_proj (2,048 bf16 columns: 2 KiB halves of 4 KiB rows) and down_proj (5,632 columns: 5.5 KiB
  // halves of 11 KiB rows).
  for (const std::size_t half : {std::size_t{2048}, std::size_t{5632}}) {
    const std::size_t half_rows = n / (2 * half);
    const std::string kib = fmt::format("{:.1f} KiB", static_cast<double>(half) / 1024);
    row(fmt::format("memcpy per row, {} halves of rows -> contiguous", kib).c_str(),
        BestGbps(half_rows * half, [&] { CopyRows(dst, half, src, 2 * half, half_rows, half); }));
    if (self.ok()) {
      shardwire::Status copied;  // a failed copy prints no figure
      const double gbps = BestGbps(half_rows * half, [&] {
        if (copied.ok())
          copied = self->WriteRows(src, 2 * half, reinterpret_cast<std::uint64_t>(dst), half, half_rows, half);
      });
      if (copied.ok()) {
        row(fmt::format("kernel copy, {} halves of rows -> contiguous", kib).c_str(), gbps);
      } else {
        fmt::print("kernel copy, {} halves of rows: failed: {}\n", kib, copied.ToString());
      }
    }
  }
  // The rows' reference is the whole-buffer memcpy: a row copy moves half the bytes per
  // page, so its ratio is a rate ratio, not a time ratio.
  return 0;
}
