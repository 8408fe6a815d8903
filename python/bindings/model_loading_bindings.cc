// P2P model loading from Python (include/shardwire/model_loading.h): a ModelSource serving a
// rank's shards (filled from tensors the Python side validated, or from a checkpoint) and a
// ModelLoader pulling a rank's shards from the sources a coordinator lists. The Python side
// (python/shardwire/model_loading.py) validates tensors and wraps the results as torch tensors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "bindings.h"
#include "interruptible.h"
#include "shardwire/checkpoint.h"
#include "shardwire/coordinator.h"
#include "shardwire/model_description.h"
#include "shardwire/model_identity.h"
#include "shardwire/model_layouts.h"
#include "shardwire/model_loading.h"
#include "shardwire/shard_io.h"
#include "shardwire/source_registry.h"
#include "status_bindings.h"

namespace py = pybind11;

namespace shardwire::python {
namespace {

/// A served rank: the registry it is registered with (shared with the loader it may come
/// from) and the source. The source goes first on destruction (it deregisters through the
/// registry). Close stops serving and deregisters but keeps the buffer: tensor views of it
/// keep this object alive (model_loading.py), so the memory is freed only with the last view.
struct PySource {
  std::shared_ptr<SourceRegistry> registry;
  std::unique_ptr<ModelSource> source;
  ModelIdentity identity;
  std::uint64_t buffer_bytes = 0;
  bool closed = false;

  ~PySource() {
    GilRelease release;  // deregistration is a coordinator call
    source.reset();
  }
  void Close() {
    if (closed || !source) return;
    GilRelease release;
    source->Stop();
    closed = true;
  }
  ModelSource& get() {
    if (!source || closed) throw StatusError(FailedPrecondition("model source: closed"));
    return *source;
  }
};

struct PyLoader {
  std::shared_ptr<SourceRegistry> registry;
  std::unique_ptr<ModelLoader> loader;

  ~PyLoader() {
    GilRelease release;  // waits for a source listing still in flight
    loader.reset();
  }
  ModelLoader& get() {
    if (!loader) throw StatusError(FailedPrecondition("model loader: turned into a source"));
    return *loader;
  }
};

/// (address, byte offset, bytes) of one tensor to copy into the source's buffer.
using TensorCopy = std::tuple<std::uintptr_t, std::uint64_t, std::uint64_t>;

ModelSourceOptions SourceOptions(const std::string& instance_id, const std::string& layout, int rank,
                                 double heartbeat_interval_s, double bandwidth_bytes_per_s,
                                 double shutdown_timeout_s) {
  ModelSourceOptions o;
  o.instance_id = instance_id;
  o.layout = layout;
  o.rank = rank;
  o.heartbeat_interval_s = heartbeat_interval_s;
  o.bandwidth_bytes_per_s = bandwidth_bytes_per_s;
  o.shutdown_timeout_s = shutdown_timeout_s;
  return o;
}

py::dict ReportToDict(const LoadReport& r) {
  py::dict d;
  d["identity"] = r.identity;
  d["buffer_bytes"] = r.buffer_bytes;
  d["bytes_from_sources"] = r.bytes_from_sources;
  d["bytes_from_disk"] = r.bytes_from_disk;
  d["bytes_per_instance"] = r.bytes_per_instance;
  d["skipped"] = r.skipped;
  d["failed"] = r.failed;
  d["moves"] = r.moves;
  d["rereads"] = r.rereads;
  d["replans"] = r.replans;
  d["seconds"] = r.seconds;
  d["digest_seconds"] = r.digest_seconds;
  d["list_seconds"] = r.list_seconds;
  d["handshake_seconds"] = r.handshake_seconds;
  d["transfer_seconds"] = r.transfer_seconds;
  d["finish_seconds"] = r.finish_seconds;
  d["paused_seconds"] = r.paused_seconds;
  return d;
}

}  // namespace

void BindModelLoading(py::module_& m) {
  py::class_<PySource>(m, "_ModelSource")
      .def(py::init([](CoordinatorClient& coordinator, const ModelDescription& model, const std::string& layout,
                       int rank, const std::string& instance_id, std::string revision,
                       const std::string& checkpoint_path, const std::vector<TensorCopy>& tensors,
                       double heartbeat_interval_s, double bandwidth_bytes_per_s, double shutdown_timeout_s) {
             auto out = std::make_unique<PySource>();
             GilRelease release;
             const Layout lay = ValueOrThrow(MakeLayoutFromString(model, layout));
             CheckRankInRange(fmt::format("model source: layout {}:", layout), rank, lay.world_size());
             std::optional<Checkpoint> checkpoint;
             if (!checkpoint_path.empty()) {
               checkpoint = ValueOrThrow(Checkpoint::Open(checkpoint_path));
               if (revision.empty()) revision = ValueOrThrow(CheckpointRevision(*checkpoint));
             }
             if (revision.empty()) {
               throw StatusError(InvalidArgument(
                   "model source: a source of tensors needs a revision (the content version it serves, e.g. a "
                   "hub commit or training step)"));
             }
             out->identity = ValueOrThrow(MakeModelIdentity(model, revision));
             out->buffer_bytes = lay.rank(rank).buffer_bytes;
             out->registry = MakeCoordinatorSourceRegistry(coordinator);
             auto fill = [&](std::span<std::byte> buf) -> Status {
               if (checkpoint) return LoadShardsFromCheckpoint(*checkpoint, lay, rank, buf);
               std::memset(buf.data(), 0, buf.size());
               for (const auto& [address, offset, bytes] : tensors) {
                 if (offset + bytes > buf.size()) {
                   return InvalidArgument(
                       fmt::format("model source: tensor at byte offset {} (+{} bytes) is "
                                   "outside the rank buffer of {} bytes",
                                   offset, bytes, buf.size()));
                 }
                 std::memcpy(buf.data() + offset, reinterpret_cast<const void*>(address), bytes);
               }
               return Status::Ok();
             };
             ModelSourceOptions options = SourceOptions(instance_id, layout, rank, heartbeat_interval_s,
                                                        bandwidth_bytes_per_s, shutdown_timeout_s);
             // ModelSource.tensors are writable torch views of the served buffer: keep it
             // writable (a write to read-only memory would kill the interpreter with SIGSEGV);
             // the source then checks every part's block, as Serve does.
             options.read_only_buffer = false;
             out->source = ValueOrThrow(ModelSource::Create(*out->registry, model, out->identity, options, fill));
             return out;
           }),
           py::keep_alive<1, 2>(), py::arg("coordinator"), py::arg("model"), py::arg("layout"), py::arg("rank"),
           py::arg("instance_id"), py::arg("revision"), py::arg("checkpoint_path"), py::arg("tensors"),
           py::arg("heartbeat_interval_s"), py::arg("bandwidth_bytes_per_s"), py::arg("shutdown_timeout_s"))
      .def_property_readonly("source_id", [](PySource& s) { return s.get().source_id(); })
      .def_property_readonly("identity", [](PySource& s) { return s.identity.Digest(); })
      .def_property_readonly("revision", [](PySource& s) { return s.identity.revision; })
      .def_property_readonly("buffer_address",
                             [](PySource& s) { return reinterpret_cast<std::uintptr_t>(s.get().buffer().data()); })
      .def_property_readonly("buffer_bytes", [](PySource& s) { return s.buffer_bytes; })
      .def_property_readonly("digests_served", [](PySource& s) { return s.get().digests_served(); })
      .def_property_readonly("last_mark",
                             [](PySource& s) -> py::object {
                               const std::optional<SourceHeartbeat> mark = s.get().last_mark();
                               if (!mark) return py::none();
                               py::dict d;
                               d["state"] = std::string(SourceStateName(mark->state));
                               d["stale_reason"] = mark->stale_reason;
                               return d;
                             })
      .def_property_readonly("marks_seen", [](PySource& s) { return s.get().marks_seen(); })
      .def_property_readonly("closed", [](PySource& s) { return !s.source || s.closed; })
      .def("close", &PySource::Close);

  py::class_<PyLoader>(m, "_ModelLoader")
      .def(py::init([](CoordinatorClient& coordinator, const ModelDescription& model, const std::string& layout,
                       int rank, const std::string& instance_id, const std::string& revision,
                       const std::string& checkpoint_path, double stall_timeout_s, double load_timeout_s,
                       std::uintptr_t address, std::size_t nbytes) {
             auto out = std::make_unique<PyLoader>();
             ModelLoaderOptions o;
             // The engine's own shard buffer (adopt_parameters): loaded in place, no copy.
             if (nbytes > 0) o.buffer = std::span<std::byte>(reinterpret_cast<std::byte*>(address), nbytes);
             o.instance_id = instance_id;
             o.layout = layout;
             o.rank = rank;
             o.revision = revision;
             o.checkpoint_path = checkpoint_path;
             o.stall_timeout_s = stall_timeout_s;
             o.load_timeout_s = load_timeout_s;
             o.interrupt = PythonSignalHook();  // Ctrl-C stops Load within ~0.1 s
             GilRelease release;
             out->registry = MakeCoordinatorSourceRegistry(coordinator);
             out->loader = ValueOrThrow(ModelLoader::Create(*out->registry, model, std::move(o)));
             return out;
           }),
           py::keep_alive<1, 2>(), py::arg("coordinator"), py::arg("model"), py::arg("layout"), py::arg("rank"),
           py::arg("instance_id"), py::arg("revision"), py::arg("checkpoint_path"), py::arg("stall_timeout_s"),
           py::arg("load_timeout_s"), py::arg("address") = 0, py::arg("nbytes") = 0)
      .def("load",
           [](PyLoader& l) {
             ModelLoader& loader = l.get();
             Result<LoadReport> r = Internal("not run");
             {
               GilRelease release;
               r = loader.Load();
             }
             return ReportToDict(ValueOrPythonError(std::move(r)));
           })
      .def_property_readonly("loaded", [](PyLoader& l) { return l.loader && l.loader->loaded(); })
      .def_property_readonly("identity", [](PyLoader& l) { return l.get().identity().Digest(); })
      .def_property_readonly("buffer_address",
                             [](PyLoader& l) { return reinterpret_cast<std::uintptr_t>(l.get().buffer().data()); })
      .def_property_readonly("buffer_bytes", [](PyLoader& l) { return l.get().buffer().size(); })
      .def(
          "become_source",
          [](PyLoader& l, double heartbeat_interval_s, double bandwidth_bytes_per_s, double shutdown_timeout_s) {
            ModelLoader& loader = l.get();
            auto out = std::make_unique<PySource>();
            out->registry = l.registry;
            out->identity = loader.identity();
            out->buffer_bytes = loader.buffer().size();
            ModelSourceOptions o =
                SourceOptions("", "", 0, heartbeat_interval_s, bandwidth_bytes_per_s, shutdown_timeout_s);
            {
              GilRelease release;
              out->source = ValueOrThrow(loader.BecomeSource(std::move(o)));
            }
            l.loader.reset();
            return out;
          },
          py::keep_alive<0, 1>(), py::arg("heartbeat_interval_s"), py::arg("bandwidth_bytes_per_s"),
          py::arg("shutdown_timeout_s"));
}

}  // namespace shardwire::python
