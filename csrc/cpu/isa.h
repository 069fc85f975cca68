// isa.h: the per-ISA kernel tables (isa_*.cpp) as seen by dispatch.cpp.
#pragma once
#include "../lstm.h"

namespace fastlstm {
namespace cpu_scalar { const KernelTable& table(); }
#ifdef FASTLSTM_HAVE_AVX2
namespace cpu_avx2 { const KernelTable& table(); }
#endif
#ifdef FASTLSTM_HAVE_AVX512
namespace cpu_avx512 { const KernelTable& table(); }
#endif
}  // namespace fastlstm
