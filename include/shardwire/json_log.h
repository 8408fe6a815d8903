// Structured logs: an spdlog formatter that writes one JSON object per line,
//   {"time":"2026-12-02T14:50:00.123456Z","level":"info","logger":"","message":"..."}
// time in UTC (ISO 8601, microseconds), level as spdlog names it (trace, debug, info,
// warning, error, critical), logger the spdlog logger's name (empty for the default
// logger), message the formatted text. Strings are escaped by nlohmann::json (quotes,
// backslashes, newlines and other control characters); bytes that are not valid UTF-8 are
// replaced by U+FFFD, so every line parses. `shardwire --log-format json` uses it.
//
// Thread-safety: the formatter is called under the sink's lock as spdlog does for any
// formatter; UseJsonLogFormat changes the default logger and must not race with
// other spdlog configuration calls.
#pragma once

#include <spdlog/formatter.h>

#include <memory>

namespace shardwire {

/// The JSON-lines formatter described above.
class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

/// Installs JsonLogFormatter on every sink of spdlog's default logger (the one Shardwire
/// logs to).
void UseJsonLogFormat();

/// Replaces spdlog's default logger (which writes to stdout) with one of the same name, level
/// and (text) format that writes to stderr: stdout stays the program's output (the CLI's
/// results, a worker's protocol lines). The CLI and the Python module call it at start. Same
/// thread-safety as UseJsonLogFormat.
void LogToStderr();

}  // namespace shardwire
