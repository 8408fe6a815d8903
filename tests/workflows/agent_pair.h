// Two transport agents in this test process, connected both ways: `receiver` waits for
// notifications (workflows::Inbox), `sender` sends them. Real agents (the process's default
// backend), no coordinator: the metadata blobs are exchanged directly.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>

#include "shardwire/agent.h"

namespace shardwire::workflows {

struct AgentPair {
  std::unique_ptr<Agent> sender, receiver;
  std::string sender_name, receiver_name;  // "<prefix>-sender", "<prefix>-receiver"
};

/// Creates and wires up the two agents named after `prefix`; on failure the test has failed
/// already and the agents are null.
inline AgentPair ConnectedPair(const std::string& prefix) {
  AgentPair p{nullptr, nullptr, prefix + "-sender", prefix + "-receiver"};
  auto a = Agent::Create({.name = p.sender_name});
  auto b = Agent::Create({.name = p.receiver_name});
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok()) return p;
  p.sender = std::move(*a);
  p.receiver = std::move(*b);
  auto blob_a = p.sender->ExportMetadata();
  auto blob_b = p.receiver->ExportMetadata();
  EXPECT_TRUE(blob_a.ok() && blob_b.ok());
  EXPECT_TRUE(p.sender->ImportMetadata(*blob_b).ok());
  EXPECT_TRUE(p.receiver->ImportMetadata(*blob_a).ok());
  EXPECT_TRUE(p.sender->WireUp(p.receiver_name, 10).ok());
  EXPECT_TRUE(p.receiver->WireUp(p.sender_name, 10).ok());
  return p;
}

}  // namespace shardwire::workflows
