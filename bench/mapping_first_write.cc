// Issue 10 item 1: what the first write through a fresh mapping of shared memory
// costs, and which pre-fault removes it. A System V segment (what UCX's sysv
// transport allocates an arena in) is written by its owner through a first
// mapping (the engine loading its shards); a second mapping (the trainer's view of
// the engine's arena, ucp_rkey_ptr) is then prepared with each method and written
// with memcpy twice. Reference in the same run: the second memcpy through the
// same mapping (steady state). Page faults from getrusage(ru_minflt).
//
//   ./build/bench/mapping_first_write [MiB=256]
//
// Methods: none; madvise(MADV_POPULATE_WRITE) only (what the transport did before
// this fix); one atomic byte access per page (PrefaultForWrite kTouch = kAuto,
// what PrepareTransfer does now); madvise, then the access per page. Under a shadow-paging hypervisor (PVM) madvise
// fills the guest kernel's page tables but not the hypervisor's, so its first
// memcpy is still slow with zero faults counted; an access per page is needed.
#include <sys/ipc.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "transport/prefault.h"

namespace {

using Clock = std::chrono::steady_clock;

long Faults() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt + u.ru_majflt;
}

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

int main(int argc, char** argv) {
  using shardwire::transport::PrefaultForWrite;
  using shardwire::transport::PrefaultMethod;
  const std::size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
  const std::size_t n = mib << 20;
  const std::size_t pages = n / static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<char> src(n, 1);
  std::printf("fresh second mapping of a %zu MiB System V segment the owner has written (%zu pages)\n", mib, pages);
  std::printf("%-16s %12s %12s %10s %14s %10s %14s %12s\n", "prefault", "prep s", "prep us/pg", "prep flt",
              "1st copy GB/s", "1st flt", "2nd copy GB/s", "1st / 2nd");
  struct Method {
    const char* name;
    bool run;
    PrefaultMethod method;
  };
  const Method methods[] = {{"none", false, PrefaultMethod::kTouch},
                            {"madvise only", true, PrefaultMethod::kMadvise},
                            {"touch only", true, PrefaultMethod::kTouch},
                            {"madvise+touch", true, PrefaultMethod::kMadvise}};
  for (const Method& m : methods) {
    const int id = ::shmget(IPC_PRIVATE, n, IPC_CREAT | 0600);
    if (id < 0) {
      std::perror("shmget");
      return 1;
    }
    auto* owner = static_cast<char*>(::shmat(id, nullptr, 0));
    auto* view = static_cast<char*>(::shmat(id, nullptr, 0));
    ::shmctl(id, IPC_RMID, nullptr);
    if (owner == reinterpret_cast<char*>(-1) || view == reinterpret_cast<char*>(-1)) {
      std::perror("shmat");
      return 1;
    }
    std::memset(owner, 3, n);
    auto t0 = Clock::now();
    long f0 = Faults();
    if (m.run) PrefaultForWrite(view, n, m.method);
    if (m.run && m.method == PrefaultMethod::kMadvise && m.name[7] == '+')
      PrefaultForWrite(view, n, PrefaultMethod::kTouch);
    const double prep_s = Since(t0);
    const long prep_faults = Faults() - f0;
    t0 = Clock::now();
    f0 = Faults();
    std::memcpy(view, src.data(), n);
    const double first_s = Since(t0);
    const long first_faults = Faults() - f0;
    t0 = Clock::now();
    std::memcpy(view, src.data(), n);
    const double second_s = Since(t0);
    std::printf("%-16s %12.3f %12.2f %10ld %14.2f %10ld %14.2f %12.2f\n", m.name, prep_s, prep_s / pages * 1e6,
                prep_faults, n / first_s / 1e9, first_faults, n / second_s / 1e9, second_s / first_s);
    ::shmdt(view);
    ::shmdt(owner);
  }
  return 0;
}
