// Rendezvous: how the processes of one Shardwire job find each other.
//
// Processes exchange small records through a shared key-value store: transport
// metadata blobs (a few KB each), status records and counters. A process Puts what
// it owns, Gets (blocking) what it needs from others, and uses atomic counters and
// Barrier to agree that everyone got that far.
//
// Prior art: torch.distributed's TCPStore (set / get-with-wait / add / barrier over a
// store hosted by one rank). This is an independent design, not its code or wire
// format.
//
// Rendezvous is an interface: CoordinatorClient (coordinator.h) talks to the gRPC
// coordinator (`shardwire serve`, or one embedded in a demo); InProcessRendezvous
// serves unit tests of higher layers.
//
// Common rules for every implementation:
//   - keys are 1..kMaxRendezvousKeyBytes bytes of any content; values are
//     0..kMaxRendezvousValueBytes bytes of any content (binary, zero bytes allowed);
//   - timeouts are in seconds, finite and >= 0, or +infinity for "wait forever";
//   - a counter made by Add is stored under its key as decimal ASCII text
//     ("42", "-7"), so Get/GetString of a counter key returns that text;
//   - every method is safe to call concurrently from any number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <condition_variable>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/status.h"

namespace shardwire {

/// Largest key accepted by any Rendezvous, in bytes (4 KiB).
inline constexpr std::size_t kMaxRendezvousKeyBytes = 4 * 1024;
/// Largest value accepted by any Rendezvous, in bytes (64 MiB).
inline constexpr std::size_t kMaxRendezvousValueBytes = 64 * 1024 * 1024;

/// A job-wide key-value store with blocking reads and atomic counters.
/// Thread-safety: implementations are thread-safe; one object may be shared by all
/// threads of a process, and concurrent blocking Gets do not block Puts.
class Rendezvous {
 public:
  virtual ~Rendezvous() = default;

  /// Stores `value` (bytes) under `key`, overwriting any previous value, and wakes
  /// every Get waiting for `key`.
  /// Errors: kInvalidArgument (empty or oversized key, oversized value);
  /// implementation-specific transport errors (see CoordinatorClient).
  virtual Status Put(const std::string& key, std::span<const std::byte> value) = 0;

  /// Returns the value (bytes) stored under `key`, blocking until some process Puts
  /// (or Adds) it or `timeout_s` seconds pass.
  /// Errors: kTimedOut naming the key when it did not appear in time;
  /// kInvalidArgument (bad key, negative or NaN timeout); transport errors.
  virtual Result<std::vector<std::byte>> Get(const std::string& key, double timeout_s) = 0;

  /// Atomically adds `delta` to the counter under `key` (a missing key counts as 0)
  /// and returns the new value. Add(key, 0) reads a counter without changing it.
  /// Errors: kInvalidArgument when `key` holds something that is not a counter, or
  /// the sum overflows int64; transport errors.
  virtual Result<std::int64_t> Add(const std::string& key, std::int64_t delta) = 0;
};

/// Blocks until all `world_size` ranks have called Barrier with the same `name`.
/// Each rank in [0, world_size) calls it once per name; use a distinct name for every
/// barrier (e.g. "load/step-17"). Uses keys under "shardwire/barrier/<name>/".
/// `timeout_s`: seconds this rank waits in total.
/// Errors: kTimedOut saying how many of how many ranks arrived;
/// kInvalidArgument (rank out of range, world_size < 1, a reused name or ranks
/// disagreeing on world_size, which shows as more arrivals than world_size);
/// errors of the underlying Rendezvous.
/// Thread-safety: as safe as `rz` (several threads may act as distinct ranks).
Status Barrier(Rendezvous& rz, const std::string& name, int rank, int world_size,
               double timeout_s);

/// Put of the bytes of `value` (any content, including '\0'). Errors as Put.
Status PutString(Rendezvous& rz, const std::string& key, std::string_view value);

/// Get returning the value as a std::string of the same bytes. Errors as Get.
Result<std::string> GetString(Rendezvous& rz, const std::string& key, double timeout_s);

/// A Rendezvous living in one process's memory (a map under a mutex, waiters on a
/// condition variable). For tests of higher layers and single-process jobs.
/// Same limits, counter encoding and error codes as CoordinatorClient; never
/// returns transport errors.
/// Thread-safety: fully thread-safe.
class InProcessRendezvous : public Rendezvous {
 public:
  InProcessRendezvous() = default;
  InProcessRendezvous(const InProcessRendezvous&) = delete;
  InProcessRendezvous& operator=(const InProcessRendezvous&) = delete;

  Status Put(const std::string& key, std::span<const std::byte> value) override;
  Result<std::vector<std::byte>> Get(const std::string& key, double timeout_s) override;
  Result<std::int64_t> Add(const std::string& key, std::int64_t delta) override;

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, std::vector<std::byte>, std::less<>> store_;
};

}  // namespace shardwire
