// Model identity and layout fingerprints: when two instances hold the same bytes,
// and whether two processes agree, byte for byte, on where every shard sits.
//
// P2P model loading (model_loading.h) reads one instance's shards out of another
// instance's buffer with one-sided READs. That is only correct when
//   1. both hold the same model: same tensor names, dtypes, shapes, quantisation and
//      content revision (the ModelIdentity digest), and
//   2. the loader computes the same buffer offsets for the source's layout as the
//      source itself used (the LayoutFingerprint).
// Both digests are pure functions of their inputs: a layout's buffer offsets come
// from Layout (model + layout string), never from allocator state, so two processes
// of the same build always agree. (ModelExpress #246 compared region lists built
// from allocator state: 223 vs 219 regions for the same Llama-3.1-8B.) The
// fingerprint is still compared before any descriptor is built, to catch a source
// of another build or one that lies about its layout; its inputs are kept as text
// lines so a mismatch can name the first differences.
//
// Digests: XXH3-128 (xxhash, Debian libxxhash) over a canonical text rendering,
// printed as 32 lower-case hex digits with a prefix ("mi1-" / "lf1-"; the digit is
// the rendering's version). Not a cryptographic hash: it detects mistakes, not an
// adversary (use the coordinator's token for that).
//
// Thread-safety: pure functions and plain value types.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/checkpoint.h"
#include "shardwire/layout.h"
#include "shardwire/model_description.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// What bytes a model instance holds, independent of how they are sharded.
struct ModelIdentity {
  /// Every parameter tensor (name, dtype, global shape), in the model description's
  /// order (the order is part of the identity: it fixes nothing about bytes, but two
  /// descriptions that order differently come from different code).
  std::vector<TensorSpec> tensors;
  /// Quantisation: "" for none, else e.g. "fp8 block 128x128" (from the config's
  /// quant_method and weight_block_size).
  std::string quantization;
  /// Content revision: a user-given string (e.g. a hub commit) or CheckpointRevision()
  /// of the checkpoint the seed read. Two identities with different revisions never
  /// match, even when their tensor lists agree.
  std::string revision;

  /// "mi1-" + 32 hex digits: XXH3-128 of CanonicalText(). Stable across processes,
  /// builds and machines (little- and big-endian render the same text).
  std::string Digest() const;
  /// Like Digest() without the revision ("ms1-" + 32 hex): says whether two instances
  /// hold the same *kind* of model, used to find the revisions served of it.
  std::string StructureDigest() const;
  /// The canonical rendering: one line per tensor "<name> <DTYPE>[d0, d1, ...]", then
  /// "quantization <q>" and "revision <r>" (the revision line is absent from the
  /// structure rendering).
  std::string CanonicalText(bool with_revision = true) const;
};

/// The identity of the model `model` describes, with content revision `revision`.
/// Errors: kInvalidArgument for an empty revision or a model without tensors.
Result<ModelIdentity> MakeModelIdentity(const ModelDescription& model, std::string revision);

/// The prefix of every CheckpointRevision ("xxh3:").
inline constexpr std::string_view kCheckpointRevisionPrefix = "xxh3:";

/// A content revision of a checkpoint: "xxh3:" + 32 hex digits, XXH3-128 over every
/// tensor's name, dtype, shape and data bytes in name order (so re-sharding the same
/// tensors into other files keeps the revision). Reads every byte once (about the
/// speed of memory: ~0.1 s per GB warm, the disk's speed cold).
/// `interrupt`, when set, is asked before each tensor and after every
/// kInterruptCheckBytes hashed (shard_io.h), on the calling thread; a non-OK Status
/// stops the hashing and is returned as it is (e.g. a load's Ctrl-C or deadline).
/// Errors: those of Checkpoint::Get (kNotFound for a vanished tensor); the interrupt's.
Result<std::string> CheckpointRevision(const Checkpoint& checkpoint, const std::function<Status()>& interrupt = {});

/// The fingerprint inputs of a layout, one text line each, in a fixed order:
///   "layout <description> world <N> tensors <T>",
///   one "tensor <i> <name> <DTYPE>[shape]" per tensor,
///   then per rank class c: "class <c> ranks <r0,r1,...> bytes <buffer_bytes>" followed by
///   one "  shard <tensor name> off[..] shape[..] @<byte offset> p<partial group>" per
///   shard in buffer order.
/// Lines are what differs between two layouts, so FingerprintDifferences can name them.
std::vector<std::string> LayoutFingerprintInputs(const Layout& layout);

/// "lf1-" + 32 hex digits: XXH3-128 of the inputs joined with '\n'. A pure function
/// of the layout (hence of model + layout string); equal fingerprints mean every rank
/// holds the same boxes at the same byte offsets.
std::string LayoutFingerprint(const Layout& layout);
/// The same digest from already computed inputs.
std::string LayoutFingerprintOf(const std::vector<std::string>& inputs);

/// The first `max_differences` differences between two fingerprint input lists, as
/// human-readable lines: "line <k>: expected \"...\" found \"...\"", "missing ..." or
/// "unexpected ..." (a line-by-line comparison with resynchronisation on equal lines,
/// so one inserted shard reports one difference, not all the lines after it). Empty
/// when the lists are equal.
std::vector<std::string> FingerprintDifferences(const std::vector<std::string>& expected,
                                                const std::vector<std::string>& found, std::size_t max_differences = 8);

}  // namespace shardwire
