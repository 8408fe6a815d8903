// Non-temporal ("streaming") copies: writing bytes that this thread will not read again soon
// (a mapped peer or engine buffer) without first reading each destination cache line
// (no read-for-ownership) and without evicting the cache.
//
// On x86-64 the middle of a copy is written with SSE2 `movntdq` (16-byte aligned stores,
// weakly ordered), the unaligned head and tail with plain stores; elsewhere StreamCopy is a
// memcpy. Why: a plain store to a line not in the cache reads it first, so a copy into memory
// nobody reads on this core moves 3 bytes over the memory bus per byte copied; glibc's memcpy
// streams only above ~3/4 of the shared cache. Measured on the Zen 3 development VM: plain
// copies into a mapped peer buffer 0.55-0.62x of a whole-buffer memcpy, streaming 0.95-1.01x
// (bench/streaming_copy_bench; docs/benchmarks_history.md).
//
// Internal header (src/core), usable from every layer; not part of the public API.
// Thread-safety: none needed (no state); the usual rules for the bytes themselves.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardwire {

/// Copies `length` bytes from `src` to `dst` (not overlapping) with streaming stores. The
/// stores are weakly ordered: call StreamFence() on the same thread before anything that
/// publishes the bytes (a flag, a message, a lock release). Copies shorter than 16 bytes are a
/// plain memcpy.
void StreamCopy(std::byte* dst, const std::byte* src, std::uint64_t length);

/// Copies shorter than this (bytes) gain nothing from streaming stores (a few cache lines that
/// may be read again soon): callers memcpy them.
inline constexpr std::uint64_t kMinStreamCopyBytes = 256;

/// Orders every earlier streaming store of this thread before its later stores (`sfence` on
/// x86-64; a no-op elsewhere, where StreamCopy is a memcpy).
void StreamFence();

}  // namespace shardwire
