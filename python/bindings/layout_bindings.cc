// Layouts in Python: shardwire.Layout from the same layout strings as the CLI
// (docs/planner.md, "Layout strings"), with every rank's shards and buffer offsets.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "shardwire/layout.h"
#include "shardwire/model_description.h"
#include "shardwire/model_layouts.h"
#include "status_bindings.h"

namespace py = pybind11;

namespace shardwire::python {

void BindLayout(py::module_& m) {
  py::class_<Layout>(m, "Layout",
                     "Which slice of which tensor every rank holds and where in the rank's buffer it lives.\n"
                     "Each rank holds one contiguous buffer; shards are dense row-major boxes at 64-byte aligned\n"
                     "offsets (fused parameters back to back). Immutable.")
      .def_static(
          "from_string",
          [](const ModelDescription& model, const std::string& spec) {
            return ValueOrThrow(MakeLayoutFromString(model, spec));
          },
          py::arg("model"), py::arg("spec"),
          "Builds a layout from a layout string, e.g. 'fsdp=2', 'tp=2,dp=2', 'hsdp=2x2', 'tp=2,ep=2'.\n"
          "Raises InvalidArgumentError naming the offending character or the tensor that cannot be split.")
      .def_property_readonly("description", &Layout::description)
      .def_property_readonly("world_size", &Layout::world_size)
      .def(
          "buffer_bytes",
          [](const Layout& l, int rank) {
            CheckRankInRange("layout " + l.description() + ":", rank, l.world_size());
            return l.rank(rank).buffer_bytes;
          },
          py::arg("rank"), "Bytes of rank `rank`'s shard buffer.")
      .def(
          "shards",
          [](const Layout& l, int rank) {
            CheckRankInRange("layout " + l.description() + ":", rank, l.world_size());
            py::list out;
            for (const ShardRef& s : l.rank(rank).shards) {
              const TensorSpec& t = l.tensors()[s.tensor];
              py::dict e;
              e["name"] = t.name;
              e["dtype"] = std::string(DTypeName(t.dtype));
              e["global_shape"] = t.shape;
              std::vector<std::int64_t> offset(s.box.offset.begin(), s.box.offset.end());
              std::vector<std::int64_t> shape(s.box.shape.begin(), s.box.shape.end());
              e["offset"] = offset;  // element offset of the shard in the global tensor, per dim
              e["shape"] = shape;    // shard extent per dim
              e["byte_offset"] = s.byte_offset;
              e["nbytes"] = static_cast<std::uint64_t>(s.box.numel()) * DTypeSize(t.dtype);
              e["partial_group"] = s.partial_group;
              out.append(std::move(e));
            }
            return out;
          },
          py::arg("rank"),
          "The shards rank `rank` holds, in buffer order: dicts {name, dtype, global_shape, offset (elements,\n"
          "per dim), shape (per dim), byte_offset (bytes into the rank buffer), nbytes, partial_group}.");
}

}  // namespace shardwire::python
