// The layout tests' models: a config.json text described as ModelConfig -> ModelDescription,
// failing the test (and returning an empty description) when either step fails.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "shardwire/model_config.h"
#include "shardwire/model_description.h"

namespace shardwire::layout_test {

/// DescribeModel(ParseModelConfig(json)), with each error reported as a test failure.
inline ModelDescription Describe(const std::string& json) {
  auto config = ParseModelConfig(json, "test");
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  if (!config.ok()) return {};
  auto model = DescribeModel(*config);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return model.ok() ? *model : ModelDescription{};
}

}  // namespace shardwire::layout_test
