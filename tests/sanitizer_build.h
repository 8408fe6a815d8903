// Which sanitizer a test binary is built with (scripts/test.sh's asan and tsan stages), for
// the few tests whose bounds or sizes depend on it. GCC defines __SANITIZE_ADDRESS__ and
// __SANITIZE_THREAD__; clang answers __has_feature(address_sanitizer / thread_sanitizer).
#pragma once

namespace shardwire::testing_support {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
#else
inline constexpr bool kThreadSanitizer = false;
#endif

}  // namespace shardwire::testing_support
