// check.h: FASTLSTM_CHECK, the one way C++ code in fastlstm reports a broken precondition.
//
// It throws (never exits) an exception whose message names the file, line, failing condition and a
// caller-supplied explanation; pybind11 turns std::invalid_argument into ValueError and
// std::runtime_error into RuntimeError. Python-level validation (python/fastlstm/_validate.py) gives
// users friendlier messages first; these checks are the kernels' own last line of defence.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace fastlstm::detail {
[[noreturn]] void throw_check(const char* file, int line, const char* cond, const std::string& msg,
                              bool invalid_argument);
}  // namespace fastlstm::detail

// FASTLSTM_CHECK(cond, a << b << ...): argument errors (ValueError in Python).
#define FASTLSTM_CHECK(cond, msg)                                                       \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::ostringstream fastlstm_check_os_;                                            \
      fastlstm_check_os_ << msg;                                                        \
      ::fastlstm::detail::throw_check(__FILE__, __LINE__, #cond, fastlstm_check_os_.str(), \
                                      true);                                            \
    }                                                                                   \
  } while (0)

// FASTLSTM_ASSERT(cond, msg): internal invariants (RuntimeError in Python: a bug in fastlstm).
#define FASTLSTM_ASSERT(cond, msg)                                                      \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::ostringstream fastlstm_check_os_;                                            \
      fastlstm_check_os_ << msg;                                                        \
      ::fastlstm::detail::throw_check(__FILE__, __LINE__, #cond, fastlstm_check_os_.str(), \
                                      false);                                           \
    }                                                                                   \
  } while (0)
