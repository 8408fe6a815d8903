// JsonLogFormatter (shardwire/json_log.h): every line is one JSON object with time, level,
// logger and message; quotes, backslashes, newlines and control characters in a message come
// back unchanged through a JSON parser (nlohmann::json, an independent reader); bytes that are
// not UTF-8 do not break the line.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "shardwire/json_log.h"

namespace shardwire {
namespace {

std::vector<nlohmann::json> Lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    out.push_back(j);
  }
  return out;
}

TEST(JsonLog, OneObjectPerLineWithEscapedMessages) {
  std::ostringstream os;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os);
  spdlog::logger logger("shardwire-test", sink);
  logger.set_formatter(std::make_unique<JsonLogFormatter>());
  logger.set_level(spdlog::level::debug);
  const std::string tricky = "peer \"a\\b\" said:\nline two\ttab \x01 end";
  logger.warn("{}", tricky);
  logger.debug("plain");
  logger.error("bad utf-8: \xff\xfe done");
  const auto lines = Lines(os.str());
  ASSERT_EQ(lines.size(), 3u) << os.str();
  EXPECT_EQ(lines[0]["message"], tricky);
  EXPECT_EQ(lines[0]["level"], "warning");
  EXPECT_EQ(lines[0]["logger"], "shardwire-test");
  EXPECT_TRUE(std::regex_match(lines[0]["time"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")))
      << lines[0]["time"];
  EXPECT_EQ(lines[1]["level"], "debug");
  EXPECT_EQ(lines[1]["message"], "plain");
  EXPECT_EQ(lines[2]["level"], "error");
  EXPECT_EQ(lines[2]["message"], "bad utf-8: \xEF\xBF\xBD\xEF\xBF\xBD done") << "invalid bytes become U+FFFD";
  EXPECT_EQ(lines[0].size(), 4u) << "exactly time, level, logger, message";
}

}  // namespace
}  // namespace shardwire
