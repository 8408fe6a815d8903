// Endpoint introspection (endpoint_info.h).
#include "transport/ucx/endpoint_info.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace shardwire::transport {

std::vector<std::string> EndpointTransports(ucp_ep_h ep) {
  char* text = nullptr;
  std::size_t size = 0;
  FILE* f = ::open_memstream(&text, &size);
  if (f == nullptr) return {};
  ucp_ep_print_info(ep, f);
  std::fclose(f);
  std::string all(text != nullptr ? text : "", size);
  std::free(text);
  std::vector<std::string> out;
  std::size_t pos = 0;
  while ((pos = all.find("lane[", pos)) != std::string::npos) {
    const std::size_t colon = all.find(':', pos);
    if (colon == std::string::npos) break;
    std::size_t p = all.find_first_not_of(' ', colon + 1);
    if (p == std::string::npos) break;
    const std::size_t idx_end = all.find(':', p);
    const std::size_t line_end = all.find('\n', p);
    if (idx_end == std::string::npos || idx_end > line_end) {
      pos = colon;
      continue;
    }
    const std::size_t tl_end = all.find_first_of(" \n", idx_end + 1);
    std::string tl = all.substr(idx_end + 1, tl_end - idx_end - 1);
    if (auto dot = tl.rfind('.'); dot != std::string::npos) tl.resize(dot);  // "tcp/lo.0" -> "tcp/lo"
    out.push_back(tl);
    pos = line_end == std::string::npos ? all.size() : line_end;
  }
  return out;
}

bool OnlyTcp(const std::vector<std::string>& transports) {
  if (transports.empty()) return false;
  return std::all_of(transports.begin(), transports.end(), [](const std::string& t) { return t.rfind("tcp/", 0) == 0; });
}


}  // namespace shardwire::transport
