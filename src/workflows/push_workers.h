// Runs one push's work on the pushing thread and helper threads started for it (the converter's
// rounds into mapped engine buffers, the direct copies into them: weight_publisher.cc).
//
// A push starts its helpers itself rather than keeping a pool: a push moves hundreds of MB,
// against tens of microseconds to start a thread, and a publisher between pushes then holds no
// thread that competes with the trainer's own compute.
// Thread-safety: `work` is called concurrently with distinct worker indices.
#pragma once

#include <cstddef>
#include <functional>
#include <system_error>
#include <thread>
#include <vector>

namespace shardwire::workflows {

/// Calls work(0) on this thread and work(1) .. work(workers - 1) on helper threads, and returns
/// when all have returned. A helper that cannot be started (std::system_error: no threads left)
/// is skipped, so `work` must take its items from a shared queue (an atomic index) rather than
/// own a fixed share of them. workers 0 counts as 1.
inline void RunOnWorkers(std::size_t workers, const std::function<void(std::size_t)>& work) {
  std::vector<std::thread> helpers;
  for (std::size_t w = 1; w < workers; ++w) {
    try {
      helpers.emplace_back(work, w);
    } catch (const std::system_error&) {
      break;  // no thread: the others take its items
    }
  }
  work(0);
  for (auto& h : helpers) h.join();
}

}  // namespace shardwire::workflows
