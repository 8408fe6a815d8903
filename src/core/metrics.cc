// MetricsRegistry and its families (shardwire/metrics.h): the Prometheus text exposition
// format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).
#include "shardwire/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <type_traits>
#include <variant>

namespace shardwire {

namespace {

enum class Kind { kCounter, kGauge, kHistogram, kCollector };

std::string_view KindName(Kind k) {
  switch (k) {
    case Kind::kCounter: return "counter";
    case Kind::kGauge: return "gauge";
    case Kind::kHistogram: return "histogram";
    case Kind::kCollector: return "gauge";
  }
  return "untyped";
}

bool ValidMetricName(std::string_view s) {
  if (s.empty()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    const bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

bool ValidLabelName(std::string_view s) {
  if (s.empty() || s.substr(0, 2) == "__") return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

// The text format's escapes: backslash and newline always, the double quote in label values.
std::string Escape(std::string_view text, bool quote) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view help) { return Escape(help, /*quote=*/false); }

// `{a="x",b="y"}` (plus an optional extra label, e.g. le), or "" with no labels.
std::string LabelSet(const std::vector<std::string>& names, const LabelValues& values,
                     std::string_view extra_name = {}, std::string_view extra_value = {}) {
  if (names.empty() && extra_name.empty()) return {};
  std::string out = "{";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    out += names[i];
    out += "=\"";
    out += EscapeLabelValue(values[i]);
    out += '"';
  }
  if (!extra_name.empty()) {
    if (!names.empty()) out += ',';
    out += extra_name;
    out += "=\"";
    out += extra_value;
    out += '"';
  }
  out += '}';
  return out;
}

// What every family shares: name, help, label names and the series by label values.
template <typename Cell>
struct Series {
  std::string name;
  std::string help;
  std::vector<std::string> label_names;
  mutable std::mutex mu;
  std::map<LabelValues, std::unique_ptr<Cell>> cells;

  // The cell of `values`, made by `make` on first use. Errors: a wrong number of values.
  template <typename Make>
  Result<Cell*> CellOf(const LabelValues& values, Make make) {
    if (values.size() != label_names.size()) {
      return InvalidArgument(fmt::format("metric {} takes {} label values ({}), got {}", name, label_names.size(),
                                         fmt::join(label_names, ", "), values.size()));
    }
    std::lock_guard<std::mutex> g(mu);
    auto& cell = cells[values];
    if (!cell) cell = make();
    return cell.get();
  }
  // Labels(): the handle, or a no-op one (reported on stderr) for a wrong number of values.
  template <typename Handle>
  Handle OrNoop(Result<Handle> handle, std::size_t got) const {
    if (handle.ok()) return *handle;
    std::fprintf(stderr, "shardwire metrics: %s takes %zu label values, got %zu (series not recorded)\n",
                 name.c_str(), label_names.size(), got);
    return Handle();
  }
};

// A family object with its name, help and label names set.
template <typename Family>
std::unique_ptr<Family> NewFamily(const std::string& name, const std::string& help,
                                  const std::vector<std::string>& label_names) {
  auto impl = std::make_unique<typename Family::Impl>();
  impl->name = name;
  impl->help = help;
  impl->label_names = label_names;
  return std::make_unique<Family>(std::move(impl));
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) { return Escape(value, /*quote=*/true); }

std::string FormatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<std::int64_t>(v));
  return fmt::format("{}", v);
}

std::vector<double> DurationBucketsSeconds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

// ---- Histogram --------------------------------------------------------------------------

HistogramCells::HistogramCells(std::size_t n_bounds) : buckets(new std::atomic<std::uint64_t>[n_bounds + 1]) {
  for (std::size_t i = 0; i <= n_bounds; ++i) buckets[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double v) const {
  if (cells_ == nullptr || std::isnan(v)) return;
  const auto& b = *cells_->bounds;
  const std::size_t i = static_cast<std::size_t>(std::lower_bound(b.begin(), b.end(), v) - b.begin());
  cells_->buckets[i].fetch_add(1, std::memory_order_relaxed);
  cells_->sum.fetch_add(v, std::memory_order_relaxed);
}

std::uint64_t Histogram::count() const {
  if (cells_ == nullptr) return 0;
  std::uint64_t n = 0;
  for (std::size_t i = 0; i <= cells_->bounds->size(); ++i) n += cells_->buckets[i].load(std::memory_order_relaxed);
  return n;
}

// ---- Families ---------------------------------------------------------------------------

struct CounterFamily::Impl : Series<std::atomic<std::uint64_t>> {};
struct GaugeFamily::Impl : Series<std::atomic<double>> {};
struct HistogramFamily::Impl : Series<HistogramCells> {
  std::vector<double> bounds;
};

CounterFamily::CounterFamily(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CounterFamily::~CounterFamily() = default;
GaugeFamily::GaugeFamily(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GaugeFamily::~GaugeFamily() = default;
HistogramFamily::HistogramFamily(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HistogramFamily::~HistogramFamily() = default;

Result<Counter> CounterFamily::WithLabels(const LabelValues& values) {
  SW_ASSIGN_OR_RETURN(auto* cell, impl_->CellOf(values, [] { return std::make_unique<std::atomic<std::uint64_t>>(0); }));
  return Counter(cell);
}
Counter CounterFamily::Labels(const LabelValues& values) { return impl_->OrNoop(WithLabels(values), values.size()); }

Result<Gauge> GaugeFamily::WithLabels(const LabelValues& values) {
  SW_ASSIGN_OR_RETURN(auto* cell, impl_->CellOf(values, [] { return std::make_unique<std::atomic<double>>(0.0); }));
  return Gauge(cell);
}
Gauge GaugeFamily::Labels(const LabelValues& values) { return impl_->OrNoop(WithLabels(values), values.size()); }

Result<Histogram> HistogramFamily::WithLabels(const LabelValues& values) {
  SW_ASSIGN_OR_RETURN(auto* cell, impl_->CellOf(values, [this] {
    auto c = std::make_unique<HistogramCells>(impl_->bounds.size());
    c->bounds = &impl_->bounds;
    return c;
  }));
  return Histogram(cell);
}
Histogram HistogramFamily::Labels(const LabelValues& values) {
  return impl_->OrNoop(WithLabels(values), values.size());
}

// ---- Registry ---------------------------------------------------------------------------

struct MetricsRegistry::Impl {
  struct Collector {
    std::uint64_t id = 0;
    std::string help;
    std::vector<std::string> label_names;
    std::function<std::vector<CollectedSample>()> collect;
  };
  struct Entry {
    Kind kind = Kind::kCounter;
    std::vector<std::string> label_names;
    std::unique_ptr<CounterFamily> counter;
    std::unique_ptr<GaugeFamily> gauge;
    std::unique_ptr<HistogramFamily> histogram;
    std::unique_ptr<Collector> collector;
  };
  // Guards `families` and serialises collectors (a CollectorHandle's destructor waits here).
  mutable std::mutex mu;
  std::map<std::string, Entry> families;
  std::uint64_t next_collector = 1;

  // Validates a registration; returns the existing entry of the same kind and labels, or null
  // when `name` is free.
  Result<Entry*> Check(Kind kind, const std::string& name, const std::vector<std::string>& labels) {
    if (!ValidMetricName(name)) {
      return InvalidArgument(fmt::format("metric name '{}' does not match [a-zA-Z_:][a-zA-Z0-9_:]*", name));
    }
    for (std::size_t i = 0; i < labels.size(); ++i) {
      if (!ValidLabelName(labels[i])) {
        return InvalidArgument(fmt::format(
            "metric {}: label name '{}' does not match [a-zA-Z_][a-zA-Z0-9_]* or starts with __", name, labels[i]));
      }
      if (kind == Kind::kHistogram && labels[i] == "le") {
        return InvalidArgument(fmt::format("histogram {}: the label name 'le' is reserved for buckets", name));
      }
      if (std::find(labels.begin(), labels.begin() + static_cast<std::ptrdiff_t>(i), labels[i]) !=
          labels.begin() + static_cast<std::ptrdiff_t>(i)) {
        return InvalidArgument(fmt::format("metric {}: label name '{}' is repeated", name, labels[i]));
      }
    }
    auto it = families.find(name);
    if (it == families.end()) return static_cast<Entry*>(nullptr);
    if (it->second.kind != kind || it->second.label_names != labels || kind == Kind::kCollector) {
      return AlreadyExists(fmt::format("metric {} is already registered as a {} with labels ({})", name,
                                       KindName(it->second.kind), fmt::join(it->second.label_names, ", ")));
    }
    return &it->second;
  }
};

MetricsRegistry::MetricsRegistry() : impl_(std::make_unique<Impl>()) {}
MetricsRegistry::~MetricsRegistry() = default;

Result<CounterFamily*> MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                                   std::vector<std::string> label_names) {
  std::lock_guard<std::mutex> g(impl_->mu);
  SW_ASSIGN_OR_RETURN(Impl::Entry * existing, impl_->Check(Kind::kCounter, name, label_names));
  if (existing != nullptr) return existing->counter.get();
  Impl::Entry& e = impl_->families[name];
  e.kind = Kind::kCounter;
  e.counter = NewFamily<CounterFamily>(name, help, label_names);
  e.label_names = std::move(label_names);
  return e.counter.get();
}

Result<GaugeFamily*> MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                               std::vector<std::string> label_names) {
  std::lock_guard<std::mutex> g(impl_->mu);
  SW_ASSIGN_OR_RETURN(Impl::Entry * existing, impl_->Check(Kind::kGauge, name, label_names));
  if (existing != nullptr) return existing->gauge.get();
  Impl::Entry& e = impl_->families[name];
  e.kind = Kind::kGauge;
  e.gauge = NewFamily<GaugeFamily>(name, help, label_names);
  e.label_names = std::move(label_names);
  return e.gauge.get();
}

Result<HistogramFamily*> MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                                       std::vector<std::string> label_names,
                                                       std::vector<double> bounds) {
  if (bounds.size() > 32) {
    return InvalidArgument(fmt::format("histogram {}: {} bucket bounds, at most 32", name, bounds.size()));
  }
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
      return InvalidArgument(fmt::format("histogram {}: bucket bounds must be finite and strictly ascending ({})",
                                         name, fmt::join(bounds, ", ")));
    }
  }
  std::lock_guard<std::mutex> g(impl_->mu);
  SW_ASSIGN_OR_RETURN(Impl::Entry * existing, impl_->Check(Kind::kHistogram, name, label_names));
  if (existing != nullptr) {
    if (existing->histogram->impl_->bounds != bounds) {
      return AlreadyExists(fmt::format("histogram {} is already registered with other bucket bounds", name));
    }
    return existing->histogram.get();
  }
  Impl::Entry& e = impl_->families[name];
  e.kind = Kind::kHistogram;
  e.histogram = NewFamily<HistogramFamily>(name, help, label_names);
  e.histogram->impl_->bounds = std::move(bounds);
  e.label_names = std::move(label_names);
  return e.histogram.get();
}

Result<CollectorHandle> MetricsRegistry::AddGaugeCollector(const std::string& name, const std::string& help,
                                                           std::vector<std::string> label_names,
                                                           std::function<std::vector<CollectedSample>()> collect) {
  if (!collect) return InvalidArgument(fmt::format("metric {}: the collector is empty", name));
  std::lock_guard<std::mutex> g(impl_->mu);
  SW_ASSIGN_OR_RETURN(Impl::Entry * existing, impl_->Check(Kind::kCollector, name, label_names));
  if (existing != nullptr) return AlreadyExists(fmt::format("metric {} is already registered", name));
  auto c = std::make_unique<Impl::Collector>();
  c->id = impl_->next_collector++;
  c->help = help;
  c->label_names = label_names;
  c->collect = std::move(collect);
  const std::uint64_t id = c->id;
  Impl::Entry& e = impl_->families[name];
  e.kind = Kind::kCollector;
  e.label_names = std::move(label_names);
  e.collector = std::move(c);
  return CollectorHandle(this, id);
}

void MetricsRegistry::RemoveCollector(std::uint64_t id) {
  std::lock_guard<std::mutex> g(impl_->mu);
  for (auto it = impl_->families.begin(); it != impl_->families.end(); ++it) {
    if (it->second.collector && it->second.collector->id == id) {
      impl_->families.erase(it);
      return;
    }
  }
}

namespace {
// HELP, TYPE and one line per series of a counter or gauge family.
template <typename Cell>
void RenderScalars(const Series<Cell>& f, std::string* out) {
  const bool counter = std::is_integral_v<decltype(std::declval<Cell&>().load())>;
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name, EscapeHelp(f.help), f.name, counter ? "counter" : "gauge");
  std::lock_guard<std::mutex> fg(f.mu);
  for (const auto& [labels, cell] : f.cells) {
    const auto v = cell->load(std::memory_order_relaxed);
    *out += fmt::format("{}{} {}\n", f.name, LabelSet(f.label_names, labels),
                        counter ? fmt::format("{}", v) : FormatMetricValue(static_cast<double>(v)));
  }
}
}  // namespace

std::string MetricsRegistry::Render() const {
  std::string out;
  std::lock_guard<std::mutex> g(impl_->mu);
  for (const auto& family : impl_->families) {
    const auto& name = family.first;  // named, not bound: the lambda captures them (clang 14)
    const auto& e = family.second;
    auto header = [&](const std::string& help) {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, EscapeHelp(help), name, KindName(e.kind));
    };
    switch (e.kind) {
      case Kind::kCounter: RenderScalars(*e.counter->impl_, &out); break;
      case Kind::kGauge: RenderScalars(*e.gauge->impl_, &out); break;
      case Kind::kHistogram: {
        const auto& f = *e.histogram->impl_;
        header(f.help);
        std::lock_guard<std::mutex> fg(f.mu);
        for (const auto& [labels, cells] : f.cells) {
          std::uint64_t cumulative = 0;
          for (std::size_t i = 0; i <= f.bounds.size(); ++i) {
            cumulative += cells->buckets[i].load(std::memory_order_relaxed);
            const std::string le = i < f.bounds.size() ? FormatMetricValue(f.bounds[i]) : "+Inf";
            out += fmt::format("{}_bucket{} {}\n", name, LabelSet(f.label_names, labels, "le", le), cumulative);
          }
          out += fmt::format("{}_sum{} {}\n", name, LabelSet(f.label_names, labels),
                             FormatMetricValue(cells->sum.load(std::memory_order_relaxed)));
          out += fmt::format("{}_count{} {}\n", name, LabelSet(f.label_names, labels), cumulative);
        }
        break;
      }
      case Kind::kCollector: {
        const auto& c = *e.collector;
        header(c.help);
        auto samples = c.collect();
        std::sort(samples.begin(), samples.end(),
                  [](const CollectedSample& a, const CollectedSample& b) { return a.labels < b.labels; });
        for (const auto& s : samples) {
          if (s.labels.size() != c.label_names.size()) continue;
          out += fmt::format("{}{} {}\n", name, LabelSet(c.label_names, s.labels), FormatMetricValue(s.value));
        }
        break;
      }
    }
  }
  return out;
}

// ---- CollectorHandle --------------------------------------------------------------------

CollectorHandle::CollectorHandle(CollectorHandle&& other) noexcept : registry_(other.registry_), id_(other.id_) {
  other.registry_ = nullptr;
}

CollectorHandle& CollectorHandle::operator=(CollectorHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    registry_ = other.registry_;
    id_ = other.id_;
    other.registry_ = nullptr;
  }
  return *this;
}

CollectorHandle::~CollectorHandle() { Reset(); }

void CollectorHandle::Reset() {
  if (registry_ != nullptr) registry_->RemoveCollector(id_);
  registry_ = nullptr;
}

}  // namespace shardwire
