// Model descriptions in Python: shardwire.Model (a ModelDescription) from an HF config or a
// checkpoint, and its tensors with their parallel roles.
#include <fmt/format.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "gil_release.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_model.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_rules.h"
#include "status_bindings.h"

namespace py = pybind11;

namespace shardwire::python {

void BindModel(py::module_& m) {
  m.def(
      "load_model_rules",
      [](const std::string& path) {
        GilRelease release;  // reads a file
        ThrowIfError(LoadUserModelRules(path));
      },
      py::arg("path"),
      "Loads a model rules file (docs/model_rules.md; what `--model-rules FILE` does for the CLI) and registers it\n"
      "for this process: Model.from_config / from_config_json / from_checkpoint then describe its model_types\n"
      "with it, before the built-in rules. Write one with `shardwire describe --checkpoint PATH --write-rules FILE`.\n"
      "Raises InvalidArgumentError naming file and line (a malformed file; another file already loaded for one of\n"
      "its model_types), IoError (the file cannot be read, naming it). Thread-safe.");
  py::class_<ModelDescription>(m, "Model",
                               "A model's parameter tensors with their parallel roles (C++ ModelDescription).\n"
                               "Immutable from Python; build one with Model.from_config / Model.from_checkpoint.")
      .def_static(
          "from_config",
          [](const std::string& config_path, int num_layers) {
            if (num_layers < 0) {
              ThrowIfError(InvalidArgument(
                  fmt::format("Model.from_config: num_layers {} is negative (0: the config's layers)", num_layers)));
            }
            ModelDescription d = ValueOrThrow(DescribeModel(ValueOrThrow(LoadModelConfig(config_path))));
            return num_layers > 0 ? ValueOrThrow(WithLayers(d, num_layers)) : d;
          },
          py::arg("config_path"), py::arg("num_layers") = 0,
          "Describes the model of an HF config.json. num_layers > 0 gives it that many decoder layers (fewer or more\n"
          "than the config's: the test and benchmark models of real shapes); 0 keeps the config's.\n"
          "Raises UnsupportedError (unknown model_type), InvalidArgumentError (also a negative num_layers),\n"
          "NotFoundError, CorruptDataError.")
      .def_static(
          "from_config_json",
          [](const std::string& json_text) {
            return ValueOrThrow(DescribeModel(ValueOrThrow(ParseModelConfig(json_text, "<python>"))));
          },
          py::arg("json_text"), "As from_config, from the text of a config.json.")
      .def_static(
          "from_checkpoint",
          [](const std::string& path, const std::string& config_path) {
            Checkpoint checkpoint = ValueOrThrow(Checkpoint::Open(path));
            return ValueOrThrow(DescribeCheckpointModel(checkpoint, config_path));
          },
          py::arg("path"), py::arg("config_path") = "",
          "Describes the model stored in a safetensors file, sharded index or directory (config.json beside it\n"
          "unless config_path is given).")
      .def_property_readonly("model_type", [](const ModelDescription& d) { return d.config.model_type; })
      .def_property_readonly("total_bytes", &ModelDescription::total_bytes, "Bytes of all tensors.")
      .def_property_readonly("total_params", &ModelDescription::total_params, "Elements of all tensors.")
      .def_property_readonly(
          "tensors",
          [](const ModelDescription& d) {
            py::list out;
            for (const ModelTensor& t : d.tensors) {
              py::dict e;
              e["name"] = t.spec.name;
              e["dtype"] = std::string(DTypeName(t.spec.dtype));
              e["shape"] = t.spec.shape;
              e["role"] = std::string(ParallelRoleName(t.role));
              e["layer"] = t.layer;
              e["expert"] = t.expert;
              out.append(std::move(e));
            }
            return out;
          },
          "List of dicts {name, dtype (safetensors name, e.g. 'BF16'), shape, role ('column'|'row'|'vocab'|\n"
          "'replicated'), layer (-1 outside layers), expert (-1 unless a routed expert)}.")
      .def_property_readonly(
          "fused",
          [](const ModelDescription& d) {
            py::dict out;
            for (const FusedParameter& f : d.fused) out[py::str(f.name)] = f.parts;
            return out;
          },
          "Fused parameters as engines hold them: {fused name: [part names concatenated on dim 0]}.")
      .def("__len__", [](const ModelDescription& d) { return d.tensors.size(); });
}

}  // namespace shardwire::python
