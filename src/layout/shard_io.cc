#include "shardwire/shard_io.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace shardwire {

void CopyBoxFromTensor(const TensorSpec& spec, std::span<const std::byte> full, const Box& box,
                       std::span<std::byte> out) {
  const std::size_t esize = DTypeSize(spec.dtype);
  ForEachContiguousRun(box, WholeBox(spec.shape), box, [&](std::int64_t from, std::int64_t to, std::int64_t n) {
    std::memcpy(out.data() + static_cast<std::size_t>(to) * esize, full.data() + static_cast<std::size_t>(from) * esize,
                static_cast<std::size_t>(n) * esize);
  });
}

namespace {

// Whether `only` is sorted, disjoint, non-empty and inside [0, size).
Status CheckIntervals(std::span<const BufferInterval> only, std::uint64_t size, int rank) {
  std::uint64_t last_end = 0;
  for (std::size_t i = 0; i < only.size(); ++i) {
    const BufferInterval& iv = only[i];
    const char* what = iv.begin >= iv.end             ? "is empty"
                       : iv.end > size                ? "ends past the buffer"
                       : i > 0 && iv.begin < last_end ? "starts before the end of the interval before it"
                                                      : nullptr;
    if (what != nullptr) {
      return InvalidArgument(
          fmt::format("rank {} buffer of {} bytes: interval {} [{}, {}) {} (intervals must be "
                      "sorted, disjoint and non-empty)",
                      rank, size, i, iv.begin, iv.end, what));
    }
    last_end = iv.end;
  }
  return Status::Ok();
}

// Copies bytes in pieces of kInterruptCheckBytes at most, asking the hook between them;
// once it stopped the read, every later call does nothing.
class InterruptibleCopy {
 public:
  explicit InterruptibleCopy(const std::function<Status()>& interrupt) : interrupt_(interrupt) {}

  // Copies n bytes unless stopped; false once stopped.
  bool Copy(std::byte* to, const std::byte* from, std::uint64_t n) {
    while (n > 0 && status_.ok()) {
      const std::uint64_t piece = std::min(n, kInterruptCheckBytes - since_check_);
      std::memcpy(to, from, piece);
      to += piece;
      from += piece;
      n -= piece;
      since_check_ += piece;
      if (since_check_ == kInterruptCheckBytes) Ask();
    }
    return status_.ok();
  }
  void Ask() {
    since_check_ = 0;
    if (interrupt_ && status_.ok()) status_ = interrupt_();
  }
  const Status& status() const { return status_; }

 private:
  const std::function<Status()>& interrupt_;
  std::uint64_t since_check_ = 0;
  Status status_ = Status::Ok();
};

}  // namespace

Status LoadShardsFromCheckpoint(const Checkpoint& checkpoint, const Layout& layout, int rank,
                                std::span<std::byte> buffer, const ShardReadOptions& options) {
  const RankShards& shards = layout.rank(rank);
  if (buffer.size() != shards.buffer_bytes) {
    return InvalidArgument(fmt::format("rank {} buffer holds {} bytes, layout {} needs {}", rank, buffer.size(),
                                       layout.description(), shards.buffer_bytes));
  }
  if (options.only) SW_RETURN_IF_ERROR(CheckIntervals(*options.only, buffer.size(), rank));
  // Every tensor checked before any byte is written.
  std::vector<std::span<const std::byte>> data;
  data.reserve(shards.shards.size());
  for (const ShardRef& shard : shards.shards) {
    const TensorSpec& spec = layout.tensors()[shard.tensor];
    SW_ASSIGN_OR_RETURN(const TensorView view, checkpoint.Get(spec.name));
    if (view.spec.shape != spec.shape || view.spec.dtype != spec.dtype) {
      return LayoutMismatch(fmt::format("checkpoint {} holds {}, layout {} expects {}", checkpoint.path(),
                                        ToString(view.spec), layout.description(), ToString(spec)));
    }
    data.push_back(view.data);
  }
  InterruptibleCopy copy(options.interrupt);
  copy.Ask();
  for (std::size_t i = 0; i < shards.shards.size() && copy.status().ok(); ++i) {
    const ShardRef& shard = shards.shards[i];
    const TensorSpec& spec = layout.tensors()[shard.tensor];
    const std::uint64_t esize = DTypeSize(spec.dtype);
    const std::uint64_t shard_begin = shard.byte_offset;
    const std::uint64_t shard_end = shard_begin + static_cast<std::uint64_t>(shard.box.numel()) * esize;
    // The wanted intervals that overlap this shard (all of it when `only` is unset).
    std::span<const BufferInterval> wanted;
    const BufferInterval whole{shard_begin, shard_end};
    if (options.only) {
      const auto first = std::upper_bound(options.only->begin(), options.only->end(), shard_begin,
                                          [](std::uint64_t at, const BufferInterval& iv) { return at < iv.end; });
      auto last = first;
      while (last != options.only->end() && last->begin < shard_end) ++last;
      wanted = std::span<const BufferInterval>(first, last);
    } else {
      wanted = std::span<const BufferInterval>(&whole, 1);
    }
    if (wanted.empty() || shard_begin == shard_end) continue;
    const std::byte* full = data[i].data();
    std::size_t cursor = 0;  // runs come in increasing buffer order: the first interval that may overlap
    ForEachContiguousRun(shard.box, WholeBox(spec.shape), shard.box,
                         [&](std::int64_t from, std::int64_t to, std::int64_t n) {
                           if (!copy.status().ok()) return;
                           const std::uint64_t run_begin = shard_begin + static_cast<std::uint64_t>(to) * esize;
                           const std::uint64_t run_end = run_begin + static_cast<std::uint64_t>(n) * esize;
                           const std::byte* src = full + static_cast<std::uint64_t>(from) * esize;
                           while (cursor < wanted.size() && wanted[cursor].end <= run_begin) ++cursor;
                           for (std::size_t k = cursor; k < wanted.size() && wanted[k].begin < run_end; ++k) {
                             const std::uint64_t a = std::max(run_begin, wanted[k].begin);
                             const std::uint64_t b = std::min(run_end, wanted[k].end);
                             if (!copy.Copy(buffer.data() + a, src + (a - run_begin), b - a)) return;
                           }
                         });
  }
  return copy.status();
}

}  // namespace shardwire
