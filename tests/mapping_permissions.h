// For tests that check what memory a buffer lives in: the permissions /proc/self/maps
// gives the mapping that holds an address ("r--p": private read-only, "rw-p": private,
// "rw-s": shared). Linux only (proc(5)).
#pragma once

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace shardwire::testing_util {

/// The 4-character permissions of the mapping of this process that holds `p`, or "" when
/// no mapping holds it.
inline std::string MappingPermissions(const void* p) {
  std::ifstream maps("/proc/self/maps");
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long lo = 0, hi = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &lo, &hi, perms) == 3 && lo <= a && a < hi) return perms;
  }
  return "";
}

}  // namespace shardwire::testing_util
