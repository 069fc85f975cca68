// lstm_cpu.cpp: the C++ entry points of lstm.h: check the arguments, then run the selected ISA.
//
// Arguments reaching here were already validated in Python with user-facing messages; these checks
// keep the kernels safe when called from C++ or when a binding is misused (FASTLSTM_CHECK throws).
#include "../check.h"
#include "../lstm.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>

namespace fastlstm {
namespace {

template <typename T>
const KernelSet<T>& set();
template <>
const KernelSet<float>& set<float>() { return kernels().f32; }
template <>
const KernelSet<double>& set<double>() { return kernels().f64; }

template <typename T>
void check_forward(const LstmForwardArgs<T>& a, const LstmForwardArgs<T>& first) {
  FASTLSTM_CHECK(a.T > 0 && a.B > 0 && a.H > 0, "sizes must be positive: T=" << a.T << " B=" << a.B << " H=" << a.H);
  FASTLSTM_CHECK(a.T == first.T && a.B == first.B && a.H == first.H, "directions of a layer must agree in T, B, H");
  FASTLSTM_CHECK(a.w_hh && a.y && a.h_n && a.c_n, "w_hh, y, h_n, c_n are required");
  FASTLSTM_CHECK((a.gx != nullptr) != (a.x != nullptr), "pass gx, or x with w_ih, not both");
  FASTLSTM_CHECK(!a.x || (a.w_ih && a.I > 0 && a.I == first.I), "x needs w_ih and an input size I > 0");
  FASTLSTM_CHECK((a.gates == nullptr) == (a.cell == nullptr), "gates and cell are saved together or not at all");
}

template <typename T>
void check_backward(const LstmBackwardArgs<T>& a, const LstmBackwardArgs<T>& first) {
  FASTLSTM_CHECK(a.T > 0 && a.B > 0 && a.H > 0, "sizes must be positive: T=" << a.T << " B=" << a.B << " H=" << a.H);
  FASTLSTM_CHECK(a.T == first.T && a.B == first.B && a.H == first.H, "directions of a layer must agree in T, B, H");
  FASTLSTM_CHECK(a.w_hh && a.gates && a.cell && a.dg && a.dh0 && a.dc0,
                 "w_hh, gates, cell, dg, dh0, dc0 are required");
}

}  // namespace

template <typename T>
void lstm_forward(const LstmForwardArgs<T>* dirs, int ndirs, int num_threads) {
  FASTLSTM_CHECK(ndirs == 1 || ndirs == 2, "ndirs must be 1 or 2, got " << ndirs);
  for (int d = 0; d < ndirs; ++d) check_forward(dirs[d], dirs[0]);
  set<T>().lstm_forward(dirs, ndirs, num_threads);
}

template <typename T>
void lstm_backward(const LstmBackwardArgs<T>* dirs, int ndirs, int num_threads) {
  FASTLSTM_CHECK(ndirs == 1 || ndirs == 2, "ndirs must be 1 or 2, got " << ndirs);
  for (int d = 0; d < ndirs; ++d) check_backward(dirs[d], dirs[0]);
  set<T>().lstm_backward(dirs, ndirs, num_threads);
}

template <typename T>
void gemm(const GemmArgs<T>& g, int num_threads) {
  FASTLSTM_CHECK(g.M >= 0 && g.N >= 0 && g.K >= 0, "gemm sizes must be >= 0");
  FASTLSTM_CHECK(g.c && (g.K == 0 || (g.a && g.b)), "gemm operands are required");
  FASTLSTM_CHECK(g.ldc >= g.N, "ldc=" << g.ldc << " < N=" << g.N);
  FASTLSTM_CHECK(g.lda >= (g.trans_a ? g.M : g.K), "lda=" << g.lda << " too small");
  FASTLSTM_CHECK(g.ldb >= (g.trans_b ? g.K : g.N), "ldb=" << g.ldb << " too small");
  FASTLSTM_CHECK(g.N2 >= 0, "gemm N2 must be >= 0");
  if (g.N2 > 0) {
    FASTLSTM_CHECK(g.c2 && (g.K == 0 || g.b2), "gemm: the second product's operands are required");
    FASTLSTM_CHECK(!g.trans_b && !g.bias, "gemm: a second product needs trans_b=False and no bias");
    FASTLSTM_CHECK(g.ldc2 >= g.N2 && g.ldb2 >= g.N2, "ldc2=" << g.ldc2 << " or ldb2=" << g.ldb2 << " < N2=" << g.N2);
    FASTLSTM_CHECK(g.b2_lo <= g.b2_hi, "gemm: b2's rows [" << g.b2_lo << ", " << g.b2_hi << ") are not a range");
  }
  FASTLSTM_CHECK(!g.a_sums || g.trans_a, "gemm: a_sums needs trans_a");
  set<T>().gemm(g, num_threads);
}

namespace {
// The last-level cache of CPU 0 in bytes, from Linux's sysfs (glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) reads
// cpuid and reported 320 MiB for the 32 MiB L3 of a virtual machine); 8 MiB where nothing says.
double last_level_cache_bytes() {
  double best = 0;
  for (int index = 0; index < 8; ++index) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string text;
    if (!(f >> text)) break;
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (end && *end == 'K') v *= 1024;
    else if (end && *end == 'M') v *= 1024 * 1024;
    best = std::max(best, v);  // the largest is the last level
  }
  return best > 0 ? best : double(8 << 20);
}
}  // namespace

bool fuse_input_projection(int64_t I, int64_t H, int64_t KP, int D, int64_t elem) {
  static const double llc = last_level_cache_bytes();
  return double(D) * 4 * H * (I + KP) * elem <= llc / 2;
}

template void lstm_forward<float>(const LstmForwardArgs<float>*, int, int);
template void lstm_forward<double>(const LstmForwardArgs<double>*, int, int);
template void lstm_backward<float>(const LstmBackwardArgs<float>*, int, int);
template void lstm_backward<double>(const LstmBackwardArgs<double>*, int, int);
template void gemm<float>(const GemmArgs<float>&, int);
template void gemm<double>(const GemmArgs<double>&, int);

namespace detail {
void throw_check(const char* file, int line, const char* cond, const std::string& msg, bool invalid_argument) {
  std::string text = std::string(file) + ":" + std::to_string(line) + ": check failed (" + cond + "): " + msg;
  if (invalid_argument) throw std::invalid_argument(text);
  throw std::runtime_error(text);
}
}  // namespace detail

}  // namespace fastlstm
