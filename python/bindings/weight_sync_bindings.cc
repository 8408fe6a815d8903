// RL weight sync from Python: the C++ WeightPublisher / WeightSubscriber over a coordinator,
// on a shard buffer the Python side owns (python/shardwire/weight_sync.py validates the
// tensors and passes the buffer's address; it keeps the tensors alive as long as this object).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>

#include "bindings.h"
#include "interruptible.h"
#include "shardwire/coordinator.h"
#include "shardwire/weight_sync.h"
#include "status_bindings.h"

namespace py = pybind11;

namespace shardwire::python {
namespace {

// The Python keyword arguments that map onto WeightSyncOptions (shardwire/weight_sync.h).
struct SyncFlags {
  double engine_timeout_s = 10;
  bool dynamic_membership = false;
  bool verify_digests = false;
  int max_concurrency = 4;
  bool relay_broadcasts = false;
  bool convert_into_mapped = true;    // publisher only
  std::uint32_t convert_threads = 2;  // publisher only
  std::uint32_t lanes = 0;            // publisher only here: the agent's lanes (0 = kDefaultLanes)
  bool copy_into_mapped = true;       // publisher only
};

WeightSyncOptions Options(const std::string& job, double timeout_s, std::uintptr_t address, std::size_t nbytes,
                          const SyncFlags& flags) {
  WeightSyncOptions o;
  o.job = job;
  o.timeout_s = timeout_s;
  o.engine_timeout_s = flags.engine_timeout_s;
  o.dynamic_membership = flags.dynamic_membership;
  o.verify_digests = flags.verify_digests;
  o.max_concurrency = flags.max_concurrency;
  o.relay_broadcasts = flags.relay_broadcasts;
  o.convert_into_mapped = flags.convert_into_mapped;
  o.convert_threads = flags.convert_threads;
  o.lanes = flags.lanes;
  o.copy_into_mapped = flags.copy_into_mapped;
  if (nbytes > 0) o.buffer = std::span<std::byte>(reinterpret_cast<std::byte*>(address), nbytes);
  o.interrupt = PythonSignalHook();  // Ctrl-C ends Connect / Push / WaitForUpdate / Join within ~0.1 s
  return o;
}

}  // namespace

void BindWeightSync(py::module_& m) {
  py::class_<WeightPublisher, ReleaseGilHolder<WeightPublisher>>(m, "_WeightPublisher")
      .def(py::init([](CoordinatorClient& coordinator, const Layout& trainer, const Layout& engine, int rank,
                       std::uintptr_t address, std::size_t nbytes, const std::string& job, double timeout_s,
                       double engine_timeout_s, bool dynamic_membership, bool verify_digests, int max_concurrency,
                       bool relay_broadcasts, bool convert_into_mapped, std::uint32_t convert_threads,
                       std::uint32_t lanes, bool copy_into_mapped) {
             const SyncFlags flags{engine_timeout_s, dynamic_membership,  verify_digests,  max_concurrency,
                                   relay_broadcasts, convert_into_mapped, convert_threads, lanes,
                                   copy_into_mapped};
             GilRelease release;
             return ReleaseGilHolder<WeightPublisher>(
                 ValueOrThrow(WeightPublisher::Create(coordinator, trainer, engine, rank,
                                                      Options(job, timeout_s, address, nbytes, flags)))
                     .release());
           }),
           py::keep_alive<1, 2>(), py::arg("coordinator"), py::arg("trainer_layout"), py::arg("engine_layout"),
           py::arg("rank"), py::arg("address"), py::arg("nbytes"), py::arg("job"), py::arg("timeout_s"),
           py::arg("engine_timeout_s") = 10.0, py::arg("dynamic_membership") = false, py::arg("verify_digests") = false,
           py::arg("max_concurrency") = 4, py::arg("relay_broadcasts") = false, py::arg("convert_into_mapped") = true,
           py::arg("convert_threads") = 2, py::arg("lanes") = 0, py::arg("copy_into_mapped") = true)
      .def("connect",
           [](WeightPublisher& p) {
             Status st;
             {
               GilRelease release;
               st = p.Connect();
             }
             ThrowPythonErrorOrStatus(st);
           })
      .def("push",
           [](WeightPublisher& p, std::uint64_t version) {
             Result<PushStats> r = Internal("not run");
             {
               GilRelease release;
               r = p.Push(version);
             }
             const PushStats s = ValueOrPythonError(std::move(r));
             py::dict d;
             d["version"] = s.version;
             d["bytes"] = s.bytes;
             d["descriptors"] = s.descriptors;
             d["ready_wait_s"] = s.ready_wait_s;
             d["transfer_s"] = s.transfer_s;
             d["converted_bytes"] = s.converted_bytes;
             d["convert_s"] = s.convert_s;
             d["staging_peak_bytes"] = s.staging_peak_bytes;
             // Engine ranks that missed this version (fault isolation): rank, error code name, message.
             py::list missed;
             for (const MissedEngine& m : s.missed) {
               py::dict e;
               e["engine_rank"] = m.engine_rank;
               e["code"] = std::string(ErrorCodeName(m.reason.code()));
               e["reason"] = m.reason.ToString();
               missed.append(e);
             }
             d["missed"] = missed;
             d["absent"] = s.absent;  // dynamic membership: engine ranks not members for this version
             d["hold_s"] = s.hold_s;  // trainer rank 0: seconds this push waited for catching-up engines
             d["held_for"] = s.held_for;
             d["rounds"] = s.rounds;  // schedule rounds this rank wrote in
             d["round_wait_s"] = s.round_wait_s;
             d["relayed"] = s.relayed;                  // engine ranks whose relay parent forwards this version
             d["mapped_bytes"] = s.mapped_bytes;        // converted straight into mapped engine buffers
             d["convert_cpu_s"] = s.convert_cpu_s;      // CPU seconds of the conversion threads
             d["copied_bytes"] = s.copied_bytes;        // moved bytes the pushing threads copied into mappings
             d["copy_read_bytes"] = s.copy_read_bytes;  // the source bytes read for them (each once)
             d["copy_cpu_s"] = s.copy_cpu_s;
             return d;
           })
      .def(
          "wait_for_engines",
          [](WeightPublisher& p, int engine_ranks, double timeout_s) {
            Result<int> r = Internal("not run");
            {
              GilRelease release;
              r = p.WaitForEngines(engine_ranks, timeout_s);
            }
            return ValueOrPythonError(std::move(r));
          },
          py::arg("engine_ranks"), py::arg("timeout_s"))
      .def("close",
           [](WeightPublisher& p) {
             GilRelease release;
             p.Close();
           })
      .def_property_readonly("bytes_per_push", &WeightPublisher::bytes_per_push)
      .def_property_readonly("buffer_address",
                             [](WeightPublisher& p) { return reinterpret_cast<std::uintptr_t>(p.weights().data()); });

  py::class_<WeightSubscriber, ReleaseGilHolder<WeightSubscriber>>(m, "_WeightSubscriber")
      .def(py::init([](CoordinatorClient& coordinator, const Layout& trainer, const Layout& engine, int rank,
                       std::uintptr_t address, std::size_t nbytes, const std::string& job, double timeout_s,
                       double engine_timeout_s, bool dynamic_membership, bool verify_digests, int max_concurrency,
                       bool relay_broadcasts) {
             const SyncFlags flags{engine_timeout_s, dynamic_membership, verify_digests, max_concurrency,
                                   relay_broadcasts};
             GilRelease release;
             return ReleaseGilHolder<WeightSubscriber>(
                 ValueOrThrow(WeightSubscriber::Create(coordinator, trainer, engine, rank,
                                                       Options(job, timeout_s, address, nbytes, flags)))
                     .release());
           }),
           py::keep_alive<1, 2>(), py::arg("coordinator"), py::arg("trainer_layout"), py::arg("engine_layout"),
           py::arg("rank"), py::arg("address"), py::arg("nbytes"), py::arg("job"), py::arg("timeout_s"),
           py::arg("engine_timeout_s") = 10.0, py::arg("dynamic_membership") = false, py::arg("verify_digests") = false,
           py::arg("max_concurrency") = 4, py::arg("relay_broadcasts") = false)
      .def("connect",
           [](WeightSubscriber& s) {
             Status st;
             {
               GilRelease release;
               st = s.Connect();
             }
             ThrowPythonErrorOrStatus(st);
           })
      .def("begin_update",
           [](WeightSubscriber& s, std::uint64_t version) {
             GilRelease release;
             ThrowIfError(s.BeginUpdate(version));
           })
      .def(
          "wait_for_update",
          [](WeightSubscriber& s, std::uint64_t version, double timeout_s) {
            Result<UpdateStats> r = Internal("not run");
            {
              GilRelease release;
              r = s.WaitForUpdate(version, timeout_s);
            }
            const UpdateStats u = ValueOrPythonError(std::move(r));
            py::dict d;
            d["version"] = u.version;
            d["bytes"] = u.bytes;
            d["sources"] = u.sources;
            d["wait_s"] = u.wait_s;
            d["relayed_from"] = u.relayed_from;  // relay_broadcasts: -1 = written by the trainers
            d["relayed_to"] = u.relayed_to;
            d["relay_s"] = u.relay_s;
            return d;
          },
          py::arg("version"), py::arg("timeout_s") = -1.0)
      .def(
          "join",
          [](WeightSubscriber& s, double timeout_s) {
            Result<std::uint64_t> r = Internal("not run");
            {
              GilRelease release;
              r = s.Join(timeout_s);
            }
            return ValueOrPythonError(std::move(r));
          },
          py::arg("timeout_s") = -1.0)
      .def("leave",
           [](WeightSubscriber& s) {
             GilRelease release;
             ThrowIfError(s.Leave());
           })
      .def("adopt_version",
           [](WeightSubscriber& s, std::uint64_t version) {
             GilRelease release;
             ThrowIfError(s.AdoptVersion(version));
           })
      .def("close",
           [](WeightSubscriber& s) {
             GilRelease release;  // a dynamic member's leave is a coordinator call
             s.Close();
           })
      .def_property_readonly("incarnation", &WeightSubscriber::incarnation)
      .def_property_readonly("committed_version", &WeightSubscriber::committed_version)
      .def_property_readonly("holds_committed_version", &WeightSubscriber::holds_committed_version)
      .def_property_readonly("buffer_address",
                             [](WeightSubscriber& s) { return reinterpret_cast<std::uintptr_t>(s.weights().data()); });
}

}  // namespace shardwire::python
