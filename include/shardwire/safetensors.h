// Reading and writing single safetensors files.
//
// Format (huggingface/safetensors, README "Format"):
//   * 8 bytes: N, an unsigned little-endian 64-bit integer, the size of the header;
//   * N bytes: a UTF-8 JSON object. Each key is a tensor name mapping to
//     {"dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end]};
//     the optional key "__metadata__" maps to a string->string object (or null).
//     Writers may pad the header with trailing spaces (0x20) so that the data starts at
//     a multiple of 8; readers must not rely on it (real files have unaligned headers,
//     e.g. 2122 bytes).
//   * the data section: the rest of the file. data_offsets are byte offsets relative to
//     the start of the data section, end exclusive. "The byte buffer needs to be entirely
//     indexed, and cannot contain holes", so the tensors tile the data section exactly.
//   Tensors are row-major, little-endian. The reference implementation rejects headers
//   larger than 100,000,000 bytes; so do we.
//
// Thread-safety: a SafetensorsFile is immutable after Open; its const methods may be called
// from any number of threads at once. The write functions touch only their own file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// Largest header length (bytes) accepted, as in the reference implementation.
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

/// A tensor's spec plus its bytes. When returned by SafetensorsFile/Checkpoint, `data`
/// points into the read-only mapping (no copy) and is valid while that object lives;
/// data.size() == spec.nbytes(). The start address may be unaligned.
struct TensorView {
  TensorSpec spec;                  ///< name, dtype, shape
  std::span<const std::byte> data;  ///< the tensor's bytes, row-major, little-endian
};

/// One safetensors file, memory-mapped read-only and validated at Open.
/// Move-only RAII: the file descriptor is closed right after mmap; the mapping is
/// released (munmap) by the destructor. A moved-from object is empty (no tensors).
class SafetensorsFile {
 public:
  /// Opens, maps and validates `path`. Errors:
  ///  * kNotFound: `path` does not exist (message names it);
  ///  * kIoError: the file cannot be opened, stat'ed or mapped, or is not a regular file
  ///    (message names path and the OS error);
  ///  * kCorruptData (message names the file and, where relevant, the tensor): file shorter
  ///    than 8 bytes; header length > kMaxSafetensorsHeaderBytes or past the end of the
  ///    file; header not valid JSON or not an object; `__metadata__` not an object of
  ///    strings; an entry missing dtype/shape/data_offsets or of the wrong JSON type;
  ///    unknown dtype; negative or non-integer dims; element count overflow; begin > end;
  ///    end past the data section; end-begin != numel * dtype size; two tensors
  ///    overlapping; a hole between tensors or trailing bytes after the last one;
  ///  * kInvalidArgument: a tensor of more than kMaxTensorDims dimensions (names it).
  /// Zero-size tensors (a 0 in the shape) are allowed.
  static Result<SafetensorsFile> Open(const std::string& path);

  /// Takes over the mapping; `other` is left empty. Views obtained from `other` stay valid.
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  /// Unmaps this object's file, then takes over `other`'s mapping.
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;             ///< not copyable
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;  ///< not copyable
  /// Unmaps the file; every TensorView obtained from this object becomes dangling.
  ~SafetensorsFile();

  /// All tensors, in data-offset order (ascending begin offset).
  const std::vector<TensorSpec>& tensors() const { return tensors_; }

  /// The tensor `name` with its bytes. kNotFound naming the tensor and the file if absent.
  Result<TensorView> Get(std::string_view name) const;

  /// True when the file holds a tensor called `name`.
  bool Contains(std::string_view name) const;

  /// The header's optional `__metadata__` (string -> string; empty when absent or null).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// The path given to Open.
  const std::string& path() const { return path_; }

  /// File offset (bytes) where the data section starts: 8 + header length. Need not be a
  /// multiple of 8.
  std::uint64_t data_offset() const { return data_offset_; }

  /// Size in bytes of the data section (file size - data_offset()).
  std::uint64_t data_size() const { return file_size_ - data_offset_; }

 private:
  SafetensorsFile() = default;
  void Release() noexcept;

  std::string path_;
  const std::byte* base_ = nullptr;  // start of the mapping (the whole file)
  std::uint64_t file_size_ = 0;
  std::uint64_t data_offset_ = 0;
  std::vector<TensorSpec> tensors_;          // in data-offset order
  std::vector<std::uint64_t> begin_;         // data_offsets begin, parallel to tensors_
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

/// Writes `tensors` (in the given order, data contiguous, no holes) to a safetensors file
/// at `path`. The header is padded with spaces to a multiple of 8 bytes, as the reference
/// writers do, so the data section starts 8-byte aligned. `metadata` becomes
/// `__metadata__` (omitted when empty). The bytes go to `path + ".tmp.<pid>"`, which is fsync'ed
/// and renamed over `path`, so readers never see a partial file.
/// Errors: kInvalidArgument for an empty or duplicate name, the name "__metadata__", a
/// negative dim, more than kMaxTensorDims dims, or data.size() != spec.nbytes() (names the
/// tensor); kIoError naming the
/// path when creating, writing, syncing or renaming fails (the .tmp file is removed).
Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

/// Supplies tensor bytes to WriteSafetensorsStreaming: fill `out` with the bytes
/// [offset, offset + out.size()) of tensor `spec` (offset in bytes from the tensor's
/// start). Chunks arrive in ascending offset order and never split an element. A non-OK
/// return aborts the write and is returned (with the path and tensor as context).
using TensorChunkFiller =
    std::function<Status(const TensorSpec& spec, std::uint64_t offset, std::span<std::byte> out)>;

/// Streaming variant of WriteSafetensors for large files: the data is produced chunk by
/// chunk by `fill` into one reused buffer of `chunk_bytes` bytes (a positive multiple of
/// 8; default 8 MiB), so writing a 2 GB file needs only that much memory. Same header
/// layout, padding, atomic rename and errors as WriteSafetensors; kInvalidArgument also
/// for a bad chunk_bytes or a missing filler.
Status WriteSafetensorsStreaming(const std::string& path, const std::vector<TensorSpec>& specs,
                                 const TensorChunkFiller& fill,
                                 const std::map<std::string, std::string>& metadata = {},
                                 std::size_t chunk_bytes = std::size_t{8} << 20);

}  // namespace shardwire
