// Uses an installed Shardwire from every layer that links a third-party service library:
// plans a resharding of a small Llama-shaped model (model, layout, plan), starts an in-memory
// coordinator and puts and gets a key through a client (control: gRPC, protobuf, hiredis),
// serves /metrics (cpp-httplib) and creates a transport agent (UCX). Prints what it planned;
// exits 1 on any error. Built by tests/package/install_and_consume.sh both through
// find_package(shardwire) and through pkg-config.
#include <cstdio>
#include <string>

#include "shardwire/agent.h"
#include "shardwire/coordinator.h"
#include "shardwire/metrics.h"
#include "shardwire/metrics_http.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_layouts.h"
#include "shardwire/planner.h"

namespace {

int Fail(const shardwire::Status& s) {
  std::puts(s.ToString().c_str());
  return 1;
}

}  // namespace

int main() {
  const char* config = R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 256, "torch_dtype": "bfloat16"})";
  auto parsed = shardwire::ParseModelConfig(config, "consumer");
  if (!parsed.ok()) return Fail(parsed.status());
  auto model = shardwire::DescribeModel(*parsed);
  if (!model.ok()) return Fail(model.status());
  auto from = shardwire::MakeLayoutFromString(*model, "fsdp=2");
  auto to = shardwire::MakeLayoutFromString(*model, "tp=2");
  if (!from.ok() || !to.ok()) return std::puts("layout error"), 1;
  auto plan = shardwire::PlanTransfer(*from, *to);
  if (!plan.ok()) return Fail(plan.status());

  auto server = shardwire::CoordinatorServer::Start({});
  if (!server.ok()) return Fail(server.status());
  shardwire::CoordinatorClientOptions client_options;
  client_options.address = (*server)->address();
  auto client = shardwire::CoordinatorClient::Connect(client_options);
  if (!client.ok()) return Fail(client.status());
  const std::string value = "consumer";
  if (auto s = (*client)->Put("k", std::as_bytes(std::span(value))); !s.ok()) return Fail(s);
  auto got = (*client)->Get("k", 5);
  if (!got.ok()) return Fail(got.status());
  if (std::string(reinterpret_cast<const char*>(got->data()), got->size()) != value) {
    return std::puts("coordinator returned other bytes"), 1;
  }

  shardwire::MetricsRegistry registry;
  auto http = shardwire::MetricsHttpServer::Start(registry);
  if (!http.ok()) return Fail(http.status());

  shardwire::AgentOptions agent_options;
  agent_options.name = "consumer";
  auto agent = shardwire::Agent::Create(agent_options);
  if (!agent.ok()) return Fail(agent.status());

  std::printf("planned %zu moves, %llu bytes; coordinator, metrics and agent up\n", plan->moves().size(),
              static_cast<unsigned long long>(plan->total_bytes()));
  return plan->total_bytes() > 0 ? 0 : 1;
}
