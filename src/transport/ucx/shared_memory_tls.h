// Whether UCX will open its shared-memory transports, from the UCX_TLS setting: the UCX
// backend tunes their receive pools only then (UCX warns "invalid configuration" at every
// ucp_worker_create for a setting no opened transport reads, e.g. with UCX_TLS=tcp).
//
// Internal header (src/transport); not part of the public API.
#pragma once

namespace shardwire::transport::ucx {

/// True when the UCX_TLS value `ucx_tls` leaves a shared-memory transport of UCX's "mm"
/// family (posix, sysv) selected. Syntax of UCX_TLS (UCX 1.13 `ucp_context.c`, "TLS"): a
/// comma-separated list of transport and alias names, the whole list negated by a leading
/// '^'. The names that select shared memory: "all", the aliases "sm" and "shm", "mm",
/// "posix", "sysv". nullptr or "" (unset): UCX's default "all", so true. A negated list
/// leaves shared memory selected unless it names "sm", "shm" or "mm", or both "posix" and
/// "sysv". Only the environment's value is seen: a TLS set in a UCX configuration file is
/// not, and then the pool setting is applied as before (UCX may warn once per worker).
/// Pure function; thread-safe.
bool UcxTlsSelectsSharedMemory(const char* ucx_tls);

}  // namespace shardwire::transport::ucx
