// Workflow metrics (workflows/workflow_metrics.h).
#include "workflows/workflow_metrics.h"

namespace shardwire::workflows {

namespace {

// What a publisher and a subscriber both report, per rank: a duration histogram, a version gauge
// and failures by code, labelled (job, <rank_label>).
struct RankSeriesSpec {
  const char* rank_label;
  const char* duration;
  const char* duration_help;
  const char* version;
  const char* version_help;
  const char* failures;
  const char* failures_help;
};

Status MakeRankSeries(MetricsRegistry& registry, const RankSeriesSpec& spec, const std::string& job,
                      const std::string& rank, Histogram* duration, Gauge* version, CounterFamily** failures) {
  SW_ASSIGN_OR_RETURN(HistogramFamily * d, registry.AddHistogram(spec.duration, spec.duration_help,
                                                                 {"job", spec.rank_label}, DurationBucketsSeconds()));
  SW_ASSIGN_OR_RETURN(GaugeFamily * v, registry.AddGauge(spec.version, spec.version_help, {"job", spec.rank_label}));
  SW_ASSIGN_OR_RETURN(*failures, registry.AddCounter(spec.failures, spec.failures_help, {"job", spec.rank_label, "code"}));
  *duration = d->Labels({job, rank});
  *version = v->Labels({job, rank});
  return Status::Ok();
}

}  // namespace

Result<PublisherMetrics> PublisherMetrics::Make(MetricsRegistry* registry, const std::string& job, int rank) {
  PublisherMetrics m;
  if (registry == nullptr) return m;
  m.job_ = job;
  m.rank_ = std::to_string(rank);
  const RankSeriesSpec spec{"trainer_rank",
                            "shardwire_sync_push_duration_seconds",
                            "Seconds of successful WeightPublisher::Push calls, per trainer rank.",
                            "shardwire_sync_pushed_version",
                            "Last weight version a trainer rank pushed successfully.",
                            "shardwire_sync_push_failures_total",
                            "WeightPublisher::Push calls that failed, by error code."};
  SW_RETURN_IF_ERROR(MakeRankSeries(*registry, spec, m.job_, m.rank_, &m.duration_, &m.version_, &m.failures_));
  SW_ASSIGN_OR_RETURN(CounterFamily * pushed_bytes,
                      registry->AddCounter("shardwire_sync_pushed_bytes_total",
                                           "Bytes successful pushes wrote into engine ranks, per trainer rank, by "
                                           "the transport or copied into mapped engine buffers.",
                                           {"job", "trainer_rank"}));
  m.pushed_bytes_ = pushed_bytes->Labels({m.job_, m.rank_});
  SW_ASSIGN_OR_RETURN(m.missed_, registry->AddCounter("shardwire_sync_missed_versions_total",
                                                      "Versions an engine rank missed in a push, as the trainer "
                                                      "rank saw it, by reason (error code).",
                                                      {"job", "trainer_rank", "engine_rank", "reason"}));
  return m;
}

void PublisherMetrics::Pushed(std::uint64_t version, double seconds, std::uint64_t bytes) const {
  duration_.Observe(seconds);
  pushed_bytes_.Increment(bytes);
  version_.Set(static_cast<double>(version));
}

void PublisherMetrics::Missed(int engine_rank, const Status& reason) const {
  if (missed_ == nullptr) return;
  missed_->Labels({job_, rank_, std::to_string(engine_rank), std::string(ErrorCodeName(reason.code()))}).Increment();
}

void PublisherMetrics::Failed(const Status& error) const {
  if (failures_ != nullptr) failures_->Labels({job_, rank_, std::string(ErrorCodeName(error.code()))}).Increment();
}

Result<SubscriberMetrics> SubscriberMetrics::Make(MetricsRegistry* registry, const std::string& job, int rank) {
  SubscriberMetrics m;
  if (registry == nullptr) return m;
  m.job_ = job;
  m.rank_ = std::to_string(rank);
  const RankSeriesSpec spec{"engine_rank",
                            "shardwire_sync_update_duration_seconds",
                            "Seconds from BeginUpdate to the commit of a version, per engine rank.",
                            "shardwire_sync_committed_version",
                            "Weight version an engine rank holds and serves (committed_version()).",
                            "shardwire_sync_update_failures_total",
                            "WaitForUpdate calls that failed (the engine rank missed the version), by error code."};
  SW_RETURN_IF_ERROR(MakeRankSeries(*registry, spec, m.job_, m.rank_, &m.duration_, &m.version_, &m.failures_));
  return m;
}

void SubscriberMetrics::Committed(std::uint64_t version, double seconds) const {
  if (seconds >= 0) duration_.Observe(seconds);
  version_.Set(static_cast<double>(version));
}

void SubscriberMetrics::Failed(const Status& error) const {
  if (failures_ != nullptr) failures_->Labels({job_, rank_, std::string(ErrorCodeName(error.code()))}).Increment();
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
  SW_ASSIGN_OR_RETURN(GaugeFamily * instances,
                      registry->AddGauge("shardwire_load_source_instances",
                                         "Source instances the rank's current load reads from: usable ones found "
                                         "by its listings, less those that failed.",
                                         {"rank"}));
  m.duration_ = duration->Labels({m.rank_});
  m.source_instances_ = instances->Labels({m.rank_});
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

void LoaderMetrics::SourceInstances(std::size_t live) const { source_instances_.Set(static_cast<double>(live)); }

}  // namespace shardwire::workflows
