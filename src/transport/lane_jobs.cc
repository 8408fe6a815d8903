// The per-lane job state machine: a post becomes one Job per lane; the lane
// issues its operations within the per-peer flow-control limits (IssueOps),
// completes them with the backend's flush (StartFlush; UCX: a flush, or a fence
// for WRITEs sent as messages),
// and the last lane sends the notification (ReportLane, SendNotification),
// then the transfer is declared done (FinishJob). Phases: Agent::Impl::Phase.
// Everything here runs with the job's Lane::mu held (agent_impl.h).
#include <time.h>

#include <atomic>

#include <fmt/format.h>

#include "transport/agent_impl.h"
#include "transport/strided_rows.h"

namespace shardwire {

using transport::CopyRows;
using transport::PostCounts;

namespace {

// Operations one job may issue before the lane turns to the next job.
constexpr std::size_t kIssueBatch = 64;

// IssueOps reads the thread's CPU clock (CLOCK_THREAD_CPUTIME_ID, a system call: vDSO serves only
// the wall clocks, and one call costs 1-3 us on the paravirtualised development host) around a batch
// of at least this many bytes; a smaller batch counts its wall time as its CPU time. Two such calls
// per 64 x 16 KiB post were about 15% of its time (perf, docs/benchmarks_history.md "Small transfers"),
// against under 4% of a 4 MiB batch's copy even from cache.
constexpr std::uint64_t kCpuClockMinBatchBytes = std::uint64_t{4} << 20;

// Nanoseconds of `clock` (CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID).
std::uint64_t ClockNs(clockid_t clock) {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace

void Agent::Impl::ReleaseOp(Job* j, OpCookie* c) {
  --j->ops_in_flight;
  j->bytes_in_flight -= c->bytes;
  if (j->lep != nullptr) {
    --j->lep->ops_in_flight;
    j->lep->bytes_in_flight -= c->bytes;
  }
  j->free_cookies.push_back(static_cast<std::uint32_t>(c - j->cookies.data()));
}

void Agent::Impl::OnOpDone(Completion* done, const Status* error) {
  auto* c = static_cast<OpCookie*>(done);
  Job* j = c->job;
  --j->outstanding;
  if (--c->requests == 0) ReleaseOp(j, c);
  if (error != nullptr) j->Fail(*error);
}

void Agent::Impl::OnFlushRequestDone(Completion* done, const Status* error) {
  Job* j = static_cast<JobCompletion*>(done)->job;
  --j->outstanding;
  if (error != nullptr) j->Fail(*error);
}

void Agent::Impl::OnFlushVisible(Completion* done, const Status* error) {
  Job* j = static_cast<JobCompletion*>(done)->job;
  j->awaiting_ack = false;
  j->flush_done = true;
  if (error != nullptr) j->Fail(*error);
}

void Agent::Impl::OnNotifySent(Completion* done, const Status* error) {
  Job* j = static_cast<JobCompletion*>(done)->job;
  --j->outstanding;
  j->notify_done = true;
  if (error != nullptr) j->Fail(*error);
}

bool Agent::Impl::ReportLane(Job& j) {
  if (j.lane_reported) return false;
  j.lane_reported = true;
  std::lock_guard<std::mutex> g(mu);
  TransferCore& t = *j.t;
  if (t.seq != j.seq) return false;
  if (t.lanes_pending > 0) --t.lanes_pending;
  if (t.state == TransferState::kRunning && j.failed) {
    t.state = TransferState::kFailed;
    t.error = j.error.WithContext(fmt::format("transfer {} to {}", t.id, t.peer_name));
    t.metrics.Failed(t.error);
    NotifyWaiters();
    return false;
  }
  if (t.lanes_pending > 0) return false;
  if (t.state == TransferState::kRunning && t.cancel) {
    t.state = TransferState::kCancelled;
    NotifyWaiters();
    return false;
  }
  if (t.state != TransferState::kRunning) {
    NotifyWaiters();
    return false;
  }
  // Success is declared by FinishJob once every job has returned all its
  // backend requests, so a caller woken by Wait can Post or Release at once.
  return t.has_wire;
}

void Agent::Impl::SettleNotification(Job& j) {
  std::lock_guard<std::mutex> g(mu);
  TransferCore& t = *j.t;
  if (t.seq == j.seq && t.state == TransferState::kRunning) {
    if (j.failed) {
      t.state = TransferState::kFailed;
      t.error = j.error.WithContext(fmt::format("transfer {} to {}", t.id, t.peer_name));
      t.metrics.Failed(t.error);
    } else {
      t.notified = true;
    }
  }
  NotifyWaiters();
}

void Agent::Impl::FinishJob(Job& j) {
  std::lock_guard<std::mutex> g(mu);
  TransferCore& t = *j.t;
  if (t.jobs_alive > 0) --t.jobs_alive;
  if (t.seq == j.seq && t.state == TransferState::kRunning && t.lanes_pending == 0 && t.jobs_alive == 0 &&
      (!t.has_wire || t.notified)) {
    t.state = TransferState::kDone;
    t.metrics.Done(t.total_bytes);
  }
  if (t.state != TransferState::kRunning && t.jobs_alive == 0) active.erase(&t);
  NotifyWaiters();
}

std::size_t Agent::Impl::IssueOps(Lane& lane, Job& j) {
  LaneEp& lep = *j.lep;
  const auto& ops = *j.ops;
  const TransferCore& t = *j.t;
  std::size_t issued = 0;
  bool copied = false;
  std::uint64_t copy_blocks = 0, copy_bytes = 0, kernel_blocks = 0, kernel_bytes = 0;
  PostCounts posted;
  transport::TransportBackend& be = *backend;
  std::uint64_t batch_bytes = 0;  // at most what this call issues (credits may stop it earlier)
  for (std::size_t i = j.next; i < ops.size() && i < j.next + kIssueBatch; ++i) batch_bytes += ops[i].bytes();
  const bool cpu_clock = batch_bytes >= kCpuClockMinBatchBytes;
  const std::uint64_t wall0 = ClockNs(CLOCK_MONOTONIC), cpu0 = cpu_clock ? ClockNs(CLOCK_THREAD_CPUTIME_ID) : 0;
  // CPU nanoseconds since cpu0; the wall time `wall_ns` for a batch too small to read the CPU clock for.
  auto cpu_ns = [&](std::uint64_t wall_ns) { return cpu_clock ? ClockNs(CLOCK_THREAD_CPUTIME_ID) - cpu0 : wall_ns; };
  while (j.next < ops.size() && issued < kIssueBatch && !j.failed) {
    const PreparedOp& o = ops[j.next];
    const std::uint64_t bytes = o.bytes();
    if (o.kernel_copy) {
      // The kernel copies from / into the peer's pages (process_vm_readv /
      // process_vm_writev): no mapping of the peer here, no backend request, no
      // credit (ReadPath, WritePath). This op and the kernel copies that follow it in the
      // batch go into shared system calls (PeerProcess::ReadBatch / WriteBatch).
      std::vector<transport::RowCopy>& batch = lane.kernel_batch;
      batch.clear();
      std::uint64_t batch_bytes_copied = 0;
      std::size_t end = j.next;
      for (; end < ops.size() && issued + (end - j.next) < kIssueBatch && ops[end].kernel_copy; ++end) {
        const PreparedOp& k = ops[end];
        batch.push_back({k.local, k.local_stride, k.remote_addr, k.remote_stride, k.count, k.length});
        batch_bytes_copied += k.bytes();
      }
      Status st = t.op == TransferOp::kRead ? j.peer->kernel_copy.ReadBatch(batch)
                                            : j.peer->kernel_copy.WriteBatch(batch);
      if (!st.ok()) {
        j.Fail(st.WithContext(
            fmt::format("{} peer {}", t.op == TransferOp::kRead ? "READ from" : "WRITE to", t.peer_name)));
        break;
      }
      copied = true;
      kernel_blocks += end - j.next;
      kernel_bytes += batch_bytes_copied;
      issued += end - j.next;
      j.next = end;
      continue;
    }
    if (!t.am_write && o.rkey_index < lep.mapped_delta.size() && lep.mapped_delta[o.rkey_index]) {
      // The peer's region is mapped here (shared memory): the one-sided
      // move is a 2-D memcpy by this lane, no backend request, no credit.
      std::byte* remote =
          reinterpret_cast<std::byte*>(static_cast<std::intptr_t>(o.remote_addr) + *lep.mapped_delta[o.rkey_index]);
      if (t.op == TransferOp::kRead) {
        CopyRows(o.local, o.local_stride, remote, o.remote_stride, o.count, o.length);
      } else {
        // The peer's buffer: this lane will not read it again, so stream it (no
        // read-for-ownership of each destination line).
        transport::CopyRowsStreaming(remote, o.remote_stride, o.local, o.local_stride, o.count, o.length);
      }
      copied = true;
      ++copy_blocks;
      copy_bytes += bytes;
      ++j.next;
      ++issued;
      continue;
    }
    if (lep.ops_in_flight >= lane.ops_limit) break;
    if (lep.bytes_in_flight > 0 && lep.bytes_in_flight + bytes > lane.bytes_limit) break;
    if (j.free_cookies.empty()) break;
    const std::uint32_t ci = j.free_cookies.back();
    j.free_cookies.pop_back();
    OpCookie& c = j.cookies[ci];
    c.done = &Impl::OnOpDone;
    c.job = &j;
    c.bytes = bytes;
    Status error;
    // One backend call per op (UCX: one request per row).
    j.backend_ops = true;
    const std::uint32_t pending = be.PostOp(lane.index, lep.link, t.op, t.am_write, o, &c, posted, error);
    c.requests = pending;
    j.outstanding += pending;
    if (!error.ok()) j.Fail(std::move(error));
    ++j.next;
    ++issued;
    if (c.requests == 0) {
      j.free_cookies.push_back(ci);
    } else {
      ++j.ops_in_flight;
      j.bytes_in_flight += bytes;
      ++lep.ops_in_flight;
      lep.bytes_in_flight += bytes;
    }
  }
  // Direct copies must be visible before the flush/notification that follows.
  if (copied) std::atomic_thread_fence(std::memory_order_release);
  if (copy_blocks > 0) {
    counters.direct_copy_blocks.fetch_add(copy_blocks, std::memory_order_relaxed);
    counters.direct_copy_bytes.fetch_add(copy_bytes, std::memory_order_relaxed);
    if (posted.requests == 0) {  // only direct copies in this batch: its time is theirs
      const std::uint64_t wall_ns = ClockNs(CLOCK_MONOTONIC) - wall0;
      counters.direct_copy_ns.fetch_add(wall_ns, std::memory_order_relaxed);
      counters.direct_copy_cpu_ns.fetch_add(cpu_ns(wall_ns), std::memory_order_relaxed);
    }
  }
  if (kernel_blocks > 0) {
    counters.kernel_copy_blocks.fetch_add(kernel_blocks, std::memory_order_relaxed);
    counters.kernel_copy_bytes.fetch_add(kernel_bytes, std::memory_order_relaxed);
    if (posted.requests == 0 && copy_blocks == 0) {  // only kernel copies in this batch: its time is theirs
      const std::uint64_t wall_ns = ClockNs(CLOCK_MONOTONIC) - wall0;
      counters.kernel_copy_ns.fetch_add(wall_ns, std::memory_order_relaxed);
      counters.kernel_copy_cpu_ns.fetch_add(cpu_ns(wall_ns), std::memory_order_relaxed);
    }
  }
  if (posted.requests > 0) {
    counters.ucx_requests.fetch_add(posted.requests, std::memory_order_relaxed);
    counters.ucx_bytes.fetch_add(posted.bytes, std::memory_order_relaxed);
  }
  return issued;
}

void Agent::Impl::StartFlush(Lane& lane, Job& j) {
  const bool as_message = j.t->am_write && j.t->op == TransferOp::kWrite;
  j.flush_request.job = &j;
  j.flush_request.done = &Impl::OnFlushRequestDone;
  j.flush_visible.job = &j;
  j.flush_visible.done = &Impl::OnFlushVisible;
  j.awaiting_ack = true;
  std::uint32_t pending = 0;
  Status st = backend->Flush(lane.index, j.lep->link, as_message, &j.flush_request, &j.flush_visible, pending);
  j.outstanding += pending;
  if (!st.ok()) {
    j.awaiting_ack = false;
    j.Fail(std::move(st));
  }
}

void Agent::Impl::SendNotification(Job& j) {
  j.notify.job = &j;
  j.notify.done = &Impl::OnNotifySent;
  std::uint32_t pending = 0;
  Status st = backend->Send(j.lane->index, j.lep->link, j.t->post_wire, &j.notify, pending);
  if (!st.ok()) {
    j.notify_done = true;
    j.Fail(std::move(st));
  } else if (pending == 0) {
    j.notify_done = true;
  } else {
    j.outstanding += pending;
  }
}

bool Agent::Impl::AdvanceJobs(Lane& lane) {
  bool did = false;
  for (auto it = lane.jobs.begin(); it != lane.jobs.end();) {
    Job& j = **it;
    bool cancel = false;
    {
      std::lock_guard<std::mutex> g(mu);
      cancel = j.t->cancel && j.t->seq == j.seq;
      if (!j.failed && j.t->seq == j.seq && j.t->state == TransferState::kFailed && j.phase != Phase::kNotifying)
        j.Fail(j.t->error);
    }
    if (j.peer->failed.load()) {
      std::lock_guard<std::mutex> g(mu);
      j.Fail(j.peer->failure);
    }
    if (j.failed || (cancel && j.phase == Phase::kIssue)) {
      // Stop issuing; finish once the backend has returned every request.
      if (j.phase == Phase::kNotifying) {
        SettleNotification(j);
        j.phase = Phase::kFinished;
        did = true;
      } else if (!j.lane_reported) {
        ReportLane(j);
        did = true;
      }
      if (j.outstanding == 0) {
        if (j.awaiting_ack) {
          backend->ForgetAck(lane.index, &j.flush_visible);
          j.awaiting_ack = false;
        }
        j.phase = Phase::kFinished;
        FinishJob(j);
        it = lane.jobs.erase(it);
        did = true;
        continue;
      }
      ++it;
      continue;
    }
    switch (j.phase) {
      case Phase::kIssue:
        if (IssueOps(lane, j) > 0) did = true;
        if (!j.failed && j.next == j.ops->size()) {
          // WRITEs as messages fence only once every write was handed over (the
          // target acknowledges what arrived before the fence).
          if (!(j.t->am_write && j.t->op == TransferOp::kWrite) || j.ops_in_flight == 0) {
            j.phase = Phase::kFlushing;
            if (j.backend_ops || j.ops->empty()) {
              StartFlush(lane, j);  // an empty job is WireUp's: its flush completes once wired up
            } else {
              // Only kernel copies and direct copies: the bytes were in place when each returned
              // (fenced in IssueOps), so there is nothing to flush. A UCX endpoint flush would
              // only wait on the transport's state towards the peer (a shared-memory FIFO it
              // finds full), which these bytes never used.
              j.flush_done = true;
            }
            did = true;
          }
        }
        break;
      case Phase::kFlushing:
        if (j.flush_done && j.ops_in_flight == 0) {
          if (ReportLane(j)) {
            j.phase = Phase::kNotifying;
            SendNotification(j);
          } else {
            j.phase = Phase::kFinished;
          }
          did = true;
        }
        break;
      case Phase::kNotifying:
        if (j.notify_done) {
          SettleNotification(j);
          j.phase = Phase::kFinished;
          did = true;
        }
        break;
      case Phase::kFinished:
        break;
    }
    if (j.phase == Phase::kFinished && j.outstanding == 0) {
      FinishJob(j);
      it = lane.jobs.erase(it);
      did = true;
      continue;
    }
    ++it;
  }
  return did;
}

}  // namespace shardwire
