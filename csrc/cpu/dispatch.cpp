// dispatch.cpp: picks the CPU kernel table once, from what was compiled in and what this CPU runs.
//
// The best supported ISA is selected at first use; FASTLSTM_ISA=scalar|avx2|avx512 (read by the
// Python package at import) or fastlstm.set_isa() force another, which is how the tests run every
// path this machine can. A binary built with AVX-512 kernels runs on a CPU without them: the AVX-512
// table is never touched unless the CPU (and OS) report support.
#include <atomic>
#include <stdexcept>

#include "isa.h"

namespace fastlstm {
namespace {

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__) || defined(__i386__)
    // __builtin_cpu_supports consults CPUID and the OS-enabled register state (XGETBV)
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    default: return false;
  }
}

const KernelTable* table_of(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return &cpu_scalar::table();
#ifdef FASTLSTM_HAVE_AVX2
    case Isa::Avx2: return &cpu_avx2::table();
#endif
#ifdef FASTLSTM_HAVE_AVX512
    case Isa::Avx512: return &cpu_avx512::table();
#endif
    default: return nullptr;
  }
}

Isa best_isa() {
  auto sup = isa_supported();
  return sup.back();
}

std::atomic<int> g_selected{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

Isa isa_from_name(const std::string& name) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (name == isa_name(isa)) return isa;
  throw std::invalid_argument("isa: expected one of 'scalar', 'avx2', 'avx512', got '" + name + "'");
}

std::vector<Isa> isa_compiled() {
  std::vector<Isa> out{Isa::Scalar};
#ifdef FASTLSTM_HAVE_AVX2
  out.push_back(Isa::Avx2);
#endif
#ifdef FASTLSTM_HAVE_AVX512
  out.push_back(Isa::Avx512);
#endif
  return out;
}

std::vector<Isa> isa_supported() {
  std::vector<Isa> out;
  for (Isa isa : isa_compiled())
    if (cpu_has(isa)) out.push_back(isa);
  return out;
}

Isa isa_selected() {
  int s = g_selected.load();
  if (s < 0) {
    s = static_cast<int>(best_isa());
    g_selected.store(s);
  }
  return static_cast<Isa>(s);
}

void isa_select(Isa isa) {
  for (Isa s : isa_supported())
    if (s == isa) {
      g_selected.store(static_cast<int>(isa));
      return;
    }
  throw std::invalid_argument(std::string("isa: '") + isa_name(isa) +
                              "' is not available here (compiled: see build_info()['isa_compiled'];"
                              " this CPU must also support it)");
}

const KernelTable& kernels() { return *table_of(isa_selected()); }

}  // namespace fastlstm
