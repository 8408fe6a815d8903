// MetricsRegistry (shardwire/metrics.h): the exact text exposition format 0.0.4 for a known set
// of updates, label and help escaping, cumulative histogram buckets, registration errors, and
// concurrent updates through handles. The expected text is written out by hand from the format
// document (https://prometheus.io/docs/instrumenting/exposition_formats/), not produced by the code.
#include "shardwire/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

namespace shardwire {
namespace {

TEST(MetricsRegistry, RendersAKnownSetOfUpdatesExactly) {
  MetricsRegistry r;
  auto bytes = r.AddCounter("test_bytes_total", "Bytes moved.", {"peer", "op"});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  (*bytes)->Labels({"b", "WRITE"}).Increment(4096);
  (*bytes)->Labels({"a", "READ"}).Increment(10);
  (*bytes)->Labels({"a", "READ"}).Increment(5);
  auto version = r.AddGauge("test_version", "Committed version.", {});
  ASSERT_TRUE(version.ok());
  (*version)->Labels({}).Set(17);
  auto ratio = r.AddGauge("test_ratio", "A fraction.", {"k"});
  ASSERT_TRUE(ratio.ok());
  (*ratio)->Labels({"x"}).Set(0.25);
  (*ratio)->Labels({"x"}).Add(-1);
  auto h = r.AddHistogram("test_seconds", "Durations.", {"job"}, {0.1, 1, 2.5});
  ASSERT_TRUE(h.ok());
  const Histogram hj = (*h)->Labels({"j"});
  for (double v : {0.05, 0.1, 0.5, 3.0, 2.5}) hj.Observe(v);

  const std::string expected =
      "# HELP test_bytes_total Bytes moved.\n"
      "# TYPE test_bytes_total counter\n"
      "test_bytes_total{peer=\"a\",op=\"READ\"} 15\n"
      "test_bytes_total{peer=\"b\",op=\"WRITE\"} 4096\n"
      "# HELP test_ratio A fraction.\n"
      "# TYPE test_ratio gauge\n"
      "test_ratio{k=\"x\"} -0.75\n"
      "# HELP test_seconds Durations.\n"
      "# TYPE test_seconds histogram\n"
      "test_seconds_bucket{job=\"j\",le=\"0.1\"} 2\n"
      "test_seconds_bucket{job=\"j\",le=\"1\"} 3\n"
      "test_seconds_bucket{job=\"j\",le=\"2.5\"} 4\n"
      "test_seconds_bucket{job=\"j\",le=\"+Inf\"} 5\n"
      "test_seconds_sum{job=\"j\"} 6.15\n"
      "test_seconds_count{job=\"j\"} 5\n"
      "# HELP test_version Committed version.\n"
      "# TYPE test_version gauge\n"
      "test_version 17\n";
  EXPECT_EQ(r.Render(), expected);
  EXPECT_EQ(hj.count(), 5u);
  EXPECT_EQ((*bytes)->Labels({"a", "READ"}).value(), 15u);
}

TEST(MetricsRegistry, EscapesLabelValuesAndHelp) {
  MetricsRegistry r;
  auto c = r.AddCounter("esc_total", "Line one\nback\\slash \"quoted\"", {"path"});
  ASSERT_TRUE(c.ok());
  (*c)->Labels({"C:\\dir\n\"x\""}).Increment();
  // HELP escapes backslash and newline only; label values also the double quote.
  EXPECT_EQ(r.Render(),
            "# HELP esc_total Line one\\nback\\\\slash \"quoted\"\n"
            "# TYPE esc_total counter\n"
            "esc_total{path=\"C:\\\\dir\\n\\\"x\\\"\"} 1\n");
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST(MetricsRegistry, HistogramBucketsAreCumulativeAndCountEqualsInf) {
  MetricsRegistry r;
  auto h = r.AddHistogram("h_seconds", "h", {}, {1, 2, 3});
  ASSERT_TRUE(h.ok());
  const Histogram x = (*h)->Labels({});
  // Per bucket (non-cumulative): le=1: 3 (incl. the bound itself), le=2: 0, le=3: 2, +Inf: 1.
  for (double v : {0.0, 1.0, -4.0, 2.5, 3.0, 1e9}) x.Observe(v);
  x.Observe(std::nan(""));  // ignored
  const std::string text = r.Render();
  EXPECT_NE(text.find("h_seconds_bucket{le=\"1\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"2\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"3\"} 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"+Inf\"} 6\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_count 6\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_sum 1000000002.5\n"), std::string::npos) << text;
}

TEST(MetricsRegistry, RegistrationErrorsAreTyped) {
  MetricsRegistry r;
  EXPECT_EQ(r.AddCounter("1bad", "", {}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.AddCounter("bad-name", "", {}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.AddCounter("ok_total", "", {"__reserved"}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.AddCounter("ok_total", "", {"a", "a"}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.AddHistogram("h", "", {"le"}, {1}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.AddHistogram("h", "", {}, {2, 1}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.AddHistogram("h", "", {}, {1, INFINITY}).status().code(), ErrorCode::kInvalidArgument);
  auto a = r.AddCounter("same_total", "first", {"x"});
  auto b = r.AddCounter("same_total", "second", {"x"});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b) << "the same name, type and labels is the same family";
  EXPECT_EQ(r.AddGauge("same_total", "", {"x"}).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(r.AddCounter("same_total", "", {"y"}).status().code(), ErrorCode::kAlreadyExists);
  const auto wrong = (*a)->WithLabels({"1", "2"});
  EXPECT_EQ(wrong.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("same_total"), std::string::npos);
  EXPECT_FALSE(static_cast<bool>((*a)->Labels({})));  // a no-op handle, not a crash
  Counter none;
  none.Increment();  // no-op
  EXPECT_EQ(none.value(), 0u);
}

TEST(MetricsRegistry, CollectorsRenderAtScrapeTimeAndStopWhenReset) {
  MetricsRegistry r;
  int calls = 0;
  double ready = 2;
  auto handle = r.AddGaugeCollector("sources", "Sources by state.", {"state"}, [&]() -> std::vector<CollectedSample> {
    ++calls;
    return {{{"STALE"}, 1}, {{"READY"}, ready}, {{"a", "b"}, 9}};  // the last has the wrong arity: dropped
  });
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  EXPECT_EQ(r.Render(),
            "# HELP sources Sources by state.\n# TYPE sources gauge\nsources{state=\"READY\"} 2\nsources{state=\"STALE\"} 1\n");
  ready = 5;
  EXPECT_NE(r.Render().find("sources{state=\"READY\"} 5\n"), std::string::npos);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(r.AddGaugeCollector("sources", "", {"state"}, [] { return std::vector<CollectedSample>{}; })
                .status()
                .code(),
            ErrorCode::kAlreadyExists);
  handle->Reset();
  EXPECT_EQ(r.Render(), "");
  EXPECT_EQ(calls, 2);
}

TEST(MetricsRegistry, ConcurrentIncrementsThroughHandlesAreAllCounted) {
  MetricsRegistry r;
  auto c = r.AddCounter("n_total", "", {"t"});
  auto h = r.AddHistogram("v_seconds", "", {}, {0.5});
  ASSERT_TRUE(c.ok() && h.ok());
  constexpr int kThreads = 4, kPer = 100000;
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) {
    ts.emplace_back([&, i] {
      const Counter mine = (*c)->Labels({"shared"});
      const Histogram hist = (*h)->Labels({});
      for (int k = 0; k < kPer; ++k) {
        mine.Increment();
        hist.Observe(i % 2 == 0 ? 0.25 : 1.0);
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ((*c)->Labels({"shared"}).value(), std::uint64_t{kThreads} * kPer);
  const std::string text = r.Render();
  EXPECT_NE(text.find("v_seconds_bucket{le=\"0.5\"} 200000\n"), std::string::npos) << text;
  EXPECT_NE(text.find("v_seconds_count 400000\n"), std::string::npos) << text;
  EXPECT_NE(text.find("v_seconds_sum 250000\n"), std::string::npos) << text;
}

TEST(MetricsRegistry, FormatsValuesAsTheTextFormatDoes) {
  EXPECT_EQ(FormatMetricValue(3), "3");
  EXPECT_EQ(FormatMetricValue(-0.5), "-0.5");
  EXPECT_EQ(FormatMetricValue(1e-3), "0.001");
  EXPECT_EQ(FormatMetricValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatMetricValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
}

}  // namespace
}  // namespace shardwire
