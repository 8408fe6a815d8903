// ReadPemFile, CheckPemKind (pem_file.h).
#include "control/pem_file.h"

#include <fmt/format.h>

#include "core/regular_file.h"

namespace shardwire::control {

Result<std::string> ReadPemFile(const std::string& path, std::string_view what) {
  std::string pem;
  if (Status s = ReadRegularFile(path, &pem, kMaxPemFileBytes); !s.ok()) {
    return InvalidArgument(fmt::format("cannot read the {} file: {}", what, s.message()));
  }
  if (pem.empty()) return InvalidArgument(fmt::format("the {} file '{}' is empty", what, path));
  return pem;
}

// gRPC would only log a file that is not PEM of its kind and fail to listen, which reads like a
// port in use. Whether key and certificate belong together is checked by gRPC when it starts.
Status CheckPemKind(const std::string& pem, const std::string& path, std::string_view what, std::string_view marker) {
  const std::string begin = "-----BEGIN ";
  for (auto at = pem.find(begin); at != std::string::npos; at = pem.find(begin, at + 1)) {
    const auto end = pem.find("-----", at + begin.size());
    if (end == std::string::npos) break;
    const std::string_view label(pem.data() + at + begin.size(), end - at - begin.size());
    if (label.size() >= marker.size() && label.substr(label.size() - marker.size()) == marker) return Status::Ok();
  }
  return InvalidArgument(
      fmt::format("the {} file '{}' holds no PEM block \"-----BEGIN ...{}-----\"", what, path, marker));
}

}  // namespace shardwire::control
