#include "core/streaming_store.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace shardwire {

void StreamCopy(std::byte* dst, const std::byte* src, std::uint64_t length) {
#if defined(__x86_64__)
  // Plain head up to 16-byte alignment of `dst`, movntdq in 64-byte steps, then 16-byte steps,
  // plain tail.
  const std::uint64_t head = std::min<std::uint64_t>(length, (16 - (reinterpret_cast<std::uintptr_t>(dst) & 15)) & 15);
  if (head > 0) std::memcpy(dst, src, head);
  std::uint64_t i = head;
  for (; i + 64 <= length; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  for (; i + 16 <= length; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  }
  if (i < length) std::memcpy(dst + i, src + i, length - i);
#else
  if (length > 0) std::memcpy(dst, src, length);
#endif
}

void StreamFence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

}  // namespace shardwire
