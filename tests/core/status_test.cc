#include "shardwire/status.h"

#include <gtest/gtest.h>

namespace shardwire {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("odd value " + std::to_string(x));
  return x / 2;
}

Status UseHalf(int x, int* out) {
  SW_ASSIGN_OR_RETURN(*out, Half(x));
  return Status::Ok();
}

TEST(Status, OkAndError) {
  EXPECT_TRUE(Status::Ok().ok());
  Status s = NotFound("tensor x");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_EQ(s.ToString(), "not found: tensor x");
  EXPECT_EQ(s.WithContext("file a").ToString(), "not found: file a: tensor x");
}

TEST(Status, ResultPropagates) {
  int out = 0;
  EXPECT_TRUE(UseHalf(8, &out).ok());
  EXPECT_EQ(out, 4);
  Status s = UseHalf(3, &out);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd value 3");
}

}  // namespace
}  // namespace shardwire
