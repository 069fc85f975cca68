// lstm_cuda.h: the CUDA backend's entry points. No CUDA header is needed to include this file, so the
// bindings compile the same with or without a CUDA toolkit (they include it only when
// FASTLSTM_HAVE_CUDA is defined, which CMake sets when it found a CUDA compiler).
//
// The kernels take the same argument structs as the CPU (lstm.h) with device pointers, run on the
// caller's stream (CuPy's current stream, passed as an integer handle) and never synchronise the host:
// every entry point only enqueues work. Supported on the GPU: everything torch.nn.LSTM has (any T, B,
// H; reverse directions; initial states; training saves; time-major or batch-first strides), per-
// sequence lengths, zoneout and recurrent-dropout masks. Not yet: projections (rejected).
//
// Two recurrent strategies (see choose_strategy in lstm_cuda.cu for the heuristic):
//   persistent: one cooperative kernel runs all T steps; each block keeps all four gates' weights of
//               its hidden units in shared memory; a grid-wide barrier per step; h goes through L2.
//   streaming:  one fused kernel per step (a GEMM tile with the gate epilogue), weights read from L2.
//
// Test: tests/test_cuda.py (marked gpu) runs both strategies against fastlstm.reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../lstm.h"

namespace fastlstm::cuda {

enum class Strategy { Auto = 0, Persistent = 1, Streaming = 2 };
Strategy strategy_from_name(const std::string& name);  // "auto", "persistent", "streaming"
const char* strategy_name(Strategy s);

// What this binary holds and what it sees: never throws (0 devices where there is no driver or GPU).
std::vector<std::string> archs_compiled();  // e.g. {"sm_80", "sm_90", "compute_90"} (compute_: PTX)
int device_count();
std::string device_name(int device);         // "" when unavailable

// The strategy `Auto` resolves to for one layer of this shape on `device`.
template <typename Real>
Strategy choose_strategy(int64_t B, int64_t H, int ndirs, bool backward, int device);

// Enqueue one layer's directions (1 or 2) on `stream` (a cudaStream_t as an integer; 0 is the legacy
// default stream) of `device`, which becomes this thread's current device for fastlstm's runtime. All
// pointers in the structs are device pointers on that device. Backward leaves dbias to the caller
// (a column sum of dG).
template <typename Real>
void lstm_forward(const LstmForwardArgs<Real>* dirs, int ndirs, int device, std::uintptr_t stream, Strategy strategy);
template <typename Real>
void lstm_backward(const LstmBackwardArgs<Real>* dirs, int ndirs, int device, std::uintptr_t stream, Strategy strategy);

}  // namespace fastlstm::cuda
