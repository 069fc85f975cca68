// isa_avx2.cpp: fastlstm's CPU kernels for AVX2 + FMA (compiled with -mavx2 -mfma).
// The kernels are kernels_impl.h instantiated over this ISA's vectors (simd_avx2.h), all inside
// namespace fastlstm::cpu_avx2 so no symbol is shared with the other ISAs' copies. CMakeLists.txt
// gives this file, and only this file, its instruction-set flags; dispatch.cpp calls table() only
// on CPUs that support them.
#include <cstdint>
#include <immintrin.h>
// (system headers first: the simd header is included inside a namespace below)

#include "../lstm.h"
#include "../threading.h"

namespace fastlstm::cpu_avx2 {
#include "simd_avx2.h"
#include "kernels_impl.h"
}  // namespace fastlstm::cpu_avx2
