// P2P model loading in one process: sources and loaders with their own agents, a
// fake registry. Every load is compared byte for byte with the rank's shards read
// independently from the checkpoint (LoadShardsFromCheckpoint).
#include "shardwire/model_loading.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <xxhash.h>

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "mapping_permissions.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/checkpoint_model.h"
#include "shardwire/metrics.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/shard_io.h"
#include "transport/inproc/inproc_factory.h"
#include "transport/metadata_blob.h"
#include "workflows/fake_source_registry.h"
#include "workflows/p2p_messages.h"

namespace shardwire {
namespace {

namespace fs = std::filesystem;
using testing::FakeSourceRegistry;

// Llama-shaped (GQA, row- and column-parallel, vocab) with 2 layers; dims divisible by 8.
constexpr const char* kLlama = R"({"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 256, "vocab_size": 512,
    "torch_dtype": "bfloat16"})";

ModelSourceOptions Liar() {
  ModelSourceOptions o;
  o.test_lie_about_digests = true;
  return o;
}

// A source whose buffer stays writable after Create (ModelSourceOptions::read_only_buffer
// false), so that a test can change its bytes after commit; every part's block is then
// checked, as for Serve.
ModelSourceOptions Writable() {
  ModelSourceOptions o;
  o.read_only_buffer = false;
  return o;
}

ModelSourceOptions Capped(double bytes_per_s) {
  ModelSourceOptions o;
  o.bandwidth_bytes_per_s = bytes_per_s;
  return o;
}

class ModelLoadingTest : public ::testing::Test {
 protected:
  // An agent of its own that speaks the P2P protocol by hand to the one READY source (its
  // metadata imported as `peer`): the tests of what a source does with odd requests.
  struct RawLoader {
    std::unique_ptr<Agent> agent;
    std::string peer;
  };
  std::optional<workflows::P2pMessage> GrantBehindADeadLoader(bool dead_queues_more);
  Result<RawLoader> RawLoaderOfTheOnlySource(const std::string& name = "raw-loader") {
    SW_ASSIGN_OR_RETURN(const auto records, registry_.ListSources("", SourceState::kReady));
    if (records.size() != 1) return Internal(fmt::format("{} READY sources, expected 1", records.size()));
    RawLoader raw;
    SW_ASSIGN_OR_RETURN(raw.agent, Agent::Create({.name = name}));
    SW_ASSIGN_OR_RETURN(raw.peer, raw.agent->ImportMetadata(records.front().metadata));
    return raw;
  }
  virtual const char* Config() const { return kLlama; }
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("sw_p2p_{}_{}", ::getpid(), counter_++);
    auto config = ParseModelConfig(Config(), "test");
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    auto model = DescribeModel(*config);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    model_ = *model;
    ASSERT_TRUE(GenerateCheckpointDirectory(model_, dir_.string(), {.seed = 7}).ok());
    auto ckpt = Checkpoint::Open(dir_.string());
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    checkpoint_.emplace(std::move(*ckpt));
    auto id = MakeModelIdentity(model_, "rev-test");
    ASSERT_TRUE(id.ok());
    identity_ = *id;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // A serving instance "a-bad" (tp=2) whose rank 0 bytes change after it committed its
  // content, beside a healthy "b-good" (tp=2); STALE marks then stick (SetStickyStale).
  std::pair<std::vector<std::unique_ptr<ModelSource>>, std::vector<std::unique_ptr<ModelSource>>> BadAndGoodSeeds() {
    auto bad = Seed("a-bad", "tp=2", Writable());
    auto good = Seed("b-good", "tp=2");
    registry_.SetStickyStale(true);
    if (!bad.empty()) {
      auto buf = bad[0]->buffer();
      for (std::size_t i = 0; i < buf.size(); i += 4096) buf[i] ^= std::byte{0x5a};
    }
    return {std::move(bad), std::move(good)};
  }

  // Starts every rank of a serving instance, filled from the checkpoint.
  std::vector<std::unique_ptr<ModelSource>> Seed(const std::string& instance, const std::string& layout,
                                                 ModelSourceOptions base = {}) {
    std::vector<std::unique_ptr<ModelSource>> ranks;
    auto l = MakeLayoutFromString(model_, layout);
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    for (int r = 0; r < l->world_size(); ++r) {
      ModelSourceOptions o = base;
      o.instance_id = instance;
      o.layout = layout;
      o.rank = r;
      auto s = ModelSource::Create(registry_, model_, identity_, o, [&](std::span<std::byte> buf) {
        return LoadShardsFromCheckpoint(*checkpoint_, *l, r, buf);
      });
      EXPECT_TRUE(s.ok()) << s.status().ToString();
      if (s.ok()) ranks.push_back(std::move(*s));
    }
    return ranks;
  }

  ModelLoaderOptions LoaderOptions(const std::string& instance, const std::string& layout, int rank) {
    ModelLoaderOptions o;
    o.instance_id = instance;
    o.layout = layout;
    o.rank = rank;
    o.revision = "rev-test";
    // No test here stalls a source: long enough that no healthy in-process source under TSan on
    // a loaded CI machine is taken for a stalled one.
    o.stall_timeout_s = 20;
    o.move_bytes = 16 << 10;  // many moves, so failures hit the middle of a load
    return o;
  }

  // The independent oracle: the rank's shards straight from the checkpoint.
  void ExpectEqualsCheckpoint(const ModelLoader& loader, int rank) {
    std::vector<std::byte> expected(loader.buffer().size());
    ASSERT_TRUE(LoadShardsFromCheckpoint(*checkpoint_, loader.layout(), rank, expected).ok());
    ASSERT_EQ(expected.size(), loader.buffer().size());
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), loader.buffer().begin())) << "rank " << rank;
  }

  // Loads every rank of `layout` and checks them.
  std::vector<LoadReport> LoadAll(const std::string& instance, const std::string& layout,
                                  const std::function<void(ModelLoaderOptions&)>& tweak = {}) {
    std::vector<LoadReport> reports;
    auto l = MakeLayoutFromString(model_, layout);
    for (int r = 0; r < l->world_size(); ++r) {
      ModelLoaderOptions o = LoaderOptions(instance, layout, r);
      if (tweak) tweak(o);
      auto loader = ModelLoader::Create(registry_, model_, o);
      EXPECT_TRUE(loader.ok()) << loader.status().ToString();
      auto report = (*loader)->Load();
      EXPECT_TRUE(report.ok()) << report.status().ToString();
      if (!report.ok()) continue;
      EXPECT_TRUE((*loader)->loaded());
      ExpectEqualsCheckpoint(**loader, r);
      reports.push_back(*report);
    }
    return reports;
  }

  static inline int counter_ = 0;
  fs::path dir_;
  ModelDescription model_;
  std::optional<Checkpoint> checkpoint_;
  ModelIdentity identity_;
  FakeSourceRegistry registry_;
};

TEST_F(ModelLoadingTest, Tp2SourceToTp4Tp1Tp8) {
  auto seed = Seed("seed", "tp=2");
  for (const char* layout : {"tp=4", "tp=1", "tp=8"}) {
    for (const LoadReport& r : LoadAll(std::string("new-") + layout, layout)) {
      EXPECT_EQ(r.bytes_from_disk, 0u);
      EXPECT_EQ(r.bytes_from_sources, r.bytes_per_instance.at("seed"));
      EXPECT_GT(r.moves, 0u);
      EXPECT_TRUE(r.failed.empty());
    }
  }
}

TEST_F(ModelLoadingTest, Tp4ToTp2AndTp1Source) {
  auto a = Seed("a-tp4", "tp=4");
  LoadAll("new-tp2", "tp=2");
  a.clear();
  auto b = Seed("b-tp1", "tp=1");
  LoadAll("new-tp4", "tp=4");
}

TEST_F(ModelLoadingTest, ReadsAreSpreadOverEveryInstanceWhateverItsLayout) {
  auto a = Seed("a", "tp=2");
  auto b = Seed("b", "tp=4");
  auto c = Seed("c", "tp=1");
  for (const LoadReport& r : LoadAll("new", "tp=2")) {
    ASSERT_EQ(r.bytes_per_instance.size(), 3u);
    for (const auto& [inst, bytes] : r.bytes_per_instance) {
      // Even split: each instance gives a third (+- one byte, runs are not cut finer).
      EXPECT_NEAR(static_cast<double>(bytes), static_cast<double>(r.bytes_from_sources) / 3, 2.0) << inst;
    }
  }
}

TEST_F(ModelLoadingTest, LoadedInstanceBecomesASource) {
  auto seed = Seed("seed", "tp=2");
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("second", "tp=1", 0));
  ASSERT_TRUE(loader.ok());
  ASSERT_TRUE((*loader)->Load().ok());
  auto second = (*loader)->BecomeSource();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_FALSE((*loader)->loaded());
  seed.clear();  // only the loaded instance serves now
  for (const LoadReport& r : LoadAll("third", "tp=4")) {
    EXPECT_EQ(r.bytes_per_instance.size(), 1u);
    EXPECT_EQ(r.bytes_per_instance.count("second"), 1u);
  }
}

// A BecomeSource that fails (a bad option; the coordinator unreachable) leaves the committed
// load with the loader, byte for byte, and a later BecomeSource serves it.
TEST_F(ModelLoadingTest, ABecomeSourceThatFailsKeepsTheLoadedBuffer) {
  auto seed = Seed("seed", "tp=2");
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("second", "tp=1", 0));
  ASSERT_TRUE(loader.ok());
  ASSERT_TRUE((*loader)->Load().ok());
  for (auto [interval_s, cap] : {std::pair{0.0, 0.0}, std::pair{1e10, 0.0},  // a wait that overflowed its clock
                                 std::pair{1.0, std::numeric_limits<double>::infinity()}}) {
    ModelSourceOptions bad;
    bad.heartbeat_interval_s = interval_s;
    bad.bandwidth_bytes_per_s = cap;
    auto refused = (*loader)->BecomeSource(bad);
    EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument) << interval_s << " " << cap;
  }
  ASSERT_TRUE((*loader)->loaded());
  ExpectEqualsCheckpoint(**loader, 0);
  registry_.SetRegisterError(Unavailable("coordinator unreachable (test)"));
  auto unregistered = (*loader)->BecomeSource();
  EXPECT_EQ(unregistered.status().code(), ErrorCode::kUnavailable) << unregistered.status().ToString();
  ASSERT_TRUE((*loader)->loaded());
  ExpectEqualsCheckpoint(**loader, 0);
  registry_.SetRegisterError(Status::Ok());
  auto second = (*loader)->BecomeSource();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  seed.clear();  // only the loaded instance serves now
  for (const LoadReport& r : LoadAll("third", "tp=2")) EXPECT_EQ(r.bytes_per_instance.count("second"), 1u);
}

// Serve over a caller's span longer than the rank's buffer registers only the rank's bytes with
// the transport: the region a loader can read (the registered blob's) ends where the rank's
// buffer ends, and a loader loads the rank byte for byte.
TEST_F(ModelLoadingTest, ServeRegistersOnlyTheRanksBytesOfTheCallersSpan) {
  auto l = MakeLayoutFromString(model_, "tp=1");
  ASSERT_TRUE(l.ok());
  const std::uint64_t bytes = l->rank(0).buffer_bytes;
  std::vector<std::byte> span(bytes + (1 << 20), std::byte{0x77});  // 1 MiB the caller keeps private
  ASSERT_TRUE(LoadShardsFromCheckpoint(*checkpoint_, *l, 0, std::span(span).first(bytes)).ok());
  ModelSourceOptions o;
  o.instance_id = "served";
  o.layout = "tp=1";
  auto source = ModelSource::Serve(registry_, model_, identity_, o, span);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  const auto records = registry_.All();
  ASSERT_EQ(records.size(), 1u);
  auto blob = transport::DecodeAgentMetadata(records[0].metadata);
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  ASSERT_EQ(blob->regions.size(), 1u);
  EXPECT_EQ(blob->regions[0].base, reinterpret_cast<std::uintptr_t>(span.data()));
  EXPECT_EQ(blob->regions[0].length, bytes) << "the caller's whole span was registered";
  for (const LoadReport& r : LoadAll("new", "tp=1")) EXPECT_EQ(r.bytes_per_instance.at("served"), r.bytes_from_sources);
}

// A registration the coordinator stored but whose reply was lost (kUnavailable / kTimedOut to
// the caller) fails Create and is deregistered, so no loader lists a source that never served;
// with shutdown_timeout_s = 0 (no deregistration asked for) the record is left to its lease.
TEST_F(ModelLoadingTest, ARegistrationWhoseReplyWasLostLeavesNoRecord) {
  auto l = MakeLayoutFromString(model_, "tp=1");
  ASSERT_TRUE(l.ok());
  auto create = [&](double shutdown_timeout_s) {
    ModelSourceOptions o;
    o.instance_id = "lost-reply";
    o.layout = "tp=1";
    o.shutdown_timeout_s = shutdown_timeout_s;
    return ModelSource::Create(registry_, model_, identity_, o, [&](std::span<std::byte> buf) {
      return LoadShardsFromCheckpoint(*checkpoint_, *l, 0, buf);
    });
  };
  for (const Status& lost : {Unavailable("reply lost (test)"), TimedOut("reply lost (test)")}) {
    registry_.SetLostRegisterReply(lost);
    const int before = registry_.deregistrations();
    auto failed = create(2.0);
    EXPECT_EQ(failed.status().code(), lost.code()) << failed.status().ToString();
    EXPECT_TRUE(registry_.All().empty()) << "an orphan record stayed listed after " << lost.ToString();
    EXPECT_EQ(registry_.deregistrations(), before + 1);
  }
  auto kept = create(0);
  EXPECT_EQ(kept.status().code(), ErrorCode::kTimedOut);
  EXPECT_EQ(registry_.All().size(), 1u) << "shutdown_timeout_s = 0 asks for no deregistration";
  registry_.Forget();
  registry_.SetLostRegisterReply(Status::Ok());
  auto served = create(2.0);
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  EXPECT_EQ(registry_.All().size(), 1u);
}

// An instance listed while only some of its ranks are READY (they register one after another,
// each after hashing its buffer) is used once a later listing finds it whole: rank 1 of "b-late"
// turns READY right after the loader's first listing, while a slow seed serves.
TEST_F(ModelLoadingTest, AnInstanceListedHalfRegisteredIsUsedOnceWhole) {
  auto slow = Seed("a-slow", "tp=1", Capped(1e6));
  auto late = Seed("b-late", "tp=2");
  registry_.SetStickyStale(true);  // no heartbeat makes rank 1 READY before the hook does
  registry_.Edit("b-late", [](SourceRecord& r) {
    if (r.rank == 1) r.state = SourceState::kStale;
  });
  std::atomic<int> listings{0};
  registry_.SetAfterList([&] {
    if (listings++ == 0) registry_.Edit("b-late", [](SourceRecord& r) { r.state = SourceState::kReady; });
  });
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=1", 0));
  ASSERT_TRUE(loader.ok());
  auto report = (*loader)->Load();
  registry_.SetAfterList({});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_GT(report->bytes_per_instance["b-late"], 0u) << "the instance found whole at a re-listing was not used";
  for (const std::string& why : report->skipped) EXPECT_FALSE(why.starts_with("b-late")) << why;
  ExpectEqualsCheckpoint(**loader, 0);
}

// A mismatched instance found by a re-listing, while transfers run, is skipped without asking
// it for its fingerprint inputs (a wait of up to stall_timeout_s inside the transfer loop, no
// move tested meanwhile); the first listing, before any transfer, still asks (the test above).
TEST_F(ModelLoadingTest, AMismatchFoundWhileLoadingIsSkippedWithoutAskingTheSource) {
  auto slow = Seed("a-slow", "tp=1", Capped(1e6));
  auto liar = Seed("b-liar", "tp=2");
  registry_.SetStickyStale(true);
  registry_.Edit("b-liar", [](SourceRecord& r) {
    r.layout = "tp=4";  // holds tp=2 shards: its fingerprint is the tp=2 one
    r.world_size = 2;
    r.state = SourceState::kStale;  // not in the first listing
  });
  std::atomic<int> listings{0};
  registry_.SetAfterList([&] {
    if (listings++ == 0) registry_.Edit("b-liar", [](SourceRecord& r) { r.state = SourceState::kReady; });
  });
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=1", 0));
  ASSERT_TRUE(loader.ok());
  auto report = (*loader)->Load();
  registry_.SetAfterList({});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ExpectEqualsCheckpoint(**loader, 0);
  ASSERT_GE(listings.load(), 2) << "no re-listing happened during the load";
  std::vector<std::string> liar_skips;
  for (const std::string& why : report->skipped)
    if (why.starts_with("b-liar")) liar_skips.push_back(why);
  ASSERT_EQ(liar_skips.size(), 1u) << fmt::format("{}", fmt::join(report->skipped, " | "));
  EXPECT_NE(liar_skips[0].find("layout mismatch"), std::string::npos) << liar_skips[0];
  EXPECT_NE(liar_skips[0].find("found while loading"), std::string::npos)
      << "the source was asked for its fingerprint inputs mid-load: " << liar_skips[0];
  EXPECT_EQ(report->bytes_per_instance.count("b-liar"), 0u);
}

TEST_F(ModelLoadingTest, FingerprintMismatchSkipsInstanceWithoutMarkingItStale) {
  auto liar = Seed("a-liar", "tp=2");
  auto good = Seed("b-good", "tp=4");
  // The liar claims tp=4 but holds tp=2 shards (its fingerprint is the tp=2 one).
  registry_.Edit("a-liar", [](SourceRecord& r) {
    r.layout = "tp=4";
    r.world_size = 2;
  });
  registry_.SetStickyStale(true);
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 1));
  ASSERT_TRUE(loader.ok());
  auto report = (*loader)->Load();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ExpectEqualsCheckpoint(**loader, 1);
  EXPECT_EQ(report->bytes_per_instance.count("a-liar"), 0u);
  EXPECT_EQ(report->bytes_per_instance.count("b-good"), 1u);
  ASSERT_EQ(report->skipped.size(), 1u);
  EXPECT_NE(report->skipped[0].find("layout mismatch"), std::string::npos) << report->skipped[0];
  EXPECT_NE(report->skipped[0].find("a-liar"), std::string::npos) << report->skipped[0];
  for (const SourceRecord& r : registry_.All()) EXPECT_EQ(r.state, SourceState::kReady) << r.instance_id;
}

// Marking a failed source STALE goes to the coordinator, which may be gone (each call then
// costs the client's retry window): the load must not wait for it. Here every MarkSourceStale
// blocks until the test releases it; the load still finishes from the good source, and the
// mark lands once released (the loader's destructor waits for it).
TEST_F(ModelLoadingTest, AStaleMarkThatHangsDoesNotHoldUpTheLoad) {
  auto seeds = BadAndGoodSeeds();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> marks_started{0};
  registry_.SetBeforeMarkStale([&, released] {
    ++marks_started;
    released.wait();
  });
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 0));
  ASSERT_TRUE(loader.ok());
  auto load = std::async(std::launch::async, [&] { return (*loader)->Load(); });
  const bool finished = load.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  release.set_value();
  ASSERT_TRUE(finished) << "the load waited for a STALE mark the registry never answered";
  auto report = load.get();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ExpectEqualsCheckpoint(**loader, 0);
  ASSERT_EQ(report->failed.size(), 1u);
  EXPECT_NE(report->failed[0].find("a-bad"), std::string::npos) << report->failed[0];
  EXPECT_GE(marks_started.load(), 1) << "the failed source was being marked";
  loader->reset();  // waits for the mark in flight
  for (const SourceRecord& r : registry_.All()) {
    EXPECT_EQ(r.state, r.instance_id == "a-bad" ? SourceState::kStale : SourceState::kReady) << r.instance_id;
  }
  registry_.SetBeforeMarkStale({});
}

TEST_F(ModelLoadingTest, FingerprintMismatchListsTheFirstDifferences) {
  auto liar = Seed("liar", "tp=2");
  auto good = Seed("zgood", "tp=2");
  // Same layout string, a fingerprint of other offsets: the source answers HELLO with
  // its fingerprint inputs; we tamper only the registered digest, so the inputs are
  // equal and the message says so.
  registry_.Edit("liar", [](SourceRecord& r) { r.layout_fingerprint = "lf1-00000000000000000000000000000000"; });
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 0));
  auto report = (*loader)->Load();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->skipped.size(), 1u);
  EXPECT_NE(report->skipped[0].find("fingerprint inputs equal"), std::string::npos) << report->skipped[0];
  ExpectEqualsCheckpoint(**loader, 0);
}

TEST_F(ModelLoadingTest, CorruptBytesAtASourceAreReReadElsewhereAndTheSourceMarkedStale) {
  auto seeds = BadAndGoodSeeds();  // a-bad's rank 0 bytes changed after it committed its content
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 0));
  auto report = (*loader)->Load();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ExpectEqualsCheckpoint(**loader, 0);
  ASSERT_EQ(report->failed.size(), 1u);
  EXPECT_NE(report->failed[0].find("a-bad"), std::string::npos);
  EXPECT_NE(report->failed[0].find("committed content"), std::string::npos) << report->failed[0];
  int stale = 0;
  for (const SourceRecord& r : registry_.All()) {
    if (r.instance_id == "a-bad") {
      EXPECT_EQ(r.state, SourceState::kStale);
      EXPECT_NE(r.stale_reason.find("committed content"), std::string::npos) << r.stale_reason;
      // The source itself says its bytes are bad: the mark is held (source_mark_hold_s).
      EXPECT_EQ(registry_.MarkHeld(r.source_id), std::optional<bool>(true)) << r.source_id;
      ++stale;
    } else {
      EXPECT_EQ(r.state, SourceState::kReady);
    }
  }
  EXPECT_EQ(stale, 2);
}

TEST_F(ModelLoadingTest, DigestMismatchOnTheWayIsReReadElsewhere) {
  auto liar = Seed("a-liar", "tp=2", Liar());
  auto good = Seed("b-good", "tp=1");
  // Rank 0 meets the liar and marks it STALE; rank 1 then no longer sees it.
  const auto reports = LoadAll("new", "tp=2");
  ASSERT_EQ(reports.size(), 2u);
  ASSERT_EQ(reports[0].failed.size(), 1u);
  EXPECT_NE(reports[0].failed[0].find("digest mismatch"), std::string::npos) << reports[0].failed[0];
  EXPECT_GT(reports[0].rereads, 0u);
  for (const LoadReport& r : reports) {
    EXPECT_EQ(r.bytes_per_instance.count("a-liar"), 0u);
    EXPECT_EQ(r.bytes_from_sources, r.bytes_per_instance.at("b-good"));
  }
  // Bytes that changed on the way may be the loader's fault (its memory, its link): the mark
  // lasts until the source's next heartbeat, not the coordinator's hold.
  for (const SourceRecord& r : registry_.All()) {
    if (r.instance_id == "a-liar") {
      EXPECT_EQ(registry_.MarkHeld(r.source_id), std::optional<bool>(false)) << r.source_id << " marked, not held";
    }
  }
}

TEST_F(ModelLoadingTest, NoSourceFallsBackToDisk) {
  for (const LoadReport& r : LoadAll("new", "tp=2", [&](ModelLoaderOptions& o) {
         o.checkpoint_path = dir_.string();
         o.revision.clear();  // resolved from the checkpoint
       })) {
    EXPECT_EQ(r.bytes_from_sources, 0u);
    EXPECT_GT(r.bytes_from_disk, 0u);
  }
}

// The loader's own lane held up 4 s (as a lane thread starved of CPU, or waiting for its lock
// while another call force-closes a failed peer, would be) with its one READ in flight, four
// times stall_timeout_s, while the loader's thread kept looking: the source was healthy, and
// the loader must not blame it. In-process backend (FaultPlan::hold_lane) for sources and
// loader. Without the lane stall forgiven the READ was declared stalled ("READ not complete
// ... within 1.0 s") and, with no other source and no checkpoint, the load failed.
TEST_F(ModelLoadingTest, ALoaderWhoseLaneIsHeldUpBlamesNoSource) {
  ModelSourceOptions in_process;
  in_process.agent.backend = std::string(kInProcessBackend);
  auto seed = Seed("held-seed", "tp=1", in_process);
  ASSERT_EQ(seed.size(), 1u);
  ModelLoaderOptions o = LoaderOptions("held-new", "tp=1", 0);
  o.agent.backend = std::string(kInProcessBackend);
  o.agent.name = "held-loader";
  o.stall_timeout_s = 1;
  o.move_bytes = 64 << 20;  // the whole rank in one READ: nothing else to post while it is held
  auto loader = ModelLoader::Create(registry_, model_, o);
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  ASSERT_TRUE(transport::inproc::InjectFaults("held-loader", {.hold_lane = std::chrono::milliseconds(4000)}).ok());
  auto report = (*loader)->Load();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ExpectEqualsCheckpoint(**loader, 0);
  EXPECT_TRUE(report->failed.empty()) << report->failed.front();
  EXPECT_EQ(report->bytes_from_disk, 0u);
  EXPECT_EQ(report->moves, 1u);
  EXPECT_GE(report->paused_seconds, 4.0 - kLaneStallThresholdS) << "the hold was not seen";
  for (const SourceRecord& r : registry_.All()) EXPECT_EQ(r.state, SourceState::kReady) << r.instance_id;
}

// The disk fallback asks the interrupt hook and the deadline while it reads (and while it
// hashes a checkpoint to learn its revision): a stopped Load returns the hook's status or
// kTimedOut and commits nothing, and the next Load starts over.
TEST_F(ModelLoadingTest, ADiskFallbackStopsForTheInterruptAndTheDeadline) {
  for (const bool hash_first : {false, true}) {
    SCOPED_TRACE(hash_first ? "revision from the checkpoint" : "revision named");
    bool stop = true;
    int asked = 0;
    ModelLoaderOptions o = LoaderOptions(hash_first ? "new-hashed" : "new", "tp=2", 0);
    o.checkpoint_path = dir_.string();
    if (hash_first) o.revision.clear();
    o.interrupt = [&]() -> Status {
      ++asked;
      return stop ? Unavailable("interrupted by the test") : Status::Ok();
    };
    auto loader = ModelLoader::Create(registry_, model_, o);
    ASSERT_TRUE(loader.ok()) << loader.status().ToString();
    auto report = (*loader)->Load();
    ASSERT_FALSE(report.ok()) << "the interrupt was never asked during the fallback";
    EXPECT_EQ(report.status().code(), ErrorCode::kUnavailable) << report.status().ToString();
    EXPECT_NE(report.status().message().find("interrupted by the test"), std::string::npos)
        << report.status().ToString();
    EXPECT_EQ(asked, 1);
    EXPECT_FALSE((*loader)->loaded());
    stop = false;
    auto again = (*loader)->Load();
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ(again->bytes_from_disk, again->buffer_bytes);
    EXPECT_GT(asked, 1);
    ExpectEqualsCheckpoint(**loader, 0);

    ModelLoaderOptions late = LoaderOptions(hash_first ? "late-hashed" : "late", "tp=2", 1);
    late.checkpoint_path = dir_.string();
    if (hash_first) late.revision.clear();
    late.load_timeout_s = 1e-9;  // past before the fallback starts
    auto late_loader = ModelLoader::Create(registry_, model_, late);
    ASSERT_TRUE(late_loader.ok()) << late_loader.status().ToString();
    auto timed_out = (*late_loader)->Load();
    ASSERT_FALSE(timed_out.ok()) << "the deadline was never asked during the fallback";
    EXPECT_EQ(timed_out.status().code(), ErrorCode::kTimedOut) << timed_out.status().ToString();
    EXPECT_NE(timed_out.status().message().find("rank 1"), std::string::npos) << timed_out.status().ToString();
    EXPECT_NE(timed_out.status().message().find("checkpoint \"" + dir_.string() + "\""), std::string::npos)
        << timed_out.status().ToString();
    EXPECT_FALSE((*late_loader)->loaded());
  }
}

// A source learns of a loader's mark from its heartbeats: a held mark shows as STALE with the
// loader's reason while it holds and turns READY when it no longer does; a mark without hold
// shows once, READY (its heartbeat cleared it); heartbeats without a mark leave last_mark empty.
TEST_F(ModelLoadingTest, ASourceLearnsOfALoadersMarkFromItsHeartbeats) {
  ModelSourceOptions fast;
  fast.heartbeat_interval_s = 0.02;
  auto seed = Seed("src", "tp=1", fast);
  ASSERT_EQ(seed.size(), 1u);
  ModelSource& source = *seed[0];
  // Polls every 20 ms for 10 s at most until `cond` holds.
  auto eventually = [](const std::function<bool()>& cond) {
    for (int i = 0; i < 500 && !cond(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return cond();
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // several unmarked heartbeats
  EXPECT_FALSE(source.last_mark().has_value());
  EXPECT_EQ(source.marks_seen(), 0u);

  registry_.SetStickyStale(true);  // the fake's stand-in for the coordinator's hold
  ASSERT_TRUE(registry_.MarkSourceStale(source.source_id(), "block 7 failed its digest", /*hold=*/true).ok());
  ASSERT_TRUE(eventually([&] { return source.last_mark().has_value(); })) << "no heartbeat reported the mark";
  EXPECT_EQ(source.last_mark()->state, SourceState::kStale);
  EXPECT_EQ(source.last_mark()->stale_reason, "block 7 failed its digest");
  ASSERT_TRUE(eventually([&] { return source.marks_seen() >= 3; })) << "a held mark shows at every heartbeat";
  EXPECT_EQ(source.last_mark()->state, SourceState::kStale);

  registry_.SetStickyStale(false);  // the hold ends: the next heartbeat clears the mark
  ASSERT_TRUE(eventually([&] { return source.last_mark()->state == SourceState::kReady; }));
  EXPECT_EQ(source.last_mark()->stale_reason, "block 7 failed its digest");
  const std::uint64_t seen = source.marks_seen();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // heartbeats without a mark
  EXPECT_EQ(source.marks_seen(), seen);

  ASSERT_TRUE(registry_.MarkSourceStale(source.source_id(), "stalled for 5 s", /*hold=*/false).ok());
  ASSERT_TRUE(eventually([&] { return source.last_mark()->stale_reason == "stalled for 5 s"; }));
  EXPECT_EQ(source.last_mark()->state, SourceState::kReady);
  EXPECT_EQ(source.marks_seen(), seen + 1);
  for (const SourceRecord& r : registry_.All()) EXPECT_EQ(r.state, SourceState::kReady);
}

// An in-memory coordinator restarted empty: each source's next heartbeat is answered NOT_FOUND,
// and the source registers again (under the source id it proposed), so the next loader reads every
// byte from it.
TEST_F(ModelLoadingTest, SourcesRegisterAgainAfterTheRegistryForgetsThem) {
  ModelSourceOptions fast;
  fast.heartbeat_interval_s = 0.02;
  auto seed = Seed("src", "tp=2", fast);
  ASSERT_EQ(seed.size(), 2u);
  std::set<std::string> before;
  for (const SourceRecord& r : registry_.All()) before.insert(r.source_id);
  ASSERT_EQ(before.size(), 2u);
  registry_.Forget();
  ASSERT_TRUE(registry_.All().empty());
  std::vector<SourceRecord> after;
  for (int i = 0; i < 500 && after.size() < 2; ++i) {  // 10 s at most
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    after = registry_.All();
  }
  ASSERT_EQ(after.size(), 2u) << "the sources did not register again";
  // Registering again runs on the heartbeat thread: bounded like a heartbeat (max(2 x 0.02 s, 1 s)),
  // so a stopping source never waits on it for the client's whole retry time.
  EXPECT_EQ(registry_.last_register_bound_s(), 1.0);
  for (const SourceRecord& r : after) {
    EXPECT_EQ(r.instance_id, "src");
    // Under the id it proposed at Start (its registration is idempotent under it).
    EXPECT_EQ(before.count(r.source_id), 1u) << "a record forgotten by the registry came back under another id";
  }
  for (const LoadReport& r : LoadAll("new", "tp=1")) {
    EXPECT_EQ(r.bytes_from_disk, 0u);
    EXPECT_EQ(r.bytes_per_instance.at("src"), r.bytes_from_sources);
  }
}

// Every call a source makes on the registry's leases carries a finite bound (so an
// unreachable coordinator cannot hold its heartbeat thread or its destructor for the
// client's whole retry time), the destructor deregisters once, shutdown_timeout_s = 0
// skips that, and bad bounds are refused before anything is registered.
TEST_F(ModelLoadingTest, SourcesBoundEveryLeaseCallAndDeregisterOnce) {
  ModelSourceOptions fast;
  fast.heartbeat_interval_s = 0.02;
  fast.shutdown_timeout_s = 3;
  {
    auto seed = Seed("src", "tp=1", fast);
    ASSERT_EQ(seed.size(), 1u);
    for (int i = 0; i < 500 && registry_.longest_lease_call_bound_s() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(registry_.longest_lease_call_bound_s(), 1.0) << "heartbeat bound: max(2 x 0.02 s, 1 s)";
  }
  EXPECT_EQ(registry_.deregistrations(), 1);
  EXPECT_EQ(registry_.longest_lease_call_bound_s(), 3.0) << "the deregistration's bound is shutdown_timeout_s";
  EXPECT_TRUE(registry_.All().empty());

  ModelSourceOptions keep = fast;
  keep.shutdown_timeout_s = 0;
  { auto seed = Seed("kept", "tp=1", keep); }
  EXPECT_EQ(registry_.deregistrations(), 1) << "shutdown_timeout_s = 0 must skip the deregistration";
  EXPECT_EQ(registry_.All().size(), 1u);

  for (double bad : {-1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    ModelSourceOptions o = fast;
    o.instance_id = "bad";
    o.layout = "tp=1";
    o.shutdown_timeout_s = bad;
    auto s = ModelSource::Create(registry_, model_, identity_, o, [](std::span<std::byte>) { return Status::Ok(); });
    EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(registry_.All().size(), 1u) << "a refused source registered anyway";
}

TEST_F(ModelLoadingTest, AllSourcesBadAndNoCheckpointFailsWithoutCommitting) {
  auto liar = Seed("liar", "tp=2", Liar());
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 0));
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), ErrorCode::kUnavailable) << report.status().ToString();
  EXPECT_NE(report.status().message().find("digest mismatch"), std::string::npos) << report.status().ToString();
  EXPECT_FALSE((*loader)->loaded());
  EXPECT_FALSE((*loader)->BecomeSource().ok());
}

TEST_F(ModelLoadingTest, AllSourcesBadWithCheckpointFallsBackToDisk) {
  auto liar = Seed("liar", "tp=2", Liar());
  const auto reports = LoadAll("new", "tp=2", [&](ModelLoaderOptions& o) { o.checkpoint_path = dir_.string(); });
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].failed.size(), 1u);  // rank 1 finds the liar STALE already
  for (const LoadReport& r : reports) {
    EXPECT_EQ(r.bytes_from_sources, 0u);
    EXPECT_GT(r.bytes_from_disk, 0u);
  }
}

TEST_F(ModelLoadingTest, NobodyServesTheModel) {
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 0));
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), ErrorCode::kNotFound) << report.status().ToString();
  // Without a revision, the served one is found; none served: kNotFound too.
  ModelLoaderOptions o = LoaderOptions("new2", "tp=2", 0);
  o.revision.clear();
  auto loader2 = ModelLoader::Create(registry_, model_, o);
  EXPECT_EQ((*loader2)->Load().status().code(), ErrorCode::kNotFound);
}

// "No READY source serves model ..." could not be told apart from "its sources are all STALE" (a
// coordinator that paused past the lease, loaders that marked them): the NotFound now names the
// STALE sources of the model, with their revision and why, whether the revision was named or not.
TEST_F(ModelLoadingTest, NotFoundNamesTheStaleSourcesOfTheModelAndWhy) {
  auto seed = Seed("marked", "tp=1");
  registry_.SetStickyStale(true);  // the mark holds through the seed's heartbeats
  ASSERT_TRUE(registry_.MarkSourceStale(seed[0]->source_id(), "digest request not answered", true).ok());
  for (const bool named : {true, false}) {
    ModelLoaderOptions o = LoaderOptions(named ? "new" : "new2", "tp=2", 0);
    if (!named) o.revision.clear();
    auto loader = ModelLoader::Create(registry_, model_, o);
    ASSERT_TRUE(loader.ok());
    auto report = (*loader)->Load();
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.status().code(), ErrorCode::kNotFound) << report.status().ToString();
    EXPECT_NE(report.status().message().find("STALE now: marked rank 0 (revision rev-test: digest request not "
                                             "answered)"),
              std::string::npos)
        << report.status().ToString();
  }
  registry_.SetStickyStale(false);
}

TEST_F(ModelLoadingTest, RevisionIsDiscoveredAndAmbiguityIsAnError) {
  auto seed = Seed("seed", "tp=2");
  LoadAll("new", "tp=1", [](ModelLoaderOptions& o) { o.revision.clear(); });
  auto other_id = MakeModelIdentity(model_, "rev-other");
  identity_ = *other_id;
  auto other = Seed("other", "tp=1");
  ModelLoaderOptions o = LoaderOptions("new2", "tp=2", 0);
  o.revision.clear();
  auto loader = ModelLoader::Create(registry_, model_, o);
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), ErrorCode::kFailedPrecondition) << report.status().ToString();
}

TEST_F(ModelLoadingTest, BandwidthCappedSourcesServeThroughLeases) {
  // Loads complete and verify through the lease protocol (the pacing itself is
  // measured by the demo and the benchmark, not asserted here).
  auto a = Seed("a", "tp=1", Capped(50e6));
  auto b = Seed("b", "tp=2", Capped(50e6));
  for (const LoadReport& r : LoadAll("new", "tp=2")) {
    EXPECT_EQ(r.bytes_per_instance.size(), 2u);
    EXPECT_TRUE(r.failed.empty());
  }
}

// Two instances given one instance_id (or a restarted rank whose old lease is still live) made
// "3 of 2 ranks READY" and the instance was never used, so the load found no source. The newest
// registration now names the instance: records alike it are kept (the newest per rank), the
// others reported, whichever layout is the newer one, and the bytes match the checkpoint.
TEST_F(ModelLoadingTest, AnInstanceIdRegisteredTwiceIsLoadedFromItsNewestRegistration) {
  for (const auto& [first, second] : {std::pair{"tp=1", "tp=2"}, std::pair{"tp=2", "tp=1"}}) {
    SCOPED_TRACE(fmt::format("older {}, newer {}", first, second));
    auto older = Seed("twin", first);
    auto newer = Seed("twin", second);
    ASSERT_FALSE(older.empty());
    ASSERT_FALSE(newer.empty());
    auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 1));
    ASSERT_TRUE(loader.ok()) << loader.status().ToString();
    auto report = (*loader)->Load();
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    EXPECT_EQ(report->bytes_per_instance.count("twin"), 1u);
    EXPECT_EQ(report->bytes_from_disk, 0u);
    ASSERT_EQ(report->skipped.size(), older.size()) << fmt::format("{}", fmt::join(report->skipped, "\n"));
    for (const auto& source : older) {
      const std::string passed_over = "source " + source->source_id() +
                                      " passed over: instance_id twin is registered "
                                      "more than once";
      EXPECT_TRUE(std::any_of(report->skipped.begin(), report->skipped.end(),
                              [&](const std::string& s) { return s.find(passed_over) != std::string::npos; }))
          << passed_over << " in " << fmt::format("{}", fmt::join(report->skipped, "\n"));
    }
    ExpectEqualsCheckpoint(**loader, 1);
  }
}

// A load that runs out of load_timeout_s while its sources are alive but slow (here a source
// capped at 20 kB/s, far below what the load needs in 1 s) names them and what their moves
// waited for, instead of only "did not finish"; nothing is committed.
TEST_F(ModelLoadingTest, ALoadTimeoutNamesTheSourcesItStillWaitedFor) {
  auto slow = Seed("slow-seed", "tp=2", Capped(20e3));
  ModelLoaderOptions o = LoaderOptions("new", "tp=1", 0);
  o.load_timeout_s = 1;
  auto loader = ModelLoader::Create(registry_, model_, o);
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), ErrorCode::kTimedOut) << report.status().ToString();
  const std::string message = report.status().ToString();
  EXPECT_NE(message.find("did not finish within 1 s: "), std::string::npos) << message;
  EXPECT_NE(message.find("bytes verified; unfinished: instance slow-seed rank "), std::string::npos) << message;
  EXPECT_NE(message.find(fmt::format(" of {} bytes verified", (*loader)->buffer().size())), std::string::npos)
      << message;
  EXPECT_FALSE((*loader)->loaded());
}

// Timeouts of +inf mean never: they became int64 nanoseconds that wrapped into the past, so every
// deadline had passed at once ("did not finish within inf s", healthy sources marked STALE).
TEST_F(ModelLoadingTest, InfiniteTimeoutsMeanNever) {
  auto seed = Seed("seed", "tp=2");
  ModelLoaderOptions o = LoaderOptions("new", "tp=1", 0);
  o.stall_timeout_s = std::numeric_limits<double>::infinity();
  o.load_timeout_s = std::numeric_limits<double>::infinity();
  auto loader = ModelLoader::Create(registry_, model_, o);
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  auto report = (*loader)->Load();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->failed.empty());
  ExpectEqualsCheckpoint(**loader, 0);
}

TEST_F(ModelLoadingTest, BadOptions) {
  ModelLoaderOptions o = LoaderOptions("", "tp=2", 0);
  EXPECT_EQ(ModelLoader::Create(registry_, model_, o).status().code(), ErrorCode::kInvalidArgument);
  o = LoaderOptions("x", "tp=3", 0);
  EXPECT_FALSE(ModelLoader::Create(registry_, model_, o).ok());
  o = LoaderOptions("x", "tp=2", 2);
  EXPECT_EQ(ModelLoader::Create(registry_, model_, o).status().code(), ErrorCode::kInvalidArgument);
  // A stall bound no healthy source can meet (1 us marked a healthy seed STALE for every loader)
  // is refused, naming the floor; the floor itself is taken.
  o = LoaderOptions("x", "tp=2", 0);
  o.stall_timeout_s = 1e-6;
  auto tiny = ModelLoader::Create(registry_, model_, o);
  EXPECT_EQ(tiny.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(tiny.status().message().find("below 0.1 s"), std::string::npos) << tiny.status().ToString();
  o.stall_timeout_s = kMinStallTimeoutSeconds;
  EXPECT_TRUE(ModelLoader::Create(registry_, model_, o).ok());
}

// A checkpoint of the same model with other bytes (another revision), beside dir_.
class ModelLoadingRevisionTest : public ModelLoadingTest {
 protected:
  void SetUp() override {
    ModelLoadingTest::SetUp();
    other_dir_ = dir_.string() + "-other";
    ASSERT_TRUE(GenerateCheckpointDirectory(model_, other_dir_, {.seed = 8}).ok());
    auto rev = CheckpointRevision(*checkpoint_);
    ASSERT_TRUE(rev.ok());
    revision_ = *rev;
    auto other = Checkpoint::Open(other_dir_);
    ASSERT_TRUE(other.ok());
    auto other_rev = CheckpointRevision(*other);
    ASSERT_TRUE(other_rev.ok());
    ASSERT_NE(*other_rev, revision_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(other_dir_, ec);
    ModelLoadingTest::TearDown();
  }
  std::string other_dir_;
  std::string revision_;  // CheckpointRevision of dir_
};

TEST_F(ModelLoadingRevisionTest, DiskFallbackRefusesACheckpointOfAnotherRevision) {
  // No source; the revision wanted is dir_'s content digest; the checkpoint is another.
  ModelLoaderOptions o = LoaderOptions("new", "tp=2", 0);
  o.revision = revision_;
  o.checkpoint_path = other_dir_;
  auto loader = ModelLoader::Create(registry_, model_, o);
  ASSERT_TRUE(loader.ok());
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), ErrorCode::kFailedPrecondition) << report.status().ToString();
  EXPECT_NE(report.status().message().find(other_dir_), std::string::npos) << report.status().ToString();
  EXPECT_NE(report.status().message().find(revision_), std::string::npos) << report.status().ToString();
  EXPECT_FALSE((*loader)->loaded());
  EXPECT_FALSE((*loader)->BecomeSource().ok());
  // The checkpoint of that revision loads.
  for (const LoadReport& r : LoadAll("new2", "tp=2", [&](ModelLoaderOptions& lo) {
         lo.revision = revision_;
         lo.checkpoint_path = dir_.string();
       })) {
    EXPECT_GT(r.bytes_from_disk, 0u);
  }
}

TEST_F(ModelLoadingRevisionTest, UserRevisionIsCheckedThroughTheContentSourcesAdvertise) {
  // Sources under the user revision "rev-test" advertise dir_'s content digest; they
  // serve bad bytes, so everything falls back to disk, where a checkpoint of other
  // content is refused and the right one is accepted.
  ModelSourceOptions liar = Liar();
  liar.content_revision = revision_;
  auto seed = Seed("liar", "tp=2", liar);
  ModelLoaderOptions o = LoaderOptions("new", "tp=2", 0);
  o.checkpoint_path = other_dir_;
  auto loader = ModelLoader::Create(registry_, model_, o);
  ASSERT_TRUE(loader.ok());
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), ErrorCode::kFailedPrecondition) << report.status().ToString();
  EXPECT_FALSE((*loader)->loaded());
  seed.clear();
  seed = Seed("liar2", "tp=2", liar);
  const auto reports = LoadAll("new2", "tp=2", [&](ModelLoaderOptions& lo) { lo.checkpoint_path = dir_.string(); });
  ASSERT_EQ(reports.size(), 2u);
  for (const LoadReport& r : reports) EXPECT_EQ(r.bytes_from_sources, 0u);
}

// Sources under the user revision "rev-test" advertise no content and serve bad bytes: a load
// that took that revision from them (no ModelLoaderOptions::revision) cannot check a fallback
// checkpoint against it, and refuses it instead of serving its bytes as "rev-test" afterwards;
// naming the revision pairs them (trusted: the loaded bytes are the checkpoint's).
TEST_F(ModelLoadingRevisionTest, AFallbackCheckpointIsRefusedForARevisionTakenFromSourcesThatNameNoContent) {
  auto seed = Seed("liar", "tp=2", Liar());
  ModelLoaderOptions o = LoaderOptions("new", "tp=2", 0);
  o.revision.clear();  // taken from the sources
  o.checkpoint_path = other_dir_;
  auto loader = ModelLoader::Create(registry_, model_, o);
  ASSERT_TRUE(loader.ok());
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok()) << "loaded " << report->bytes_from_disk << " unchecked bytes from disk";
  EXPECT_EQ(report.status().code(), ErrorCode::kFailedPrecondition) << report.status().ToString();
  EXPECT_NE(report.status().message().find(other_dir_), std::string::npos) << report.status().ToString();
  EXPECT_NE(report.status().message().find("rev-test"), std::string::npos) << report.status().ToString();
  EXPECT_FALSE((*loader)->loaded());
  seed.clear();
  seed = Seed("liar2", "tp=2", Liar());
  for (const LoadReport& r : LoadAll("new2", "tp=2", [&](ModelLoaderOptions& lo) {
         lo.revision = "rev-test";
         lo.checkpoint_path = dir_.string();
       })) {
    EXPECT_GT(r.bytes_from_disk, 0u);
  }
}

// The only instance is incomplete (one rank's record gone) but says which content the revision
// is: the load falls back to a checkpoint of that content, and refuses one of other content.
TEST_F(ModelLoadingRevisionTest, AnIncompleteInstanceStillSaysWhichCheckpointMayBeLoaded) {
  ModelSourceOptions seed_options;
  seed_options.content_revision = revision_;
  auto seed = Seed("half", "tp=2", seed_options);
  for (const SourceRecord& r : registry_.All()) {
    if (r.rank == 1) {
      ASSERT_TRUE(registry_.DeregisterSource(r.source_id, 1).ok());
    }
  }
  auto load = [&](const std::string& id, const std::string& checkpoint) {
    ModelLoaderOptions o = LoaderOptions(id, "tp=2", 0);
    o.revision.clear();  // taken from the sources
    o.checkpoint_path = checkpoint;
    auto loader = ModelLoader::Create(registry_, model_, o);
    EXPECT_TRUE(loader.ok());
    return (*loader)->Load();
  };
  const auto other = load("new-other", other_dir_);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), ErrorCode::kFailedPrecondition) << other.status().ToString();
  EXPECT_NE(other.status().message().find(revision_), std::string::npos) << other.status().ToString();
  const auto right = load("new-right", dir_.string());
  ASSERT_TRUE(right.ok()) << right.status().ToString();
  EXPECT_EQ(right->bytes_from_sources, 0u);
  EXPECT_GT(right->bytes_from_disk, 0u);
}

TEST_F(ModelLoadingRevisionTest, ALoadedInstancePassesOnTheContentItLearned) {
  ModelSourceOptions seed_options;
  seed_options.content_revision = revision_;
  auto seed = Seed("seed", "tp=2", seed_options);
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=1", 0));
  ASSERT_TRUE(loader.ok());
  ASSERT_TRUE((*loader)->Load().ok());
  auto source = (*loader)->BecomeSource();
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  auto records = registry_.ListSources("", SourceState::kReady);
  ASSERT_TRUE(records.ok());
  int found = 0;
  for (const SourceRecord& r : *records) {
    if (r.instance_id != "new") continue;
    ++found;
    ASSERT_TRUE(r.attributes.contains(kSourceAttrContent));
    EXPECT_EQ(r.attributes.at(kSourceAttrContent), revision_);
  }
  EXPECT_EQ(found, 1);
}

TEST_F(ModelLoadingRevisionTest, SourcesOfAnotherRevisionAreNeverUsed) {
  auto other_id = MakeModelIdentity(model_, "rev-other");
  ASSERT_TRUE(other_id.ok());
  identity_ = *other_id;
  auto other = Seed("other", "tp=1");
  // Loading "rev-test": the READY "rev-other" instance is not a source of it.
  auto loader = ModelLoader::Create(registry_, model_, LoaderOptions("new", "tp=2", 0));
  ASSERT_TRUE(loader.ok());
  auto report = (*loader)->Load();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), ErrorCode::kNotFound) << report.status().ToString();
  for (const LoadReport& r :
       LoadAll("new2", "tp=2", [&](ModelLoaderOptions& lo) { lo.checkpoint_path = dir_.string(); })) {
    EXPECT_EQ(r.bytes_from_sources, 0u);
    EXPECT_TRUE(r.bytes_per_instance.empty());
    EXPECT_TRUE(r.failed.empty());
  }
}

TEST_F(ModelLoadingRevisionTest, InstanceAdvertisingOtherContentUnderTheSameRevisionIsSkipped) {
  ModelSourceOptions honest, lying;
  honest.content_revision = revision_;
  lying.content_revision = "xxh3:00000000000000000000000000000000";
  auto a = Seed("a-honest", "tp=2", honest);
  auto b = Seed("b-lying", "tp=1", lying);
  // One each and no checkpoint: which is the revision cannot be told, neither is used.
  {
    ModelLoaderOptions o = LoaderOptions("tie", "tp=2", 0);
    auto loader = ModelLoader::Create(registry_, model_, o);
    ASSERT_TRUE(loader.ok());
    auto report = (*loader)->Load();
    ASSERT_FALSE(report.ok());
    EXPECT_NE(report.status().message().find("serve different contents"), std::string::npos)
        << report.status().ToString();
  }
  // One each, and a fallback checkpoint of neither content: refused, not loaded unchecked (it was
  // read from disk and committed when the tie left the content unknown).
  {
    ModelLoaderOptions o = LoaderOptions("tie-other", "tp=2", 0);
    o.checkpoint_path = other_dir_;
    auto loader = ModelLoader::Create(registry_, model_, o);
    ASSERT_TRUE(loader.ok());
    auto report = (*loader)->Load();
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.status().code(), ErrorCode::kFailedPrecondition) << report.status().ToString();
    EXPECT_NE(report.status().message().find("none of them"), std::string::npos) << report.status().ToString();
    EXPECT_FALSE((*loader)->loaded());
  }
  // One each with the fallback checkpoint: its revision decides, the other is skipped.
  for (const LoadReport& r :
       LoadAll("new", "tp=2", [&](ModelLoaderOptions& o) { o.checkpoint_path = dir_.string(); })) {
    EXPECT_EQ(r.bytes_per_instance.count("b-lying"), 0u);
    EXPECT_EQ(r.bytes_per_instance.count("a-honest"), 1u);
    ASSERT_EQ(r.skipped.size(), 1u);
    EXPECT_NE(r.skipped[0].find("b-lying"), std::string::npos) << r.skipped[0];
    EXPECT_NE(r.skipped[0].find("verification failed"), std::string::npos) << r.skipped[0];
  }
}

// An instance serving other bytes under the user revision used to decide for every other one when
// its instance id sorted first: "a-lying" became the reference, the two honest instances were
// skipped, and every byte came from it (reported as success). The content most instances
// advertise is the revision's: the liar is skipped, whatever its id.
TEST_F(ModelLoadingRevisionTest, TheContentMostInstancesServeWinsWhateverTheIdsSortOrder) {
  ModelSourceOptions honest, lying;
  honest.content_revision = revision_;
  lying.content_revision = "xxh3:00000000000000000000000000000000";
  auto a = Seed("a-lying", "tp=1", lying);
  auto b = Seed("b-honest", "tp=2", honest);
  auto c = Seed("c-honest", "tp=1", honest);
  for (const LoadReport& r : LoadAll("new", "tp=2")) {  // checks every byte against the checkpoint
    EXPECT_EQ(r.bytes_per_instance.count("a-lying"), 0u);
    ASSERT_EQ(r.skipped.size(), 1u);
    EXPECT_NE(r.skipped[0].find("a-lying"), std::string::npos) << r.skipped[0];
    EXPECT_NE(r.skipped[0].find("what most of the instances listed when the load started serve"), std::string::npos)
        << r.skipped[0];
  }
}

// The lease order of a capped source: by the loaders' priority (then instance id), not
// by arrival. A raw agent speaks the protocol: lease 1 is granted at once (the source is
// idle); leases 2 (priority 300) and 3 (priority 100) queue; when 1 is released, 3 wins
// although 2 arrived first.
TEST_F(ModelLoadingTest, CappedSourceGrantsLeasesByPriorityNotArrival) {
  using workflows::DecodeP2p;
  using workflows::EncodeP2p;
  using workflows::P2pKind;
  using workflows::P2pMessage;
  auto seed = Seed("capped", "tp=1", Capped(1e6));
  ASSERT_EQ(seed.size(), 1u);
  auto raw = RawLoaderOfTheOnlySource();
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  Agent& a = *raw->agent;
  auto send = [&](const P2pMessage& m) { ASSERT_TRUE(a.SendMessage(raw->peer, EncodeP2p(m)).ok()); };
  // Next message of `kind` (others, e.g. QUEUED keepalives, are skipped).
  auto await = [&](P2pKind kind) -> std::optional<P2pMessage> {
    for (int i = 0; i < 200; ++i) {
      auto n = a.WaitNotification(5);
      if (!n.ok()) return std::nullopt;
      auto m = DecodeP2p(n->payload);
      if (m && m->kind == kind) return m;
    }
    return std::nullopt;
  };
  P2pMessage hello;
  hello.kind = P2pKind::kHello;
  hello.id = 1000;
  auto blob = a.ExportMetadata();
  ASSERT_TRUE(blob.ok());
  hello.blob = *blob;
  send(hello);
  ASSERT_TRUE(await(P2pKind::kHelloAck).has_value());
  auto lease = [&](std::uint64_t id, const std::string& instance, std::uint64_t priority) {
    P2pMessage m;
    m.kind = P2pKind::kLease;
    m.id = id;
    m.value = 20000000;  // 20 s at the cap: the grant lasts until released
    m.text = instance;
    m.priority = priority;
    send(m);
  };
  lease(1, "b", 200);
  auto first = await(P2pKind::kGrant);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->id, 1u);
  lease(2, "c", 300);
  lease(3, "a", 100);
  // Both requests are queued (each is acknowledged) before the grant ends.
  ASSERT_TRUE(await(P2pKind::kQueued).has_value());
  ASSERT_TRUE(await(P2pKind::kQueued).has_value());
  P2pMessage release;
  release.kind = P2pKind::kRelease;
  release.id = 1;
  send(release);
  auto second = await(P2pKind::kGrant);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->id, 3u) << "the lowest priority value is served first";
  release.id = 3;
  send(release);
  auto third = await(P2pKind::kGrant);
  ASSERT_TRUE(third.has_value());
  EXPECT_EQ(third->id, 2u);
  P2pMessage bye;
  bye.kind = P2pKind::kBye;
  send(bye);
}

// A loader that dies holding a capped source's 60 s grant holds nothing once the source's
// agent knows it is gone: a live loader queued behind it is granted within the test's 30 s
// bound, not after the dead one's grant (and, with `dead_queues_more`, its two queued 60 s
// leases) ran their time. Returns the live loader's grant, nullopt after 30 s without one.
std::optional<workflows::P2pMessage> ModelLoadingTest::GrantBehindADeadLoader(bool dead_queues_more) {
  using workflows::DecodeP2p;
  using workflows::EncodeP2p;
  using workflows::P2pKind;
  using workflows::P2pMessage;
  constexpr double kCap = 1e4;  // bytes per second: a lease is capped at the rank's buffer
  auto seed = Seed("capped", "tp=1", Capped(kCap));
  EXPECT_EQ(seed.size(), 1u);
  if (seed.size() != 1) return std::nullopt;
  EXPECT_GE(seed.front()->buffer().size(), 60 * kCap) << "a 60 s lease needs 600 KB at the cap";
  auto dead = RawLoaderOfTheOnlySource("raw-dead");
  auto live = RawLoaderOfTheOnlySource("raw-live");
  EXPECT_TRUE(dead.ok() && live.ok());
  if (!dead.ok() || !live.ok()) return std::nullopt;
  auto send = [](RawLoader& r, const P2pMessage& m) { EXPECT_TRUE(r.agent->SendMessage(r.peer, EncodeP2p(m)).ok()); };
  // Next message of `kind` within 30 s (others skipped).
  auto await = [](RawLoader& r, P2pKind kind) -> std::optional<P2pMessage> {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < end) {
      auto n = r.agent->WaitNotification(1);
      if (!n.ok()) continue;
      auto m = DecodeP2p(n->payload);
      if (m && m->kind == kind) return m;
    }
    return std::nullopt;
  };
  auto lease = [&](RawLoader& r, std::uint64_t id, const std::string& instance, std::uint64_t priority,
                   double seconds) {
    P2pMessage m;
    m.kind = P2pKind::kLease;
    m.id = id;
    m.value = static_cast<std::uint64_t>(seconds * kCap);
    m.text = instance;
    m.priority = priority;
    send(r, m);
  };
  for (RawLoader* r : {&*dead, &*live}) {
    P2pMessage hello;
    hello.kind = P2pKind::kHello;
    hello.id = 1000;
    auto blob = r->agent->ExportMetadata();
    EXPECT_TRUE(blob.ok());
    if (!blob.ok()) return std::nullopt;
    hello.blob = *blob;
    send(*r, hello);
    EXPECT_TRUE(await(*r, P2pKind::kHelloAck).has_value());
  }
  lease(*dead, 1, "a-dead", 100, 60.0);
  auto first = await(*dead, P2pKind::kGrant);
  EXPECT_TRUE(first.has_value() && first->id == 1u);
  if (dead_queues_more) {
    lease(*dead, 2, "a-dead", 100, 60.0);  // ahead of the live loader's by priority
    lease(*dead, 3, "a-dead", 100, 60.0);
    EXPECT_TRUE(await(*dead, P2pKind::kQueued).has_value());
  }
  lease(*live, 10, "b-live", 200, 0.001);
  EXPECT_TRUE(await(*live, P2pKind::kQueued).has_value());
  dead->agent.reset();  // dies without BYE or RELEASE
  return await(*live, P2pKind::kGrant);
}

// With leases queued, a QUEUED keepalive to the dead loader fails and drops them all.
TEST_F(ModelLoadingTest, ADeadLoadersQueuedLeasesAreDropped) {
  auto granted = GrantBehindADeadLoader(/*dead_queues_more=*/true);
  ASSERT_TRUE(granted.has_value()) << "the live loader waited behind a dead loader's leases";
  EXPECT_EQ(granted->id, 10u);
}

// With nothing queued nothing is sent to the dead loader: the keepalive pass finds it in
// Agent::FailedPeers (its message link hung up) and drops its grant.
TEST_F(ModelLoadingTest, ADeadLoadersGrantIsDroppedOnceItsAgentIsKnownGone) {
  auto granted = GrantBehindADeadLoader(/*dead_queues_more=*/false);
  ASSERT_TRUE(granted.has_value()) << "the live loader waited behind a dead loader's grant";
  EXPECT_EQ(granted->id, 10u);
}

// A capped source trusts no lease it was not asked for properly: a LEASE from a peer that
// never sent HELLO is ignored (no QUEUED, no GRANT), and a lease of 2^64 - 1 bytes lasts at
// most as long as the rank's whole buffer takes at the cap (it overflowed the deadline's
// clock, and a huge count held every other loader for as long as it said).
TEST_F(ModelLoadingTest, CappedSourceIgnoresLeasesWithoutHelloAndBoundsTheirBytes) {
  using workflows::DecodeP2p;
  using workflows::EncodeP2p;
  using workflows::P2pKind;
  using workflows::P2pMessage;
  constexpr double kCap = 1e6;
  auto seed = Seed("capped", "tp=1", Capped(kCap));
  ASSERT_EQ(seed.size(), 1u);
  const double whole_buffer_s = static_cast<double>(seed.front()->buffer().size()) / kCap;
  auto raw = RawLoaderOfTheOnlySource();
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  Agent& a = *raw->agent;
  auto send = [&](const P2pMessage& m) { ASSERT_TRUE(a.SendMessage(raw->peer, EncodeP2p(m)).ok()); };
  auto lease = [&](std::uint64_t id, std::uint64_t bytes) {
    P2pMessage m;
    m.kind = P2pKind::kLease;
    m.id = id;
    m.value = bytes;
    m.text = "hostile";
    m.priority = 1;
    send(m);
  };
  // A LEASE before any HELLO: the source cannot answer it yet (it has not imported this
  // agent), but kept in its queue it was granted once the HELLO below made this agent
  // reachable. Only the HELLO's answer may come back.
  lease(1, 1000);
  P2pMessage hello;
  hello.kind = P2pKind::kHello;
  hello.id = 1000;
  auto blob = a.ExportMetadata();
  ASSERT_TRUE(blob.ok());
  hello.blob = *blob;
  send(hello);
  std::vector<P2pMessage> seen;
  for (int i = 0; i < 20; ++i) {
    auto n = a.WaitNotification(i == 0 ? 5 : 0.2);
    if (!n.ok()) break;
    if (auto m = DecodeP2p(n->payload)) seen.push_back(*m);
  }
  ASSERT_FALSE(seen.empty());
  for (const P2pMessage& m : seen) {
    EXPECT_EQ(m.kind, P2pKind::kHelloAck) << "answered the LEASE sent before HELLO: kind " << static_cast<int>(m.kind);
  }
  lease(2, std::numeric_limits<std::uint64_t>::max());
  std::optional<P2pMessage> grant;
  for (int i = 0; i < 50 && !grant; ++i) {
    auto n = a.WaitNotification(5);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    auto m = DecodeP2p(n->payload);
    if (m && m->kind == P2pKind::kGrant) grant = m;
  }
  ASSERT_TRUE(grant.has_value());
  EXPECT_EQ(grant->id, 2u);
  EXPECT_LE(grant->seconds, whole_buffer_s) << "a lease longer than the whole buffer takes at the cap";
  EXPECT_GT(grant->seconds, 0);
  P2pMessage bye;
  bye.kind = P2pKind::kBye;
  send(bye);
}

// A HELLO_ACK that says it holds 2^24 lines in a 30-byte message is refused before anything
// is allocated for them (it made 2^24 empty strings, 512 MiB, first): peak RSS barely moves.
TEST(P2pMessages, CountsThePayloadCannotHoldAreRefusedBeforeAllocating) {
  using workflows::DecodeP2p;
  using workflows::EncodeP2p;
  using workflows::P2pKind;
  using workflows::P2pMessage;
  P2pMessage ack;
  ack.kind = P2pKind::kHelloAck;
  ack.id = 7;
  ack.lines = {"a"};
  std::vector<std::byte> wire = EncodeP2p(ack);
  ASSERT_TRUE(DecodeP2p(wire).has_value());
  // The line count is the 4 bytes before the one line (4-byte length + 1 byte): set it to 2^24.
  const std::size_t count_at = wire.size() - 5 - 4;
  ASSERT_EQ(static_cast<int>(wire[count_at]), 1);
  wire[count_at] = std::byte{0};
  wire[count_at + 3] = std::byte{1};  // little-endian 0x01000000
  rusage before{};
  ::getrusage(RUSAGE_SELF, &before);
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(DecodeP2p(wire).has_value());
  rusage after{};
  ::getrusage(RUSAGE_SELF, &after);
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 * 1024) << "KiB of peak RSS for decoding a 30-byte message";
}

// The digest protocol of a move (workflows::MoveDigest): a segment that is a whole block of
// the source's buffer is answered from the digest recorded at commit, unread; parts of a
// block are hashed from the buffer after the block was checked; the verify flag makes the
// source hash and check everything. The oracle is computed here from a copy of the
// committed bytes with xxhash directly: xxh3-64 over the segments' xxh3-64s, 8 bytes
// little-endian each.
//
// Parameter: the source's buffer is read-only (Create's default: parts are hashed without
// a block check, and nothing can write the buffer) or writable (parts are served only
// after their block is checked against its committed digest).
class ModelLoadingDigestTest : public ModelLoadingTest, public ::testing::WithParamInterface<bool> {};

TEST_P(ModelLoadingDigestTest, DigestRequestsUseCommittedBlockDigestsAndVerifyOnRequest) {
  using workflows::DecodeP2p;
  using workflows::DigestStatus;
  using workflows::EncodeP2p;
  using workflows::P2pKind;
  using workflows::P2pMessage;
  const bool read_only = GetParam();
  auto seed = Seed("digests", "tp=1", read_only ? ModelSourceOptions{} : Writable());
  ASSERT_EQ(seed.size(), 1u);
  auto buf = seed[0]->buffer();
  ASSERT_GT(buf.size(), 300u);
  ASSERT_LE(buf.size(), workflows::kSourceBlockBytes) << "the test model's buffer is one block";
  const std::vector<std::byte> committed(buf.begin(), buf.end());
  auto records = registry_.ListSources("", SourceState::kReady);
  ASSERT_TRUE(records.ok());
  auto agent = Agent::Create({.name = "raw-digest-loader"});
  ASSERT_TRUE(agent.ok());
  Agent& a = **agent;
  auto peer = a.ImportMetadata(records->front().metadata);
  ASSERT_TRUE(peer.ok());
  auto send = [&](const P2pMessage& m) { ASSERT_TRUE(a.SendMessage(*peer, EncodeP2p(m)).ok()); };
  auto await = [&](P2pKind kind, std::uint64_t id) -> std::optional<P2pMessage> {
    for (int i = 0; i < 200; ++i) {
      auto n = a.WaitNotification(5);
      if (!n.ok()) return std::nullopt;
      auto m = DecodeP2p(n->payload);
      if (m && m->kind == kind && m->id == id) return m;
    }
    return std::nullopt;
  };
  P2pMessage hello;
  hello.kind = P2pKind::kHello;
  hello.id = 1;
  auto blob = a.ExportMetadata();
  ASSERT_TRUE(blob.ok());
  hello.blob = *blob;
  send(hello);
  ASSERT_TRUE(await(P2pKind::kHelloAck, 1).has_value());
  std::uint64_t next_id = 2;
  auto ask = [&](std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges, bool verify) {
    P2pMessage m;
    m.kind = P2pKind::kDigest;
    m.id = next_id++;
    m.ranges = std::move(ranges);
    m.flag = verify;
    send(m);
    auto reply = await(P2pKind::kDigestReply, m.id);
    EXPECT_TRUE(reply.has_value());
    return reply.value_or(P2pMessage{});
  };
  auto oracle = [&](const std::vector<std::pair<std::uint64_t, std::uint64_t>>& segments) {
    std::vector<std::uint8_t> le;
    for (const auto& [off, len] : segments) {
      const std::uint64_t h = XXH3_64bits(committed.data() + off, len);
      for (int i = 0; i < 8; ++i) le.push_back(static_cast<std::uint8_t>(h >> (8 * i)));
    }
    return XXH3_64bits(le.data(), le.size());
  };
  const std::uint64_t n = buf.size();
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> whole = {{0, n}};
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> parts = {{10, 100}, {200, 50}};
  P2pMessage r = ask(whole, false);
  EXPECT_EQ(r.status, DigestStatus::kOk);
  EXPECT_EQ(r.value, oracle(whole));
  r = ask(parts, false);
  EXPECT_EQ(r.status, DigestStatus::kOk);
  EXPECT_EQ(r.value, oracle(parts));
  r = ask(parts, true);
  EXPECT_EQ(r.status, DigestStatus::kOk);
  EXPECT_EQ(r.value, oracle(parts));
  EXPECT_EQ(testing_util::MappingPermissions(buf.data()).substr(0, 3), read_only ? "r--" : "rw-");
  if (!read_only) {
    // A byte of the block changes after commit, outside the parts' ranges.
    buf[n - 1] ^= std::byte{0x5a};
    r = ask(whole, false);
    EXPECT_EQ(r.status, DigestStatus::kOk) << "a whole block is answered from its committed digest";
    EXPECT_EQ(r.value, oracle(whole)) << "the committed content's digest, which the changed bytes do not match";
    r = ask(whole, true);
    EXPECT_EQ(r.status, DigestStatus::kCorrupt) << "verify hashes the block and finds it changed";
    r = ask(parts, false);
    EXPECT_EQ(r.status, DigestStatus::kCorrupt) << "parts of a block are served only after their block is checked";
  }
  P2pMessage bye;
  bye.kind = P2pKind::kBye;
  send(bye);
}

INSTANTIATE_TEST_SUITE_P(Workflows, ModelLoadingDigestTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "ReadOnly" : "Writable"; });

// A model whose tp=1 buffer spans several 1 MiB blocks (7 MiB, shards back to back), so
// that 4 MiB moves request whole blocks, which sources answer from the digests recorded
// at commit.
class ModelLoadingWholeBlocksTest : public ModelLoadingTest {
 protected:
  const char* Config() const override {
    return R"({"model_type": "llama", "hidden_size": 512, "num_hidden_layers": 1, "num_attention_heads": 8,
        "num_key_value_heads": 8, "intermediate_size": 1024, "vocab_size": 1024, "torch_dtype": "bfloat16"})";
  }
};

// A byte changed after commit inside a whole block: the source answers from the committed
// digest, the loader's landed bytes differ, the loader asks again with the verify flag and
// the source reports its bytes differ from its committed content; the bytes are re-read
// from the other instance and the changed one is marked STALE.
TEST_F(ModelLoadingWholeBlocksTest, ChangedWholeBlockAtASourceIsFoundByTheVerifyRequest) {
  auto bad = Seed("a-bad", "tp=1", Writable());
  auto good = Seed("b-good", "tp=1");
  registry_.SetStickyStale(true);
  auto buf = bad[0]->buffer();
  ASSERT_GT(buf.size(), 4 * workflows::kSourceBlockBytes);
  buf[workflows::kSourceBlockBytes + workflows::kSourceBlockBytes / 2] ^= std::byte{0x5a};  // inside block 1
  const auto reports = LoadAll("new", "tp=1", [](ModelLoaderOptions& o) { o.move_bytes = 4 << 20; });
  ASSERT_EQ(reports.size(), 1u);
  ASSERT_EQ(reports[0].failed.size(), 1u);
  EXPECT_NE(reports[0].failed[0].find("a-bad"), std::string::npos) << reports[0].failed[0];
  EXPECT_NE(reports[0].failed[0].find("committed content"), std::string::npos) << reports[0].failed[0];
  EXPECT_EQ(reports[0].bytes_per_instance.count("a-bad"), 0u);
  for (const SourceRecord& r : registry_.All()) {
    EXPECT_EQ(r.state, r.instance_id == "a-bad" ? SourceState::kStale : SourceState::kReady) << r.instance_id;
  }
}

// The only source's last block goes bad: what it served before stays (its blocks are checked
// one by one, moves are read in order, 4 at a time), and the rest comes from the checkpoint
// into the same buffer: every byte right (ExpectEqualsCheckpoint), counted once. (That the
// fallback writes no byte outside the missing ones is checked by shard_io_test: here those
// bytes are equal either way.)
TEST_F(ModelLoadingWholeBlocksTest, ADiskFallbackFillsOnlyTheBytesNoSourceGave) {
  auto bad = Seed("a-bad", "tp=1", Writable());
  ASSERT_EQ(bad.size(), 1u);
  registry_.SetStickyStale(true);
  auto buf = bad[0]->buffer();
  ASSERT_GT(buf.size(), 4 * workflows::kSourceBlockBytes);
  buf[buf.size() - 100] ^= std::byte{0x5a};  // in the last block
  const auto reports = LoadAll("new", "tp=1", [&](ModelLoaderOptions& o) { o.checkpoint_path = dir_.string(); });
  ASSERT_EQ(reports.size(), 1u);
  const LoadReport& r = reports[0];
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_NE(r.failed[0].find("a-bad"), std::string::npos) << r.failed[0];
  EXPECT_GT(r.bytes_from_sources, 0u) << "the moves before the bad one were read from the source";
  EXPECT_GT(r.bytes_from_disk, 0u);
  EXPECT_LT(r.bytes_from_disk, r.buffer_bytes);
  EXPECT_EQ(r.bytes_from_sources + r.bytes_from_disk, r.buffer_bytes);
}

// Segments of a move digest: cut at multiples of kSourceBlockBytes of the source offset.
TEST(MoveDigest, SegmentsAreCutAtSourceBlockBoundaries) {
  constexpr std::uint64_t B = workflows::kSourceBlockBytes;
  auto cut = [](std::uint64_t off, std::uint64_t len) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
    workflows::MoveDigest::ForEachSegment(off, len, [&](std::uint64_t o, std::uint64_t l) { out.emplace_back(o, l); });
    return out;
  };
  using V = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
  EXPECT_EQ(cut(B - 10, 30), (V{{B - 10, 10}, {B, 20}}));
  EXPECT_EQ(cut(0, 2 * B + 5), (V{{0, B}, {B, B}, {2 * B, 5}}));
  EXPECT_EQ(cut(3 * B, B), (V{{3 * B, B}}));
  EXPECT_EQ(cut(7, 0), V{});
  // The digest of segments is xxh3 over their digests, 8 bytes little-endian each.
  workflows::MoveDigest d;
  d.Add(0x0102030405060708ull);
  d.Add(42);
  const std::uint8_t le[16] = {8, 7, 6, 5, 4, 3, 2, 1, 42, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(d.Value(), XXH3_64bits(le, sizeof le));
}

// ModelLoaderOptions::metrics: a load counts once by result, its duration once, its bytes by
// origin as the LoadReport says, its live source instances, and its agent's READ bytes by peer add up to the bytes from
// sources; a failed load counts under its error code and adds no duration or bytes.
TEST_F(ModelLoadingTest, LoaderReportsLoadsDurationsAndBytesIntoItsRegistry) {
  auto seed = Seed("seed", "tp=2");
  MetricsRegistry metrics;
  ModelLoaderOptions o = LoaderOptions("metered", "tp=1", 0);
  o.metrics = &metrics;
  auto loader = ModelLoader::Create(registry_, model_, o);
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  auto report = (*loader)->Load();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ExpectEqualsCheckpoint(**loader, 0);
  ASSERT_GT(report->bytes_from_sources, 0u);
  auto sample = [&](const std::string& series) {
    const std::string text = metrics.Render();
    const auto at = text.find("\n" + series + " ");
    EXPECT_NE(at, std::string::npos) << series << " missing in\n" << text;
    return at == std::string::npos ? -1.0 : std::stod(text.substr(at + series.size() + 2));
  };
  EXPECT_EQ(sample("shardwire_loads_total{rank=\"0\",result=\"ok\"}"), 1);
  EXPECT_EQ(sample("shardwire_load_duration_seconds_count{rank=\"0\"}"), 1);
  EXPECT_EQ(sample("shardwire_load_bytes_total{rank=\"0\",origin=\"sources\"}"),
            static_cast<double>(report->bytes_from_sources));
  EXPECT_EQ(sample("shardwire_load_bytes_total{rank=\"0\",origin=\"disk\"}"), 0);
  EXPECT_EQ(sample("shardwire_load_source_instances{rank=\"0\"}"), 1);  // the seed, never failed
  // The loader's agent READ exactly the verified bytes from the two source ranks (no re-reads here).
  ASSERT_EQ(report->rereads, 0u);
  double read = 0;
  std::istringstream in(metrics.Render());
  for (std::string line; std::getline(in, line);)
    if (line.rfind("shardwire_transport_bytes_total{", 0) == 0 && line.find("op=\"READ\"") != std::string::npos)
      read += std::stod(line.substr(line.rfind(' ') + 1));
  EXPECT_EQ(read, static_cast<double>(report->bytes_from_sources));

  seed.clear();
  auto liar = Seed("liar", "tp=2", Liar());
  ModelLoaderOptions bad = LoaderOptions("metered-2", "tp=2", 0);
  bad.metrics = &metrics;
  auto failing = ModelLoader::Create(registry_, model_, bad);
  ASSERT_TRUE(failing.ok());
  ASSERT_EQ((*failing)->Load().status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(sample("shardwire_loads_total{rank=\"0\",result=\"unavailable\"}"), 1);
  EXPECT_EQ(sample("shardwire_load_duration_seconds_count{rank=\"0\"}"), 1) << "failed loads add no duration";
  EXPECT_EQ(sample("shardwire_load_source_instances{rank=\"0\"}"), 0) << "the liar was listed, then failed";
}

}  // namespace
}  // namespace shardwire
