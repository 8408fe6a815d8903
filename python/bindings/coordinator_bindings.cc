// The coordinator from Python: start an embedded one (CoordinatorServer) or connect to one
// (CoordinatorClient): its key-value rendezvous, registry of weight sources and jobs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <memory>

#include "bindings.h"
#include "interruptible.h"
#include "shardwire/coordinator.h"
#include "status_bindings.h"

namespace py = pybind11;

namespace shardwire::python {
namespace {

py::bytes ToBytes(const std::vector<std::byte>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

std::vector<std::byte> FromBytes(const py::bytes& b) {
  const std::string_view s = b;
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

py::dict SourceToDict(const SourceRecord& r) {
  py::dict d;
  d["source_id"] = r.source_id;
  d["model_identity"] = r.model_identity;
  d["instance_id"] = r.instance_id;
  d["rank"] = r.rank;
  d["world_size"] = r.world_size;
  d["layout"] = r.layout;
  d["layout_fingerprint"] = r.layout_fingerprint;
  d["state"] = std::string(SourceStateName(r.state));
  d["stale_reason"] = r.stale_reason;
  d["attributes"] = r.attributes;
  d["registered_unix_ms"] = r.registered_unix_ms;
  d["last_heartbeat_unix_ms"] = r.last_heartbeat_unix_ms;
  return d;
}

}  // namespace

void BindCoordinator(py::module_& m) {
  py::class_<CoordinatorServer, ReleaseGilHolder<CoordinatorServer>>(
      m, "CoordinatorServer",
      "A running coordinator (gRPC service + state + reaper) in this process.\n"
      "Use as a context manager or call shutdown(); docs/coordinator.md.")
      .def(py::init([](const std::string& listen_address, const std::string& redis_url, const std::string& token,
                       const std::string& tls_cert_file, const std::string& tls_key_file, double stale_after_s,
                       double delete_after_s, double mark_hold_s) {
             CoordinatorServerOptions o;
             o.listen_address = listen_address;
             o.redis_url = redis_url;
             o.token = token;
             o.tls_cert_file = tls_cert_file;
             o.tls_key_file = tls_key_file;
             o.source_stale_after_s = stale_after_s;
             o.source_delete_after_s = delete_after_s;
             o.source_mark_hold_s = mark_hold_s;
             GilRelease release;
             return ReleaseGilHolder<CoordinatorServer>(ValueOrThrow(CoordinatorServer::Start(std::move(o))).release());
           }),
           py::arg("listen_address") = "127.0.0.1:0", py::arg("redis_url") = "", py::arg("token") = "",
           py::arg("tls_cert_file") = "", py::arg("tls_key_file") = "", py::arg("stale_after_s") = 10.0,
           py::arg("delete_after_s") = 60.0, py::arg("mark_hold_s") = 30.0,
           "Starts a coordinator. listen_address 'host:port' (port 0 picks a free one); redis_url\n"
           "'redis://host:port[/db]' or '' for in-memory state; token: bearer token every call must carry.\n"
           "stale_after_s / delete_after_s: a source without heartbeat this long is STALE / deleted;\n"
           "mark_hold_s: a source a loader marked STALE with hold (it reported its own bytes bad) stays so\n"
           "this long however it heartbeats (0: no hold). Times in seconds. Raises IoError (port in use), "
           "UnavailableError (Redis), InvalidArgumentError.")
      .def_property_readonly("address", &CoordinatorServer::address, "'host:port' clients can dial.")
      .def_property_readonly("port", &CoordinatorServer::port)
      .def_property_readonly("state_id", &CoordinatorServer::state_id,
                             "The id of the state served now (32 hex digits; CoordinatorClient.state_id).")
      .def(
          "shutdown",
          [](CoordinatorServer& s, double grace_s) {
            GilRelease release;
            s.Shutdown(grace_s);
          },
          py::arg("grace_s") = 1.0, "Stops serving (idempotent).")
      .def("__enter__", [](CoordinatorServer& s) -> CoordinatorServer& { return s; })
      .def("__exit__", [](CoordinatorServer& s, py::args) {
        GilRelease release;
        s.Shutdown(1.0);
      });

  py::class_<CoordinatorClient>(m, "CoordinatorClient",
                                "A connection to a coordinator. Thread-safe. Every call has a deadline; a coordinator\n"
                                "that cannot be reached raises UnavailableError naming the address. call_timeout_s\n"
                                "(seconds) is one attempt's deadline: put/get/add/list_sources/job/commit_version are\n"
                                "sent again, with twice the deadline, after a deadline that passed (also once after\n"
                                "unavailable_timeout_s, for a process that was stopped meanwhile); a coordinator that\n"
                                "stays silent raises\n"
                                "TimedOutError naming the address.")
      .def(py::init([](const std::string& address, const std::string& token, const std::string& tls_root_cert_file,
                       double call_timeout_s, double unavailable_timeout_s) {
             CoordinatorClientOptions o;
             o.address = address;
             o.token = token;
             o.tls_root_cert_file = tls_root_cert_file;
             o.call_timeout_s = call_timeout_s;
             o.unavailable_timeout_s = unavailable_timeout_s;
             o.interrupt = PythonSignalHook();  // Ctrl-C ends the wait for an unreachable address
             Result<std::unique_ptr<CoordinatorClient>> client = Internal("not run");
             {
               GilRelease release;
               client = CoordinatorClient::Connect(std::move(o));
             }
             return ValueOrPythonError(std::move(client));
           }),
           py::arg("address"), py::arg("token") = "", py::arg("tls_root_cert_file") = "",
           py::arg("call_timeout_s") = 10.0, py::arg("unavailable_timeout_s") = 15.0,
           "Connects to 'host:port' (token: '' reads SHARDWIRE_TOKEN; tls_root_cert_file: PEM file of\n"
           "the CA that signed a TLS coordinator's certificate, '' reads SHARDWIRE_TLS_ROOT_CERT, unset:\n"
           "plaintext). Waits up to unavailable_timeout_s (seconds) for a coordinator that cannot be reached yet;\n"
           "Ctrl-C raises KeyboardInterrupt within about a second of that wait against an address that refuses\n"
           "connections (an attempt in flight is not cut: up to call_timeout_s against one that accepts but does\n"
           "not answer or drops the packets). Raises UnavailableError,\n"
           "UnauthenticatedError, InvalidArgumentError.")
      .def_property_readonly("address", &CoordinatorClient::address)
      .def_property_readonly(
          "state_id", &CoordinatorClient::state_id,
          "The coordinator state this client joined (32 hex digits). put/get/add and the job methods\n"
          "raise FailedPreconditionError once that state is lost (an in-memory coordinator restarted,\n"
          "a Redis flushed); connect a new client to join the new state.")
      .def(
          "put",
          [](CoordinatorClient& c, const std::string& key, const py::bytes& value) {
            auto v = FromBytes(value);
            GilRelease release;
            ThrowIfError(c.Put(key, v));
          },
          py::arg("key"), py::arg("value"), "Stores bytes under key (<= 4 KiB key, <= 64 MiB value).")
      .def(
          "get",
          [](CoordinatorClient& c, const std::string& key, double timeout_s) {
            auto r = WaitInterruptibly(timeout_s, fmt::format("rendezvous key '{}' was not set", key),
                                       [&](double slice) { return c.Get(key, slice); });
            return ToBytes(ValueOrThrow(std::move(r)));
          },
          py::arg("key"), py::arg("timeout_s") = std::numeric_limits<double>::infinity(),
          "The bytes under key, waiting (GIL released; Ctrl-C interrupts within 0.25 s) until some\n"
          "process puts it or timeout_s seconds pass (TimedOutError). A coordinator that accepts calls but\n"
          "does not answer (stopped, wedged) holds a 0.25 s slice up to max(call_timeout_s,\n"
          "unavailable_timeout_s) + call_timeout_s + 0.5 seconds, then raises UnavailableError naming its\n"
          "address (timeout_s=inf included); Ctrl-C then takes up to that long. A pause of this process\n"
          "alone (SIGSTOP) is not taken for a silent coordinator.")
      .def(
          "add",
          [](CoordinatorClient& c, const std::string& key, std::int64_t delta) {
            GilRelease release;
            return ValueOrThrow(c.Add(key, delta));
          },
          py::arg("key"), py::arg("delta"), "Atomically adds delta to the counter under key; returns the new value.")
      .def(
          "list_sources",
          [](CoordinatorClient& c, const std::string& model_identity, const std::string& state) {
            std::optional<SourceState> filter;
            if (state == "READY")
              filter = SourceState::kReady;
            else if (state == "STALE")
              filter = SourceState::kStale;
            else if (!state.empty())
              throw StatusError(InvalidArgument("state must be 'READY', 'STALE' or ''"));
            std::vector<SourceRecord> records;
            {
              GilRelease release;
              records = ValueOrThrow(c.ListSources(model_identity, filter));
            }
            py::list out;
            for (const SourceRecord& r : records) out.append(SourceToDict(r));
            return out;
          },
          py::arg("model_identity") = "", py::arg("state") = "",
          "Registered weight sources (dicts) of a model identity ('' = all), optionally only 'READY' or 'STALE'.")
      .def(
          "mark_source_stale",
          [](CoordinatorClient& c, const std::string& source_id, const std::string& reason, bool hold) {
            GilRelease release;
            ThrowIfError(c.MarkSourceStale(source_id, reason, hold));
          },
          py::arg("source_id"), py::arg("reason") = "", py::arg("hold") = false,
          "Marks a source STALE (loaders skip it) with a reason (<= 4 KiB; '' is stored as 'marked\n"
          "stale'): until its next heartbeat, or with hold=True for the coordinator's mark_hold_s\n"
          "(seconds) whatever its heartbeats say. The source learns of the mark from its next heartbeat\n"
          "(ModelSource.last_mark). Raises NotFoundError, InvalidArgumentError, UnavailableError,\n"
          "TimedOutError.")
      .def(
          "join_job",
          [](CoordinatorClient& c, const std::string& job, const std::string& member_id, const std::string& role,
             const std::string& group, int rank, int world_size, const std::string& layout) {
            JobMember mb;
            mb.member_id = member_id;
            if (role == "publisher")
              mb.role = JobRole::kPublisher;
            else if (role == "subscriber")
              mb.role = JobRole::kSubscriber;
            else
              throw StatusError(InvalidArgument("role must be 'publisher' or 'subscriber', not '" + role + "'"));
            mb.group = group;
            mb.rank = rank;
            mb.world_size = world_size;
            mb.layout = layout;
            GilRelease release;
            return ValueOrThrow(c.JoinJob(job, mb)).membership_epoch;
          },
          py::arg("job"), py::arg("member_id"), py::arg("role") = "subscriber", py::arg("group") = "",
          py::arg("rank") = 0, py::arg("world_size") = 1, py::arg("layout") = "",
          "Adds a member to a job (created on first join); returns the new membership epoch.\n"
          "Raises AlreadyExistsError when member_id is already a live member, InvalidArgumentError.")
      .def(
          "leave_job",
          [](CoordinatorClient& c, const std::string& job, const std::string& member_id) {
            GilRelease release;
            ThrowIfError(c.LeaveJob(job, member_id));
          },
          py::arg("job"), py::arg("member_id"), "Removes a member. Raises NotFoundError.")
      .def(
          "commit_version",
          [](CoordinatorClient& c, const std::string& job, const std::string& member_id, std::uint64_t version) {
            GilRelease release;
            ThrowIfError(c.CommitVersion(job, member_id, version));
          },
          py::arg("job"), py::arg("member_id"), py::arg("version"),
          "Records that subscriber member_id committed weight version `version`. Raises NotFoundError,\n"
          "FailedPreconditionError when the version goes backwards (equal is a no-op).")
      .def(
          "job",
          [](CoordinatorClient& c, const std::string& job) {
            JobView v;
            {
              GilRelease release;
              v = ValueOrThrow(c.GetJob(job));
            }
            py::dict d;
            d["job"] = v.job;
            d["membership_epoch"] = v.membership_epoch;
            py::list members;
            for (const JobMember& mb : v.members) {
              py::dict e;
              e["member_id"] = mb.member_id;
              e["role"] = mb.role == JobRole::kPublisher ? "publisher" : "subscriber";
              e["group"] = mb.group;
              e["rank"] = mb.rank;
              e["layout"] = mb.layout;
              e["committed_version"] = mb.committed_version;
              members.append(std::move(e));
            }
            d["members"] = members;
            return d;
          },
          py::arg("job"), "A job's live members, their committed weight versions and the membership epoch.");
}

}  // namespace shardwire::python
