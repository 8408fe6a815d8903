#include "shardwire/engine_format.h"

#include <fmt/format.h>

namespace shardwire {

Result<ModelDescription> DescribeEngineModel(const ModelDescription& trainer_model, const EngineFormatOptions& options) {
  const ModelConfig& trainer_config = trainer_model.config;
  if (!trainer_config.quant_method.empty()) {
    return InvalidArgument(fmt::format(
        "the trainer's model is already quantised (quant_method \"{}\"): describe the unquantised original",
        trainer_config.quant_method));
  }
  ModelDescription engine = trainer_model;
  if (options.weights == EngineWeightFormat::kFp8Block) {
    if (options.fp8_block[0] < 1 || options.fp8_block[1] < 1) {
      return InvalidArgument(
          fmt::format("FP8 block size {}x{} must be at least 1x1", options.fp8_block[0], options.fp8_block[1]));
    }
    ModelConfig config = trainer_config;
    config.quant_method = "fp8";
    config.fp8_block_size = options.fp8_block;
    SW_ASSIGN_OR_RETURN(engine, DescribeModel(config));
    // Keep the trainer's layer count (a WithLayers description re-described has the same config).
  }
  if (options.apply_engine_dtypes) {
    for (ModelTensor& t : engine.tensors) {
      if (t.engine_dtype && t.spec.dtype != DType::kF8E4M3 && t.scale_of.empty()) t.spec.dtype = *t.engine_dtype;
    }
  }
  return engine;
}

}  // namespace shardwire
