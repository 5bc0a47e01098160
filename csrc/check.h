// Argument checks whose messages are built without c10::str.
//
// c10's message formatting (an std::ostringstream) killed the process with SIGSEGV when a check
// failed in this extension's CUDA translation unit on the H100 machine (torch 2.11, nvcc 13:
// bench/results/20261127T0459_.../tests_test_linear.log), while a check whose message was one
// std::string reached Python as the error it should be. AG_CHECK_VALUE / AG_CHECK_TYPE /
// AG_CHECK take TORCH_CHECK_VALUE / _TYPE / TORCH_CHECK's arguments, build the message with plain
// string appends (only when the check fails) and raise the same c10 error types.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

namespace autoglm {
namespace detail {

inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, std::string_view v) { s.append(v.data(), v.size()); }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
inline void append(std::string& s, double v) {  // as an ostream prints it (%g): 1e-05, 0.5
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  s += buf;
}
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const c10::Device& v) { s += v.str(); }
inline void append(std::string& s, c10::IntArrayRef v) {  // [2, 3], as c10 prints sizes
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}

}  // namespace detail

template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

}  // namespace autoglm

#define AG_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::autoglm::msg(__VA_ARGS__))
#define AG_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::autoglm::msg(__VA_ARGS__))
#define AG_CHECK(cond, ...) TORCH_CHECK(cond, ::autoglm::msg(__VA_ARGS__))
