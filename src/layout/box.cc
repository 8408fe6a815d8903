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

void ForEachStridedRun(const Box& region, const Box& from, const Box& to,
                       const std::function<void(const StridedRun&)>& fn) {
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
  // The outermost dimension `k` such that every dimension after it spans the full extent
  // of both buffers: a run then covers region.shape[k] * inner elements.
  std::size_t k = rank;  // k == rank means a 0-d tensor: a single element
  std::int64_t run = 1;
  for (std::size_t i = rank; i-- > 0;) {
    k = i;
    run *= region.shape[i];
    if (region.shape[i] != from.shape[i] || region.shape[i] != to.shape[i]) break;
  }
  std::int64_t from_base = 0, to_base = 0;
  for (std::size_t d = 0; d < rank; ++d) {
    from_base += (region.offset[d] - from.offset[d]) * from_stride[d];
    to_base += (region.offset[d] - to.offset[d]) * to_stride[d];
  }
  StridedRun r;
  r.elements = run;
  if (k == 0 || k == rank) {  // one contiguous run
    r.from_element = from_base;
    r.to_element = to_base;
    fn(r);
    return;
  }
  // Dimension k-1 becomes the stride; an odometer walks dimensions [0, k-1).
  const std::size_t s = k - 1;
  r.count = region.shape[s];
  r.from_stride = from_stride[s];
  r.to_stride = to_stride[s];
  Dims idx(s, 0);
  while (true) {
    r.from_element = from_base;
    r.to_element = to_base;
    for (std::size_t d = 0; d < s; ++d) {
      r.from_element += idx[d] * from_stride[d];
      r.to_element += idx[d] * to_stride[d];
    }
    fn(r);
    std::size_t d = s;
    while (d > 0) {
      --d;
      if (++idx[d] < region.shape[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (s == 0) return;
  }
}

void ForEachContiguousRun(const Box& region, const Box& from, const Box& to,
                          const std::function<void(std::int64_t, std::int64_t, std::int64_t)>& fn) {
  ForEachStridedRun(region, from, to, [&](const StridedRun& r) {
    for (std::int64_t i = 0; i < r.count; ++i)
      fn(r.from_element + i * r.from_stride, r.to_element + i * r.to_stride, r.elements);
  });
}

}  // namespace shardwire
