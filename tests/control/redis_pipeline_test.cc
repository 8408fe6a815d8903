// RedisPipeline (src/control/redis_pipeline.h) against a real redis-server:
// the reply spin (the leader polls the socket before it blocks in read()).
//
// What would be false if the spin were broken:
//  - bytes taken off the socket while spinning and not handed to hiredis's
//    reader: the replies would be lost, the round would block until the
//    timeout and every command fail with kUnavailable, and the replies checked
//    below (each command's own ARGV echoed back, in order) would not match;
//  - the spin never engaging: rounds_answered_while_spinning() stays 0;
//  - a reply slower than the spin not read by the blocking path: the slow
//    script's reply below would be missing.
// No timing is asserted: the spin window only decides which path reads a reply.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "control/redis_fixture.h"
#include "control/redis_pipeline.h"

namespace shardwire::control {
namespace {

using testing_util::RedisServer;

// Returns its first argument (a bulk string), so each reply names its command.
const RedisScript kEcho{"echo", "return ARGV[1]"};
// Busy-waits ARGV[1] milliseconds inside Redis (TIME), then returns ARGV[2]:
// a reply that comes long after a short spin has ended.
const RedisScript kSlowEcho{"slow_echo",
                            "local t = redis.call('TIME')\n"
                            "local start = t[1] * 1000000 + t[2]\n"
                            "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= ARGV[1] * 1000\n"
                            "return ARGV[2]"};

// Collects the replies of submitted commands (bounded wait).
class Replies {
 public:
  RedisPipeline::Callback Expect(std::size_t i) {
    {
      std::lock_guard lock(mu_);
      if (got_.size() <= i) got_.resize(i + 1);
      ++expected_;
    }
    return [this, i](Result<RedisReplyPtr> r) {
      std::lock_guard lock(mu_);
      if (!r.ok()) {
        got_[i] = "error: " + r.status().ToString();
      } else if ((*r)->type != REDIS_REPLY_STRING) {
        got_[i] = "reply type " + std::to_string((*r)->type);
      } else {
        got_[i] = std::string((*r)->str, (*r)->len);
      }
      ++done_;
      cv_.notify_all();
    };
  }
  std::vector<std::string> Wait() {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return done_ >= expected_; });
    return got_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> got_;
  int expected_ = 0, done_ = 0;
};

class RedisPipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!RedisServer::Available()) GTEST_SKIP() << RedisServer::SkipReason();
    std::string error;
    redis_ = RedisServer::Start(&error);
    ASSERT_NE(redis_, nullptr) << error;
  }
  std::unique_ptr<RedisPipeline> Pipeline(int spin_us) {
    auto p = RedisPipeline::Start(redis_->url(), 5.0, 1000, spin_us);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(p).value() : nullptr;
  }
  // `rounds` rounds of `per_round` commands (held, then one Flush): every reply
  // must be its own command's argument, in order.
  void RunRounds(RedisPipeline& p, int rounds, int per_round) {
    for (int r = 0; r < rounds; ++r) {
      Replies replies;
      std::vector<std::string> want;
      for (int k = 0; k < per_round; ++k) {
        want.push_back("round " + std::to_string(r) + " command " + std::to_string(k) + std::string(k * 37, 'x'));
        p.Submit(kEcho, {want.back()}, /*idempotent=*/false, replies.Expect(k), /*hold=*/true);
      }
      p.Flush();
      EXPECT_EQ(replies.Wait(), want) << "round " << r;
    }
  }
  std::unique_ptr<RedisServer> redis_;
};

TEST_F(RedisPipelineTest, RepliesReadWhileSpinningAreEachCommandsOwnReply) {
  // The longest spin: nearly every round's first reply is read by the spin.
  auto p = Pipeline(RedisPipeline::kMaxReplySpinUs);
  ASSERT_TRUE(p);
  RunRounds(*p, 40, 1);
  RunRounds(*p, 20, 50);  // batches: the spin may read a part of the replies, hiredis the rest
  // Replies larger than one recv() of the spin (16 KiB): one 100 KiB reply.
  Replies big;
  const std::string payload(100 * 1024, 'y');
  p->Submit(kEcho, {payload}, false, big.Expect(0));
  EXPECT_EQ(big.Wait().at(0), payload);
  EXPECT_EQ(p->rounds_waited(), 61u);  // SCRIPT LOAD (synchronous, on first use) is not a round
  EXPECT_GT(p->rounds_answered_while_spinning(), 0u) << "the spin never read a reply";
}

TEST_F(RedisPipelineTest, WithoutSpinTheSameRepliesAndNoSpinning) {
  auto p = Pipeline(0);
  ASSERT_TRUE(p);
  RunRounds(*p, 20, 1);
  RunRounds(*p, 10, 50);
  EXPECT_EQ(p->rounds_waited(), 30u);
  EXPECT_EQ(p->rounds_answered_while_spinning(), 0u);
}

TEST_F(RedisPipelineTest, AReplySlowerThanTheSpinIsReadByTheBlockingRead) {
  // 0.1 ms of spin; the script takes 1 s, far longer than the spinning thread could be kept
  // off the CPU on a loaded machine.
  auto p = Pipeline(100);
  ASSERT_TRUE(p);
  RunRounds(*p, 1, 1);  // loads the connection
  const auto spun_before = p->rounds_answered_while_spinning();
  Replies slow;
  p->Submit(kSlowEcho, {"1000", "late reply"}, false, slow.Expect(0));
  EXPECT_EQ(slow.Wait().at(0), "late reply");
  EXPECT_EQ(p->rounds_answered_while_spinning(), spun_before) << "a 1 s reply cannot come within a 0.1 ms spin";
  RunRounds(*p, 5, 3);  // and the connection is still in step
}

// Increments KEYS-less counter ARGV[1], then busy-waits ARGV[2] milliseconds: a mutation whose
// reply comes after the pipeline's timeout.
const RedisScript kSlowIncrement{"slow_increment",
                                 "local n = redis.call('INCR', ARGV[1])\n"
                                 "local t = redis.call('TIME')\n"
                                 "local start = t[1] * 1000000 + t[2]\n"
                                 "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= ARGV[2] * 1000\n"
                                 "return tostring(n)"};

TEST_F(RedisPipelineTest, AMutationWhoseReplyIsLostIsTimedOutNotUnavailableAndNotResent) {
  // kUnavailable means "changed nothing, safe to retry" to the coordinator's clients (gRPC
  // UNAVAILABLE); a lost reply to a mutation must not say that (found by review, session 35).
  auto impatient = RedisPipeline::Start(redis_->url(), 0.2, 1000, 0);
  ASSERT_TRUE(impatient.ok()) << impatient.status().ToString();
  Replies lost;
  (*impatient)->Submit(kSlowIncrement, {"applied", "3000"}, /*idempotent=*/false, lost.Expect(0));
  const std::string got = lost.Wait().at(0);
  EXPECT_NE(got.find("error: timed out"), std::string::npos) << got;
  EXPECT_NE(got.find("whether it was applied is unknown"), std::string::npos) << got;
  // It was applied, once: not re-sent on a fresh connection.
  auto patient = Pipeline(0);
  ASSERT_TRUE(patient);
  Replies after;
  patient->Submit(kSlowIncrement, {"applied", "0"}, false, after.Expect(0));
  EXPECT_EQ(after.Wait().at(0), "2") << "the lost mutation ran once, this one second";
}

TEST_F(RedisPipelineTest, SpinOutsideItsBoundsIsInvalid) {
  EXPECT_EQ(RedisPipeline::Start(redis_->url(), 5.0, 1000, -1).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(RedisPipeline::Start(redis_->url(), 5.0, 1000, RedisPipeline::kMaxReplySpinUs + 1).status().code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardwire::control
