// XXH3 for bulk tensor bytes, through xxHash's run-time CPU dispatch.
//
// Debian's libxxhash (0.8.1, x86-64) is built for the x86-64 baseline, so its
// XXH3_64bits runs the SSE2 loop; the same library also exports
// XXH3_64bits_dispatch and XXH3_64bits_update_dispatch, which pick the AVX2 or
// AVX-512 loop the CPU has at run time (xxh_x86dispatch.h). The digests are the
// same on every path (the XXH3 specification, xxhash_spec.md); only the speed
// differs: over 256 MiB from memory AVX2 hashed at 15.4-17.4 GB/s, SSE2 at
// 11.5-12.1 GB/s, on a Zen 3 development VM (docs/benchmarks_history.md, "P2P load on a
// host with cheap page faults").
//
// Include this header instead of <xxhash.h> where whole shards, moves or
// blocks are hashed: on x86-64 its macros replace XXH3_64bits and
// XXH3_64bits_update with the dispatching functions; elsewhere it is
// <xxhash.h> alone. Small fixed-size hashes (metadata blobs, plan checksums)
// do not need it.
//
// Internal header (src/workflows); not part of the public API. Thread-safety:
// the functions are pure (the dispatch table is set up once, thread-safely, by
// the library).
#pragma once

#include <xxhash.h>

#if defined(__x86_64__) && __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h>
#endif
