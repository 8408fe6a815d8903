// FP8 block quantisation from Python (include/shardwire/fp8_block.h). The Python side
// (python/shardwire/convert.py) validates the tensors and passes their addresses.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"
#include "shardwire/fp8_block.h"
#include "status_bindings.h"

namespace py = pybind11;

namespace shardwire::python {
namespace {

Fp8BlockOptions Options(bool ue8m0, bool exact_division) {
  Fp8BlockOptions o;
  o.scale_format = ue8m0 ? Fp8ScaleFormat::kUe8m0 : Fp8ScaleFormat::kFp32;
  o.arithmetic = exact_division ? Fp8ScaleArithmetic::kExactDivision : Fp8ScaleArithmetic::kTorchCuda;
  return o;
}

std::int64_t Numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

}  // namespace

void BindConvert(py::module_& m) {
  m.def(
      "_fp8_scale_shape",
      [](const std::vector<std::int64_t>& shape) { return ValueOrThrow(Fp8BlockScaleShape(shape, {})); },
      py::arg("shape"));
  m.def(
      "_quantize_fp8_block",
      [](const std::string& name, const std::string& dtype, const std::vector<std::int64_t>& shape,
         std::uintptr_t src, std::uintptr_t q, std::uintptr_t scale_inv, bool ue8m0, bool exact_division) {
        const DType d = ValueOrThrow(ParseDType(dtype));
        const Fp8BlockOptions options = Options(ue8m0, exact_division);
        const std::int64_t numel = Numel(shape);
        const std::int64_t scales = Numel(ValueOrThrow(Fp8BlockScaleShape(shape, options)));
        TensorView view{TensorSpec{name, d, shape},
                        std::span(reinterpret_cast<const std::byte*>(src),
                                  static_cast<std::size_t>(numel) * DTypeSize(d))};
        GilRelease release;
        ThrowIfError(QuantizeFp8BlockTensor(
            view, std::span(reinterpret_cast<std::uint8_t*>(q), static_cast<std::size_t>(numel)),
            std::span(reinterpret_cast<float*>(scale_inv), static_cast<std::size_t>(scales)), options));
      },
      py::arg("name"), py::arg("dtype"), py::arg("shape"), py::arg("src"), py::arg("q"), py::arg("scale_inv"),
      py::arg("ue8m0"), py::arg("exact_division"));
  m.def(
      "_dequantize_fp8_block",
      [](const std::vector<std::int64_t>& shape, std::uintptr_t q, std::uintptr_t scale_inv, const std::string& dtype,
         std::uintptr_t out, bool ue8m0) {
        const DType d = ValueOrThrow(ParseDType(dtype));
        const Fp8BlockOptions options = Options(ue8m0, false);
        const std::int64_t numel = Numel(shape);
        const std::int64_t scales = Numel(ValueOrThrow(Fp8BlockScaleShape(shape, options)));
        GilRelease release;
        ThrowIfError(DequantizeFp8Block(
            std::span(reinterpret_cast<const std::uint8_t*>(q), static_cast<std::size_t>(numel)),
            std::span(reinterpret_cast<const float*>(scale_inv), static_cast<std::size_t>(scales)), shape, d,
            std::span(reinterpret_cast<std::byte*>(out), static_cast<std::size_t>(numel) * DTypeSize(d)), options));
      },
      py::arg("shape"), py::arg("q"), py::arg("scale_inv"), py::arg("dtype"), py::arg("out"), py::arg("ue8m0"));
}

}  // namespace shardwire::python
