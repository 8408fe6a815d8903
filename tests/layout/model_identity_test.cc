// Model identity and layout fingerprints: stable, sensitive to every input, and
// differences named line by line.
#include "shardwire/model_identity.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "describe_model.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"

namespace shardwire {
namespace {

using layout_test::Describe;

ModelDescription Llama(int layers = 2, const char* dtype = "bfloat16") {
  return Describe(fmt::format(R"({{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": {},
      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 128,
      "torch_dtype": "{}"}})",
                              layers, dtype));
}

Layout MakeLayout(const ModelDescription& model, const std::string& spec) {
  auto layout = MakeLayoutFromString(model, spec);
  EXPECT_TRUE(layout.ok()) << layout.status().ToString();
  return *layout;
}

TEST(ModelIdentity, DigestIsStableAndCoversEveryInput) {
  const ModelDescription model = Llama();
  auto a = MakeModelIdentity(model, "rev-1");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  // Recomputed from a fresh description: the digest depends on content only.
  EXPECT_EQ(a->Digest(), MakeModelIdentity(Llama(), "rev-1")->Digest());
  EXPECT_EQ(a->Digest().substr(0, 4), "mi1-");
  EXPECT_EQ(a->Digest().size(), 4u + 32u);

  EXPECT_NE(a->Digest(), MakeModelIdentity(model, "rev-2")->Digest()) << "revision";
  EXPECT_EQ(a->StructureDigest(), MakeModelIdentity(model, "rev-2")->StructureDigest()) << "structure ignores revision";
  EXPECT_NE(a->Digest(), MakeModelIdentity(Llama(3), "rev-1")->Digest()) << "tensor list";
  EXPECT_NE(a->Digest(), MakeModelIdentity(Llama(2, "float32"), "rev-1")->Digest()) << "dtype";

  ModelIdentity shape = *a;
  shape.tensors[1].shape[0] += 1;
  EXPECT_NE(a->Digest(), shape.Digest()) << "shape";
  ModelIdentity quant = *a;
  quant.quantization = "fp8 block 128x128";
  EXPECT_NE(a->Digest(), quant.Digest()) << "quantization";
  ModelIdentity renamed = *a;
  renamed.tensors[0].name += "x";
  EXPECT_NE(a->Digest(), renamed.Digest()) << "name";
}

TEST(ModelIdentity, RejectsEmptyRevision) {
  auto id = MakeModelIdentity(Llama(), "");
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), ErrorCode::kInvalidArgument);
}

TEST(ModelIdentity, Fp8QuantisationIsPartOfTheIdentity) {
  const ModelDescription fp8 = Describe(R"({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 1,
      "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 128,
      "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})");
  auto id = MakeModelIdentity(fp8, "r");
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(id->quantization, "fp8 block 128x128");
}

TEST(LayoutFingerprint, PureFunctionOfModelAndLayout) {
  const ModelDescription model = Llama();
  const std::string tp2 = LayoutFingerprint(MakeLayout(model, "tp=2"));
  EXPECT_EQ(tp2, LayoutFingerprint(MakeLayout(Llama(), "tp=2")));
  EXPECT_EQ(tp2.substr(0, 4), "lf1-");
  EXPECT_NE(tp2, LayoutFingerprint(MakeLayout(model, "tp=4")));
  EXPECT_NE(tp2, LayoutFingerprint(MakeLayout(model, "tp=1")));
  EXPECT_NE(tp2, LayoutFingerprint(MakeLayout(Llama(3), "tp=2")));
}

TEST(LayoutFingerprint, OffsetChangeIsDetectedAndNamed) {
  const ModelDescription model = Llama();
  const Layout layout = MakeLayout(model, "tp=2");
  const std::vector<std::string> inputs = LayoutFingerprintInputs(layout);
  ASSERT_GT(inputs.size(), 10u);
  EXPECT_EQ(LayoutFingerprintOf(inputs), LayoutFingerprint(layout));

  // Same shards, one byte offset moved: the fingerprint changes and the difference
  // names that shard.
  std::vector<std::string> moved = inputs;
  std::size_t k = 0;
  for (std::size_t i = 0; i < moved.size(); ++i) {
    if (moved[i].find("  shard model.layers.1.mlp.down_proj.weight") == 0) k = i;
  }
  ASSERT_NE(k, 0u);
  moved[k] += "0";  // "@1234 p0" -> "@1234 p00": any textual change
  EXPECT_NE(LayoutFingerprintOf(moved), LayoutFingerprintOf(inputs));
  const auto diffs = FingerprintDifferences(inputs, moved);
  ASSERT_EQ(diffs.size(), 1u);
  EXPECT_NE(diffs[0].find("model.layers.1.mlp.down_proj.weight"), std::string::npos) << diffs[0];
  EXPECT_TRUE(FingerprintDifferences(inputs, inputs).empty());
}

TEST(LayoutFingerprint, InsertedAndMissingLinesResynchronise) {
  const std::vector<std::string> a = {"x", "a", "b", "c", "d"};
  const std::vector<std::string> inserted = {"x", "a", "NEW", "b", "c", "d"};
  auto d = FingerprintDifferences(a, inserted);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_NE(d[0].find("unexpected line 3: \"NEW\""), std::string::npos) << d[0];
  d = FingerprintDifferences(a, {"x", "a", "c", "d"});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_NE(d[0].find("missing line 3: \"b\""), std::string::npos) << d[0];
  d = FingerprintDifferences(a, {"y", "a", "b", "c", "d", "e"});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NE(d[0].find("expected \"x\" found \"y\""), std::string::npos) << d[0];
  EXPECT_NE(d[1].find("unexpected line 6: \"e\""), std::string::npos) << d[1];
  // The cap holds.
  EXPECT_EQ(FingerprintDifferences({"1", "2", "3", "4"}, {"5", "6", "7", "8"}, 2).size(), 2u);
}

TEST(LayoutFingerprint, RowAndColumnShardsDifferBetweenTpSizes) {
  const ModelDescription model = Llama();
  const auto d = FingerprintDifferences(LayoutFingerprintInputs(MakeLayout(model, "tp=2")),
                                        LayoutFingerprintInputs(MakeLayout(model, "tp=4")), 3);
  ASSERT_FALSE(d.empty());
  EXPECT_NE(d[0].find("tp=2"), std::string::npos) << d[0];  // the header line names both layouts
}

}  // namespace
}  // namespace shardwire
