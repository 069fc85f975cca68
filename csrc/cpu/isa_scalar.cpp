// isa_scalar.cpp: fastlstm's CPU kernels for portable C++ (baseline flags of the target: SSE2 on x86-64).
// The kernels are kernels_impl.h instantiated over this ISA's vectors (simd_scalar.h), all inside
// namespace fastlstm::cpu_scalar so no symbol is shared with the other ISAs' copies. CMakeLists.txt
// gives this file, and only this file, its instruction-set flags; dispatch.cpp calls table() only
// on CPUs that support them.
#include <cstdint>
#include <cmath>
#include <cstring>
// (system headers first: the simd header is included inside a namespace below)

#include "../lstm.h"
#include "../threading.h"

namespace fastlstm::cpu_scalar {
#include "simd_scalar.h"
#include "kernels_impl.h"
}  // namespace fastlstm::cpu_scalar
