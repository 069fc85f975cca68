// isa_avx512.cpp: fastlstm's CPU kernels for AVX-512 F/DQ/BW/VL (compiled with -mavx512f -mavx512dq -mavx512bw
// -mavx512vl, and -mprfchw for PREFETCHW).
// The kernels are kernels_impl.h instantiated over this ISA's vectors (simd_avx512.h), all inside
// namespace fastlstm::cpu_avx512 so no symbol is shared with the other ISAs' copies. CMakeLists.txt
// gives this file, and only this file, its instruction-set flags; dispatch.cpp calls table() only
// on CPUs that support them.
#include <cstdint>
#include <immintrin.h>
// (system headers first: the simd header is included inside a namespace below)

#include "../lstm.h"
#include "../threading.h"

namespace fastlstm::cpu_avx512 {
#include "simd_avx512.h"
#include "kernels_impl.h"
}  // namespace fastlstm::cpu_avx512
