// P2P loading against the real coordinator (gRPC on loopback, in-memory state).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/coordinator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/model_loading.h"
#include "shardwire/shard_io.h"

namespace shardwire {
namespace {

TEST(ModelLoadingCoordinator, HeartbeatsKeepASourceReadyPastTheStaleTime) {
  CoordinatorServerOptions so;
  so.source_stale_after_s = 1.5;
  auto server = CoordinatorServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  CoordinatorClientOptions co;
  co.address = (*server)->address();
  auto client = CoordinatorClient::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto registry = MakeCoordinatorSourceRegistry(**client);
  auto config = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 128,
      "torch_dtype": "bfloat16"})",
                                 "t");
  auto model = DescribeModel(*config);
  auto identity = MakeModelIdentity(*model, "r1");
  ModelSourceOptions o;
  o.instance_id = "seed";
  o.layout = "tp=1";
  o.heartbeat_interval_s = 0.3;
  auto source = ModelSource::Create(*registry, *model, *identity, o, {});
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  // Until one listing shows the record READY with a heartbeat later than the stale time after
  // its registration (polled: how soon that happens depends on how fast this process runs).
  bool ready_past_stale_time = false;
  for (int i = 0; i < 600 && !ready_past_stale_time; ++i) {  // 60 s at most
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto list = (*client)->ListSources(identity->Digest(), std::nullopt);
    ASSERT_TRUE(list.ok()) << list.status().ToString();
    ASSERT_EQ(list->size(), 1u);
    const SourceRecord& r = (*list)[0];
    EXPECT_EQ(r.instance_id, "seed");
    ready_past_stale_time = r.state == SourceState::kReady && r.last_heartbeat_unix_ms > r.registered_unix_ms + 1500;
  }
  EXPECT_TRUE(ready_past_stale_time) << "no heartbeat kept the source READY past its stale time";
  source->reset();  // deregisters
  auto list = (*client)->ListSources(identity->Digest(), std::nullopt);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

}  // namespace
}  // namespace shardwire
