#include "transport/ucx/shared_memory_tls.h"

#include <set>
#include <sstream>
#include <string>

namespace shardwire::transport::ucx {

bool UcxTlsSelectsSharedMemory(const char* ucx_tls) {
  if (ucx_tls == nullptr || *ucx_tls == '\0') return true;
  std::string list = ucx_tls;
  const bool negated = list.front() == '^';
  if (negated) list.erase(0, 1);
  std::set<std::string> names;
  std::istringstream in(list);
  for (std::string name; std::getline(in, name, ',');) names.insert(name);
  const auto named = [&](const char* n) { return names.count(n) != 0; };
  if (negated) return !(named("sm") || named("shm") || named("mm") || (named("posix") && named("sysv")));
  return named("all") || named("sm") || named("shm") || named("mm") || named("posix") || named("sysv");
}

}  // namespace shardwire::transport::ucx
