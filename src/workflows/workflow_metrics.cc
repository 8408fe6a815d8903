// Workflow metrics (workflows/workflow_metrics.h).
#include "workflows/workflow_metrics.h"

namespace shardwire::sync {

Result<PublisherMetrics> PublisherMetrics::Make(MetricsRegistry* registry, const std::string& job, int rank) {
  PublisherMetrics m;
  if (registry == nullptr) return m;
  m.job_ = job;
  m.rank_ = std::to_string(rank);
  SW_ASSIGN_OR_RETURN(HistogramFamily * duration,
                      registry->AddHistogram("shardwire_sync_push_duration_seconds",
                                             "Seconds of successful WeightPublisher::Push calls, per trainer rank.",
                                             {"job", "trainer_rank"}, DurationBucketsSeconds()));
  SW_ASSIGN_OR_RETURN(GaugeFamily * version,
                      registry->AddGauge("shardwire_sync_pushed_version",
                                         "Last weight version a trainer rank pushed successfully.",
                                         {"job", "trainer_rank"}));
  SW_ASSIGN_OR_RETURN(m.missed_, registry->AddCounter("shardwire_sync_missed_versions_total",
                                                      "Versions an engine rank missed in a push, as the trainer "
                                                      "rank saw it, by reason (error code).",
                                                      {"job", "trainer_rank", "engine_rank", "reason"}));
  SW_ASSIGN_OR_RETURN(m.failures_, registry->AddCounter("shardwire_sync_push_failures_total",
                                                        "WeightPublisher::Push calls that failed, by error code.",
                                                        {"job", "trainer_rank", "code"}));
  m.duration_ = duration->Labels({m.job_, m.rank_});
  m.version_ = version->Labels({m.job_, m.rank_});
  return m;
}

void PublisherMetrics::Pushed(std::uint64_t version, double seconds) const {
  duration_.Observe(seconds);
  version_.Set(static_cast<double>(version));
}

void PublisherMetrics::Missed(int engine_rank, const Status& reason) const {
  if (missed_ == nullptr) return;
  missed_->Labels({job_, rank_, std::to_string(engine_rank), std::string(ErrorCodeName(reason.code()))}).Increment();
}

void PublisherMetrics::Failed(const Status& error) const {
  if (failures_ == nullptr) return;
  failures_->Labels({job_, rank_, std::string(ErrorCodeName(error.code()))}).Increment();
}

Result<SubscriberMetrics> SubscriberMetrics::Make(MetricsRegistry* registry, const std::string& job, int rank) {
  SubscriberMetrics m;
  if (registry == nullptr) return m;
  m.job_ = job;
  m.rank_ = std::to_string(rank);
  SW_ASSIGN_OR_RETURN(HistogramFamily * duration,
                      registry->AddHistogram("shardwire_sync_update_duration_seconds",
                                             "Seconds from BeginUpdate to the commit of a version, per engine rank.",
                                             {"job", "engine_rank"}, DurationBucketsSeconds()));
  SW_ASSIGN_OR_RETURN(GaugeFamily * version,
                      registry->AddGauge("shardwire_sync_committed_version",
                                         "Weight version an engine rank holds and serves (committed_version()).",
                                         {"job", "engine_rank"}));
  SW_ASSIGN_OR_RETURN(m.failures_, registry->AddCounter("shardwire_sync_update_failures_total",
                                                        "WaitForUpdate calls that failed (the engine rank missed "
                                                        "the version), by error code.",
                                                        {"job", "engine_rank", "code"}));
  m.duration_ = duration->Labels({m.job_, m.rank_});
  m.version_ = version->Labels({m.job_, m.rank_});
  return m;
}

void SubscriberMetrics::Committed(std::uint64_t version, double seconds) const {
  if (seconds >= 0) duration_.Observe(seconds);
  version_.Set(static_cast<double>(version));
}

void SubscriberMetrics::Failed(const Status& error) const {
  if (failures_ == nullptr) return;
  failures_->Labels({job_, rank_, std::string(ErrorCodeName(error.code()))}).Increment();
}

Result<LoaderMetrics> LoaderMetrics::Make(MetricsRegistry* registry, int rank) {
  LoaderMetrics m;
  if (registry == nullptr) return m;
  m.rank_ = std::to_string(rank);
  SW_ASSIGN_OR_RETURN(HistogramFamily * duration,
                      registry->AddHistogram("shardwire_load_duration_seconds",
                                             "Seconds of successful ModelLoader::Load calls, per rank.", {"rank"},
                                             DurationBucketsSeconds()));
  SW_ASSIGN_OR_RETURN(CounterFamily * bytes,
                      registry->AddCounter("shardwire_load_bytes_total",
                                           "Bytes committed by successful loads, by origin (sources: verified "
                                           "peer reads; disk: the checkpoint fallback).",
                                           {"rank", "origin"}));
  SW_ASSIGN_OR_RETURN(m.loads_, registry->AddCounter("shardwire_loads_total",
                                                     "ModelLoader::Load calls by result (ok, or the error code).",
                                                     {"rank", "result"}));
  m.duration_ = duration->Labels({m.rank_});
  m.from_sources_ = bytes->Labels({m.rank_, "sources"});
  m.from_disk_ = bytes->Labels({m.rank_, "disk"});
  return m;
}

void LoaderMetrics::Loaded(const Status& result, double seconds, std::uint64_t bytes_from_sources,
                           std::uint64_t bytes_from_disk) const {
  if (loads_ == nullptr) return;
  loads_->Labels({rank_, result.ok() ? std::string("ok") : std::string(ErrorCodeName(result.code()))}).Increment();
  if (!result.ok()) return;
  duration_.Observe(seconds);
  from_sources_.Increment(bytes_from_sources);
  from_disk_.Increment(bytes_from_disk);
}

}  // namespace shardwire::sync
