// Internal to the workflows: what WeightPublisher / WeightSubscriber (WeightSyncOptions::metrics)
// and ModelLoader (ModelLoaderOptions::metrics) report (names, types and labels: docs/metrics.md).
// Every series is resolved once, when the rank is created; recording is a few relaxed atomics.
// Without a registry every handle is a no-op.
#pragma once

#include <map>
#include <string>

#include "shardwire/metrics.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

/// One trainer rank's series (label job, trainer_rank).
class PublisherMetrics {
 public:
  /// Errors: a name clash in `registry` (kAlreadyExists).
  static Result<PublisherMetrics> Make(MetricsRegistry* registry, const std::string& job, int rank);
  /// A push of `version` succeeded after `seconds` (whole Push call), writing `bytes` (PushStats::bytes:
  /// by the transport or copied into mapped engine buffers, whichever moved them).
  void Pushed(std::uint64_t version, double seconds, std::uint64_t bytes) const;
  /// The push missed `engine_rank` because of `reason`.
  void Missed(int engine_rank, const Status& reason) const;
  /// The Push call failed with `error`.
  void Failed(const Status& error) const;

 private:
  Histogram duration_;
  Gauge version_;
  Counter pushed_bytes_;
  CounterFamily* missed_ = nullptr;
  CounterFamily* failures_ = nullptr;
  std::string job_, rank_;
};

/// One engine rank's series (label job, engine_rank).
class SubscriberMetrics {
 public:
  static Result<SubscriberMetrics> Make(MetricsRegistry* registry, const std::string& job, int rank);
  /// `version` committed (WaitForUpdate after `seconds` since BeginUpdate; AdoptVersion: seconds < 0,
  /// no duration recorded).
  void Committed(std::uint64_t version, double seconds) const;
  /// WaitForUpdate failed with `error` (the version is missed).
  void Failed(const Status& error) const;

 private:
  Histogram duration_;
  Gauge version_;
  CounterFamily* failures_ = nullptr;
  std::string job_, rank_;
};

/// One loader rank's series (label rank).
class LoaderMetrics {
 public:
  static Result<LoaderMetrics> Make(MetricsRegistry* registry, int rank);
  /// A Load call ended with `result` after `seconds`; on success with these byte counts.
  void Loaded(const Status& result, double seconds, std::uint64_t bytes_from_sources,
              std::uint64_t bytes_from_disk) const;
  /// The current load reads from `live` source instances (set after each listing and each
  /// instance failure).
  void SourceInstances(std::size_t live) const;

 private:
  Histogram duration_;
  Gauge source_instances_;
  Counter from_sources_, from_disk_;
  CounterFamily* loads_ = nullptr;
  std::string rank_;
};

}  // namespace shardwire::workflows
