// The per-lane job state machine: a post becomes one Job per lane; the lane
// issues its operations within the per-peer flow-control limits (IssueOps),
// completes them with a flush (put/get) or a fence (active-message writes),
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
using transport::kFenceAmId;
using transport::kNotifyAmId;
using transport::kWriteAmId;

namespace {

// Operations one job may issue before the lane turns to the next job.
constexpr std::size_t kIssueBatch = 64;

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

void Agent::Impl::OnOpDone(void* request, ucs_status_t status, void* user_data) {
  auto* c = static_cast<OpCookie*>(user_data);
  Job* j = c->job;
  --j->outstanding;
  if (--c->requests == 0) ReleaseOp(j, c);
  if (status != UCS_OK) {
    const char* what = j->t->op == TransferOp::kRead ? "ucp_get_nbx" : (j->t->am_write ? "ucp_am_send_nbx(write)" : "ucp_put_nbx");
    j->Fail(UcsError(what, status));
  }
  ucp_request_free(request);
}

void Agent::Impl::OnFlushDone(void* request, ucs_status_t status, void* user_data) {
  auto* j = static_cast<Job*>(user_data);
  --j->outstanding;
  j->flush_done = true;
  if (status != UCS_OK) j->Fail(UcsError("ucp_ep_flush_nbx", status));
  ucp_request_free(request);
}

void Agent::Impl::OnFenceSent(void* request, ucs_status_t status, void* user_data) {
  auto* j = static_cast<Job*>(user_data);
  --j->outstanding;
  if (status != UCS_OK) j->Fail(UcsError("ucp_am_send_nbx(fence)", status));
  ucp_request_free(request);
}

void Agent::Impl::OnNotifySent(void* request, ucs_status_t status, void* user_data) {
  auto* j = static_cast<Job*>(user_data);
  --j->outstanding;
  j->notify_done = true;
  if (status != UCS_OK) j->Fail(UcsError("ucp_am_send_nbx(notification)", status));
  ucp_request_free(request);
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
    cv.notify_all();
    return false;
  }
  if (t.lanes_pending > 0) return false;
  if (t.state == TransferState::kRunning && t.cancel) {
    t.state = TransferState::kCancelled;
    cv.notify_all();
    return false;
  }
  if (t.state != TransferState::kRunning) {
    cv.notify_all();
    return false;
  }
  // Success is declared by FinishJob once every job has returned all its
  // UCX requests, so a caller woken by Wait can Post or Release at once.
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
  cv.notify_all();
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
  cv.notify_all();
}

std::size_t Agent::Impl::IssueOps(Lane& lane, Job& j) {
  LaneEp& lep = *j.lep;
  const auto& ops = *j.ops;
  const TransferCore& t = *j.t;
  std::size_t issued = 0;
  bool copied = false;
  std::uint64_t copy_blocks = 0, copy_bytes = 0, requests = 0, request_bytes = 0, kernel_blocks = 0, kernel_bytes = 0;
  ucp_request_param_t p{};
  const std::uint64_t wall0 = ClockNs(CLOCK_MONOTONIC), cpu0 = ClockNs(CLOCK_THREAD_CPUTIME_ID);
  while (j.next < ops.size() && issued < kIssueBatch && !j.failed) {
    const PreparedOp& o = ops[j.next];
    const std::uint64_t bytes = o.bytes();
    if (o.kernel_copy) {
      // The kernel copies from / into the peer's pages (process_vm_readv /
      // process_vm_writev): no mapping of the peer here, no UCX request, no
      // credit (ReadPath, WritePath).
      Status st =
          t.op == TransferOp::kRead
              ? j.peer->kernel_copy.ReadRows(o.local, o.local_stride, o.remote_addr, o.remote_stride, o.count,
                                             o.length)
              : j.peer->kernel_copy.WriteRows(o.local, o.local_stride, o.remote_addr, o.remote_stride, o.count,
                                              o.length);
      if (!st.ok()) {
        j.Fail(st.WithContext(
            fmt::format("{} peer {}", t.op == TransferOp::kRead ? "READ from" : "WRITE to", t.peer_name)));
        break;
      }
      copied = true;
      ++kernel_blocks;
      kernel_bytes += bytes;
      ++j.next;
      ++issued;
      continue;
    }
    if (!t.am_write && o.rkey_index < lep.mapped_delta.size() && lep.mapped_delta[o.rkey_index]) {
      // The peer's region is mapped here (shared memory): the one-sided
      // move is a 2-D memcpy by this lane, no UCX request, no credit.
      std::byte* remote = reinterpret_cast<std::byte*>(static_cast<std::intptr_t>(o.remote_addr) +
                                                       *lep.mapped_delta[o.rkey_index]);
      if (t.op == TransferOp::kRead) {
        CopyRows(o.local, o.local_stride, remote, o.remote_stride, o.count, o.length);
      } else {
        CopyRows(remote, o.remote_stride, o.local, o.local_stride, o.count, o.length);
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
    c.job = &j;
    c.bytes = bytes;
    c.requests = 0;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &Impl::OnOpDone;
    p.user_data = &c;
    if (!t.am_write) {
      p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
      p.memh = o.memh;
    }
    // One request per row (active-message writes always have one row per op).
    for (std::uint64_t r = 0; r < o.count && !j.failed; ++r) {
      std::byte* local = o.local + r * o.local_stride;
      const std::uint64_t remote = o.remote_addr + r * o.remote_stride;
      ucs_status_ptr_t req;
      if (t.op == TransferOp::kRead) {
        req = ucp_get_nbx(lep.ep.get(), local, o.length, remote, lep.rkeys[o.rkey_index].get(), &p);
      } else if (t.am_write) {
        req = ucp_am_send_nbx(lep.ep.get(), kWriteAmId, &o.am, sizeof(o.am), local, o.length, &p);
      } else {
        req = ucp_put_nbx(lep.ep.get(), local, o.length, remote, lep.rkeys[o.rkey_index].get(), &p);
      }
      ++requests;
      request_bytes += o.length;
      if (UCS_PTR_IS_ERR(req)) {
        j.Fail(UcsError(t.op == TransferOp::kRead ? "ucp_get_nbx" : (t.am_write ? "ucp_am_send_nbx" : "ucp_put_nbx"),
                        UCS_PTR_STATUS(req)));
      } else if (req != nullptr) {
        ++c.requests;
        ++j.outstanding;
      }
    }
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
    if (requests == 0) {  // only direct copies in this batch: its time is theirs
      counters.direct_copy_ns.fetch_add(ClockNs(CLOCK_MONOTONIC) - wall0, std::memory_order_relaxed);
      counters.direct_copy_cpu_ns.fetch_add(ClockNs(CLOCK_THREAD_CPUTIME_ID) - cpu0, std::memory_order_relaxed);
    }
  }
  if (kernel_blocks > 0) {
    counters.kernel_copy_blocks.fetch_add(kernel_blocks, std::memory_order_relaxed);
    counters.kernel_copy_bytes.fetch_add(kernel_bytes, std::memory_order_relaxed);
    if (requests == 0 && copy_blocks == 0) {  // only kernel copies in this batch: its time is theirs
      counters.kernel_copy_ns.fetch_add(ClockNs(CLOCK_MONOTONIC) - wall0, std::memory_order_relaxed);
      counters.kernel_copy_cpu_ns.fetch_add(ClockNs(CLOCK_THREAD_CPUTIME_ID) - cpu0, std::memory_order_relaxed);
    }
  }
  if (requests > 0) {
    counters.ucx_requests.fetch_add(requests, std::memory_order_relaxed);
    counters.ucx_bytes.fetch_add(request_bytes, std::memory_order_relaxed);
  }
  return issued;
}

void Agent::Impl::SendFence(Lane& lane, Job& j) {
  j.fence_token = lane.next_token++;
  lane.fences[j.fence_token] = &j;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
  p.cb.send = &Impl::OnFenceSent;
  p.user_data = &j;
  ucs_status_ptr_t req = ucp_am_send_nbx(j.lep->ep.get(), kFenceAmId, &j.fence_token, sizeof(j.fence_token),
                                         nullptr, 0, &p);
  if (UCS_PTR_IS_ERR(req)) {
    lane.fences.erase(j.fence_token);
    j.Fail(UcsError("ucp_am_send_nbx(fence)", UCS_PTR_STATUS(req)));
  } else if (req != nullptr) {
    ++j.outstanding;
  }
}

void Agent::Impl::SendNotification(Job& j) {
  const std::vector<std::byte>& wire = j.t->post_wire;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  p.cb.send = &Impl::OnNotifySent;
  p.user_data = &j;
  ucs_status_ptr_t req = ucp_am_send_nbx(j.lep->ep.get(), kNotifyAmId, nullptr, 0, wire.data(), wire.size(), &p);
  if (req == nullptr) {
    j.notify_done = true;
  } else if (UCS_PTR_IS_ERR(req)) {
    j.notify_done = true;
    j.Fail(UcsError("ucp_am_send_nbx(notification)", UCS_PTR_STATUS(req)));
  } else {
    ++j.outstanding;
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
      // Stop issuing; finish once UCX has returned every request.
      if (j.phase == Phase::kNotifying) {
        SettleNotification(j);
        j.phase = Phase::kFinished;
        did = true;
      } else if (!j.lane_reported) {
        ReportLane(j);
        did = true;
      }
      if (j.outstanding == 0) {
        lane.fences.erase(j.fence_token);
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
          if (j.t->am_write && j.t->op == TransferOp::kWrite) {
            if (j.ops_in_flight == 0) {
              j.phase = Phase::kFencing;
              SendFence(lane, j);
              did = true;
            }
          } else {
            j.phase = Phase::kFlushing;
            ucp_request_param_t p{};
            p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
            p.cb.send = &Impl::OnFlushDone;
            p.user_data = &j;
            ucs_status_ptr_t req = ucp_ep_flush_nbx(j.lep->ep.get(), &p);
            if (req == nullptr) {
              j.flush_done = true;
            } else if (UCS_PTR_IS_ERR(req)) {
              j.Fail(UcsError("ucp_ep_flush_nbx", UCS_PTR_STATUS(req)));
            } else {
              ++j.outstanding;
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
      case Phase::kFencing:
        if (j.fence_acked) {
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
