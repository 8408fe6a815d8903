// Property checks shared by the libFuzzer targets in fuzz/: a violated property aborts,
// which libFuzzer reports as a crash and saves the input as a reproducer.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "shardwire/status.h"

namespace shardwire::fuzz {

/// Aborts with `what` on stderr when `ok` is false.
inline void Check(bool ok, const char* fuzzer, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "%s: property violated: %s\n", fuzzer, what);
    std::abort();
  }
}

/// A rejection must carry one of the documented codes and a message.
inline void CheckRejection(const Status& status, const char* fuzzer, std::initializer_list<ErrorCode> allowed) {
  bool documented = false;
  for (ErrorCode code : allowed) documented = documented || status.code() == code;
  if (!documented) {
    std::fprintf(stderr, "%s: undocumented error code: %s\n", fuzzer, status.ToString().c_str());
    std::abort();
  }
  Check(!status.message().empty(), fuzzer, "a rejection has a message");
}

}  // namespace shardwire::fuzz
