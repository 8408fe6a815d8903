// WeightSyncOptions::metrics across real processes over UCX: after kVersions pushes the trainer's
// push histogram counts every push, its pushed-version gauge is the last version and its bytes by
// peer add up to what Push reported moving; each engine rank (a child process, its own registry)
// checks its committed-version gauge and update histogram after every commit, and that the bytes
// it received were right (the oracle of weight_sync_fixture.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "shardwire/metrics.h"
#include "shardwire/weight_sync.h"
#include "workflows/weight_sync_fixture.h"

namespace shardwire {
namespace {

using namespace weight_sync_test;  // NOLINT: the fixture of this file

constexpr int kVersions = 3;

// Sum of the samples of `name` whose label set contains every string of `with`.
double SumOf(const std::string& text, const std::string& name, const std::vector<std::string>& with = {}) {
  std::istringstream in(text);
  std::string line;
  double sum = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line.rfind(name, 0) != 0) continue;
    const auto rest = line.substr(name.size());
    if (!rest.empty() && rest[0] != '{' && rest[0] != ' ') continue;  // another metric with this prefix
    bool all = true;
    for (const auto& w : with) all = all && line.find(w) != std::string::npos;
    if (all) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

int RunSubscriber(std::uint16_t port, int rank, const Layout& trainer, const Layout& engine) {
  auto rz = ConnectRendezvous(port);
  if (!rz.ok()) return 10;
  MetricsRegistry registry;
  WeightSyncOptions options{"tm", 20};
  options.metrics = &registry;
  auto sub = WeightSubscriber::Create(**rz, trainer, engine, rank, options);
  if (!sub.ok() || !(*sub)->Connect().ok()) return 11;
  const std::string r = "engine_rank=\"" + std::to_string(rank) + "\"";
  for (std::uint64_t v = 1; v <= kVersions; ++v) {
    if (!(*sub)->BeginUpdate(v).ok()) return 12;
    if (!(*sub)->WaitForUpdate(v).ok()) return 13;
    if (Walk(engine, rank, (*sub)->weights(), v, true) != 0) return 15;
    const std::string text = registry.Render();
    if (SumOf(text, "shardwire_sync_committed_version", {r}) != static_cast<double>(v)) return 20;
    if (SumOf(text, "shardwire_sync_update_duration_seconds_count", {r}) != static_cast<double>(v)) return 21;
    if (SumOf(text, "shardwire_sync_update_failures_total") != 0) return 22;
  }
  return 0;
}

TEST(WeightSyncMetrics, PushesVersionsAndBytesByPeerAreCounted) {
  const Layout trainer = MakeFsdpLayout(Tensors(), 1).value();
  const Layout engine = MakeTpLayout(Tensors(), {0, 0, 1, -1}, 2, 1).value();
  std::vector<pid_t> children;
  std::vector<int> port_pipes;
  for (int r = 0; r < engine.world_size(); ++r) {
    int fd = -1;
    const pid_t pid = ForkWithPort(&fd, r, [&](std::uint16_t p) { return RunSubscriber(p, r, trainer, engine); });
    ASSERT_GE(pid, 0);
    children.push_back(pid);
    port_pipes.push_back(fd);
  }
  auto server = ServeChildren(port_pipes);
  ASSERT_NE(server, nullptr);
  auto rz = ConnectRendezvous(static_cast<std::uint16_t>(server->port()));
  ASSERT_TRUE(rz.ok());
  MetricsRegistry registry;
  WeightSyncOptions options{"tm", 20};
  options.metrics = &registry;
  auto pub = WeightPublisher::Create(**rz, trainer, engine, 0, options);
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  ASSERT_TRUE((*pub)->Connect().ok());
  std::uint64_t pushed_bytes = 0;
  std::uint64_t copied_bytes = 0;  // into engine buffers mapped into this process (same-host shared memory)
  for (std::uint64_t v = 1; v <= kVersions; ++v) {
    Walk(trainer, 0, (*pub)->weights(), v, false);
    auto stats = (*pub)->Push(v);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    ASSERT_TRUE(stats->missed.empty());
    pushed_bytes += stats->bytes;
    copied_bytes += stats->copied_bytes;
  }
  for (pid_t pid : children) EXPECT_EQ(WaitChild(pid), 0) << "an engine rank's check failed (exit code)";
  const std::string text = registry.Render();
  EXPECT_EQ(SumOf(text, "shardwire_sync_push_duration_seconds_count", {"trainer_rank=\"0\""}), kVersions) << text;
  EXPECT_EQ(SumOf(text, "shardwire_sync_pushed_version", {"job=\"tm\"", "trainer_rank=\"0\""}), kVersions) << text;
  EXPECT_EQ(SumOf(text, "shardwire_sync_missed_versions_total"), 0) << text;
  EXPECT_GT(pushed_bytes, 0u);
  EXPECT_EQ(SumOf(text, "shardwire_sync_pushed_bytes_total", {"job=\"tm\"", "trainer_rank=\"0\""}),
            static_cast<double>(pushed_bytes))
      << text;
  // Whatever the trainer did not copy into mapped engine buffers itself went through the
  // transport (which path is the host's: BufferMemory::kAuto, first_touch_probe.h).
  EXPECT_EQ(SumOf(text, "shardwire_transport_bytes_total", {"agent=\"tm/trainer/0\"", "op=\"WRITE\""}),
            static_cast<double>(pushed_bytes - copied_bytes))
      << text;
}

}  // namespace
}  // namespace shardwire
