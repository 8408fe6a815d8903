// Metrics: counters, gauges and histograms with labels, rendered in the Prometheus
// text exposition format, version 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/,
// "Text-based format"): `# HELP` and `# TYPE` lines per family, one sample line per
// label set, histograms as cumulative `<name>_bucket{le="..."}` series plus `<name>_sum`
// and `<name>_count`, label values escaped (backslash, double quote, newline).
//
// A MetricsRegistry is a context object the caller creates and passes to the components
// that should report into it (AgentOptions::metrics, WeightSyncOptions::metrics,
// ModelLoaderOptions::metrics, ModelSourceOptions::metrics, CoordinatorServerOptions::metrics);
// there is no global registry. A null pointer there means "no metrics" and costs nothing but
// a pointer test. Serve a registry over HTTP with MetricsHttpServer (shardwire/metrics_http.h).
// The metric names Shardwire reports are listed in docs/metrics.md.
//
// Hot path: resolve a labelled series once (CounterFamily::WithLabels etc.: a mutex and a map
// lookup) and keep the returned handle; updating through a handle is one relaxed atomic
// read-modify-write (a histogram observation: a bucket search over at most 32 bounds plus
// two atomics), no lock. Series are never removed, so handles stay valid as long as the
// registry lives.
//
// Thread-safety: every method of every class here may be called concurrently from any
// thread. Render() sees each value atomically, but not all values at one instant (a
// histogram's _sum may lag its buckets by the observations in flight; its _count is computed
// from the buckets, so it always equals the +Inf bucket).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardwire/status.h"

namespace shardwire {

class MetricsRegistry;

/// One counter series: a monotonically increasing unsigned integer. A default-constructed
/// Counter is a no-op (so code can hold one whether or not metrics are enabled).
/// Copyable; valid while its registry lives.
class Counter {
 public:
  Counter() = default;
  /// Adds `n` (relaxed atomic add; wraps at 2^64). Thread-safe.
  void Increment(std::uint64_t n = 1) const {
    if (cell_ != nullptr) cell_->fetch_add(n, std::memory_order_relaxed);
  }
  /// Current value (0 for a no-op counter). Thread-safe.
  std::uint64_t value() const { return cell_ == nullptr ? 0 : cell_->load(std::memory_order_relaxed); }
  /// False for a default-constructed (no-op) counter.
  explicit operator bool() const { return cell_ != nullptr; }

 private:
  friend class CounterFamily;
  explicit Counter(std::atomic<std::uint64_t>* cell) : cell_(cell) {}
  std::atomic<std::uint64_t>* cell_ = nullptr;
};

/// One gauge series: a double that goes up and down. Default-constructed: a no-op.
/// Copyable; valid while its registry lives.
class Gauge {
 public:
  Gauge() = default;
  /// Sets the value (relaxed atomic store). Thread-safe.
  void Set(double v) const {
    if (cell_ != nullptr) cell_->store(v, std::memory_order_relaxed);
  }
  /// Adds `d` (may be negative; relaxed atomic compare-and-swap loop). Thread-safe.
  void Add(double d) const {
    if (cell_ != nullptr) cell_->fetch_add(d, std::memory_order_relaxed);
  }
  /// Current value (0 for a no-op gauge). Thread-safe.
  double value() const { return cell_ == nullptr ? 0 : cell_->load(std::memory_order_relaxed); }
  explicit operator bool() const { return cell_ != nullptr; }

 private:
  friend class GaugeFamily;
  explicit Gauge(std::atomic<double>* cell) : cell_(cell) {}
  std::atomic<double>* cell_ = nullptr;
};

/// The cells of one histogram series (internal to the registry; use Histogram).
struct HistogramCells {
  explicit HistogramCells(std::size_t bounds);
  const std::vector<double>* bounds = nullptr;   ///< finite upper bounds, ascending (the family's)
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets;  ///< per bound, non-cumulative; last: +Inf
  std::atomic<double> sum{0};
};

/// One histogram series: counts observations into buckets by upper bound (le), and their
/// sum. Default-constructed: a no-op. Copyable; valid while its registry lives.
class Histogram {
 public:
  Histogram() = default;
  /// Records one observation `v` (in the family's unit, e.g. seconds): the first bucket whose
  /// bound is >= v gets +1 (none: the +Inf bucket), the sum gets +v. NaN is ignored.
  /// Lock-free, thread-safe.
  void Observe(double v) const;
  /// Observations so far (sum over buckets; 0 for a no-op histogram). Thread-safe.
  std::uint64_t count() const;
  /// Sum of the observations so far. Thread-safe.
  double sum() const { return cells_ == nullptr ? 0 : cells_->sum.load(std::memory_order_relaxed); }
  explicit operator bool() const { return cells_ != nullptr; }

 private:
  friend class HistogramFamily;
  explicit Histogram(HistogramCells* cells) : cells_(cells) {}
  HistogramCells* cells_ = nullptr;
};

/// Label values of one series, in the order of the family's label names.
using LabelValues = std::vector<std::string>;

/// A counter family: one metric name, one help text, fixed label names; one Counter per
/// distinct label values. Owned by its MetricsRegistry. Thread-safe.
class CounterFamily {
 public:
  /// The series with these label values (created at 0 on first use). Errors:
  /// kInvalidArgument when the number of values differs from the family's label names
  /// (the message names the metric). Takes the family's mutex: call once, keep the handle.
  Result<Counter> WithLabels(const LabelValues& values);
  /// As WithLabels, but a wrong number of values is a bug: returns a no-op Counter
  /// and logs it (for call sites whose label count is fixed in code).
  Counter Labels(const LabelValues& values);
  struct Impl;
  explicit CounterFamily(std::unique_ptr<Impl> impl);
  ~CounterFamily();

 private:
  friend class MetricsRegistry;
  std::unique_ptr<Impl> impl_;
};

/// A gauge family (see CounterFamily). Thread-safe.
class GaugeFamily {
 public:
  /// As CounterFamily::WithLabels.
  Result<Gauge> WithLabels(const LabelValues& values);
  /// As CounterFamily::Labels.
  Gauge Labels(const LabelValues& values);
  struct Impl;
  explicit GaugeFamily(std::unique_ptr<Impl> impl);
  ~GaugeFamily();

 private:
  friend class MetricsRegistry;
  std::unique_ptr<Impl> impl_;
};

/// A histogram family (see CounterFamily); every series shares the family's bucket bounds.
/// Thread-safe.
class HistogramFamily {
 public:
  /// As CounterFamily::WithLabels.
  Result<Histogram> WithLabels(const LabelValues& values);
  /// As CounterFamily::Labels.
  Histogram Labels(const LabelValues& values);
  struct Impl;
  explicit HistogramFamily(std::unique_ptr<Impl> impl);
  ~HistogramFamily();

 private:
  friend class MetricsRegistry;
  std::unique_ptr<Impl> impl_;
};

/// Bucket upper bounds (seconds) for durations from 1 ms to 5 min: 0.001, 0.0025, 0.005,
/// 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300.
std::vector<double> DurationBucketsSeconds();

/// One sample a collector reports at render time: label values (in the family's label
/// order) and the value.
struct CollectedSample {
  LabelValues labels;
  double value = 0;
};

/// Unregisters its collector when destroyed (or reset). Move-only. Destroy it before the
/// objects the collector reads; after the destructor returns the collector is never
/// called again (a Render in progress is waited for).
class CollectorHandle {
 public:
  CollectorHandle() = default;
  CollectorHandle(CollectorHandle&& other) noexcept;
  CollectorHandle& operator=(CollectorHandle&& other) noexcept;
  CollectorHandle(const CollectorHandle&) = delete;
  CollectorHandle& operator=(const CollectorHandle&) = delete;
  ~CollectorHandle();
  /// Unregisters now (idempotent).
  void Reset();

 private:
  friend class MetricsRegistry;
  CollectorHandle(MetricsRegistry* registry, std::uint64_t id) : registry_(registry), id_(id) {}
  MetricsRegistry* registry_ = nullptr;
  std::uint64_t id_ = 0;
};

/// Owns metric families and renders them. Create one per process (or per component under
/// test), pass its address in the components' options, serve it with MetricsHttpServer.
/// Must outlive every component that reports into it. Not copyable or movable.
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  /// The counter family `name` (by convention ending in "_total"), creating it on first call.
  /// Registering a name again with the same type and label names returns the same family
  /// (several agents in one process share their families; `help` of the first call wins).
  /// Errors: kInvalidArgument for a name not matching [a-zA-Z_:][a-zA-Z0-9_:]*, a label name
  /// not matching [a-zA-Z_][a-zA-Z0-9_]*, starting with "__", or repeated; kAlreadyExists when
  /// `name` is registered with another type or other label names. The family lives as long as
  /// the registry.
  Result<CounterFamily*> AddCounter(const std::string& name, const std::string& help,
                                    std::vector<std::string> label_names);
  /// As AddCounter, for a gauge family.
  Result<GaugeFamily*> AddGauge(const std::string& name, const std::string& help,
                                std::vector<std::string> label_names);
  /// As AddCounter, for a histogram family with the given finite, strictly ascending bucket
  /// upper bounds (at most 32; the +Inf bucket is implicit). Errors as AddCounter, plus
  /// kInvalidArgument for bad bounds or a label named "le".
  Result<HistogramFamily*> AddHistogram(const std::string& name, const std::string& help,
                                        std::vector<std::string> label_names, std::vector<double> bounds);

  /// A gauge family whose samples `collect` computes at each Render (for values that live
  /// elsewhere, e.g. the coordinator's sources by state). `collect` runs on the rendering
  /// thread, under a registry mutex: it must not call back into this registry. Samples with
  /// the wrong number of labels are dropped. Errors as AddGauge (the name must not be used by
  /// any other family or collector).
  Result<CollectorHandle> AddGaugeCollector(const std::string& name, const std::string& help,
                                            std::vector<std::string> label_names,
                                            std::function<std::vector<CollectedSample>()> collect);

  /// Every family in the text exposition format 0.0.4, families sorted by name, series by
  /// label values; ends with a newline (empty registry: empty string). Thread-safe.
  std::string Render() const;

  /// The Content-Type of Render()'s output: "text/plain; version=0.0.4; charset=utf-8".
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

  struct Impl;

 private:
  friend class CollectorHandle;
  void RemoveCollector(std::uint64_t id);
  std::unique_ptr<Impl> impl_;
};

/// Escapes a label value for the text format: backslash -> \\, double quote -> \", newline -> \n.
std::string EscapeLabelValue(std::string_view value);

/// Formats a sample value as the text format does: integers without a decimal point
/// ("42"), others in the shortest form that reads back exactly ("0.25"), "+Inf", "-Inf", "NaN".
std::string FormatMetricValue(double v);

}  // namespace shardwire
