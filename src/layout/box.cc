#include "shardwire/box.h"

#include <algorithm>
#include <cassert>

#include <fmt/format.h>

namespace shardwire {

std::int64_t Box::numel() const {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

Box WholeBox(const std::vector<std::int64_t>& shape) { return Box{Dims(shape.size(), 0), Dims(shape)}; }

std::optional<Box> Intersect(const Box& a, const Box& b) {
  assert(a.shape.size() == b.shape.size());
  Box r;
  r.offset.resize(a.shape.size());
  r.shape.resize(a.shape.size());
  for (std::size_t d = 0; d < a.shape.size(); ++d) {
    const std::int64_t lo = std::max(a.offset[d], b.offset[d]);
    const std::int64_t hi = std::min(a.offset[d] + a.shape[d], b.offset[d] + b.shape[d]);
    if (hi <= lo) return std::nullopt;
    r.offset[d] = lo;
    r.shape[d] = hi - lo;
  }
  if (a.numel() == 0 || b.numel() == 0) return std::nullopt;
  return r;
}

std::vector<Box> Subtract(const Box& a, const Box& b) {
  auto inter = Intersect(a, b);
  if (!inter) return a.numel() == 0 ? std::vector<Box>{} : std::vector<Box>{a};
  // Peel slabs off `a` one dimension at a time; what remains shrinks to the intersection.
  std::vector<Box> out;
  Box rest = a;
  for (std::size_t d = 0; d < a.shape.size(); ++d) {
    const std::int64_t lo = inter->offset[d];
    const std::int64_t hi = lo + inter->shape[d];
    if (rest.offset[d] < lo) {
      Box slab = rest;
      slab.shape[d] = lo - rest.offset[d];
      out.push_back(slab);
    }
    const std::int64_t rest_end = rest.offset[d] + rest.shape[d];
    if (hi < rest_end) {
      Box slab = rest;
      slab.offset[d] = hi;
      slab.shape[d] = rest_end - hi;
      out.push_back(slab);
    }
    rest.offset[d] = lo;
    rest.shape[d] = hi - lo;
  }
  return out;
}

std::string ToString(const Box& box) {
  std::string s = "[";
  for (std::size_t d = 0; d < box.shape.size(); ++d) {
    if (d) s += ", ";
    s += fmt::format("{}:{}", box.offset[d], box.offset[d] + box.shape[d]);
  }
  return s + "]";
}

void ForEachContiguousRun(
    const Box& region, const Box& from, const Box& to,
    const std::function<void(std::int64_t, std::int64_t, std::int64_t)>& fn) {
  const std::size_t rank = region.shape.size();
  if (region.numel() == 0) return;
  // Row-major strides (elements) of the two dense buffers.
  Dims from_stride(rank, 0), to_stride(rank, 0);
  std::int64_t fs = 1, ts = 1;
  for (std::size_t i = rank; i-- > 0;) {
    from_stride[i] = fs;
    to_stride[i] = ts;
    fs *= from.shape[i];
    ts *= to.shape[i];
  }
  // Find the outermost dimension `k` such that every dimension after it spans the
  // full extent of both buffers: a run then covers region.shape[k] * inner elements.
  std::size_t k = rank;  // k == rank means a 0-d tensor: a single element
  std::int64_t run = 1;
  for (std::size_t i = rank; i-- > 0;) {
    k = i;
    run *= region.shape[i];
    if (region.shape[i] != from.shape[i] || region.shape[i] != to.shape[i]) break;
  }
  // Fold leading dimensions that are also full-extent into the run.
  // (The loop above stops at the first dimension that is not full in both.)
  Dims idx(k, 0);  // odometer over dimensions [0, k)
  auto base = [&](const Box& b, const Dims& stride) {
    std::int64_t off = 0;
    for (std::size_t d = 0; d < rank; ++d) off += (region.offset[d] - b.offset[d]) * stride[d];
    return off;
  };
  const std::int64_t from_base = base(from, from_stride);
  const std::int64_t to_base = base(to, to_stride);
  while (true) {
    std::int64_t fo = from_base, to_off = to_base;
    for (std::size_t d = 0; d < k; ++d) {
      fo += idx[d] * from_stride[d];
      to_off += idx[d] * to_stride[d];
    }
    fn(fo, to_off, run);
    std::size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < region.shape[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (k == 0) return;
  }
}

}  // namespace shardwire
