// Plans a resharding of a small Llama-shaped model from an installed Shardwire and prints
// what it planned; exits 1 on any error. Built by tests/package/install_and_consume.sh both
// through find_package(shardwire) and through pkg-config.
#include <cstdio>

#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_layouts.h"
#include "shardwire/planner.h"

int main() {
  const char* config = R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 256, "torch_dtype": "bfloat16"})";
  auto parsed = shardwire::ParseModelConfig(config, "consumer");
  if (!parsed.ok()) return std::puts(parsed.status().ToString().c_str()), 1;
  auto model = shardwire::DescribeModel(*parsed);
  if (!model.ok()) return std::puts(model.status().ToString().c_str()), 1;
  auto from = shardwire::MakeLayoutFromString(*model, "fsdp=2");
  auto to = shardwire::MakeLayoutFromString(*model, "tp=2");
  if (!from.ok() || !to.ok()) return std::puts("layout error"), 1;
  auto plan = shardwire::PlanTransfer(*from, *to);
  if (!plan.ok()) return std::puts(plan.status().ToString().c_str()), 1;
  std::printf("planned %zu moves, %llu bytes\n", plan->moves().size(),
              static_cast<unsigned long long>(plan->total_bytes()));
  return plan->total_bytes() > 0 ? 0 : 1;
}
