// lstm_cuda.cu: fastlstm's CUDA kernels (the fused recurrent loop, forward and backward) and their host
// launchers. The big GEMMs over all time steps (input projection, weight gradients, dx) are not here:
// the layer runs them through CuPy's matmul (cuBLAS).
//
// Notation as lstm.h: one direction of one layer, gates i, f, g, o, weights in PyTorch's layout
// (w_hh [4H, H] row-major). Step s = 0..T-1 is the s-th step in processing order; it is time step
// t = s, or t = T-1-s for a reverse direction.
//
// Forward, each step:  z = gx[t] + bias + h[t-1] W_hh^T   (the step GEMM, 4H columns)
//                      c[t] = f c[t-1] + i gg,  h[t] = o tanh(c[t])  (the epilogue, in registers)
//                      (training also saves the activated gates and c for backward)
// Backward, each step (in reverse processing order), as the CPU kernels (kernels_impl.h):
//                      dh  = dy[t] + dG[t+1] W_hh      (the step GEMM, K = 4H; dh_n at the first)
//                      dc  = dc' + dh o (1 - tanh^2 c),  dG = [dc gg i(1-i), dc c[t-1] f(1-f),
//                                                            dc i (1-gg^2), dh tanh(c) o(1-o)]
//                      and after the last step dh0 = dG[first] W_hh, dc0 = f[first] dc[first].
//
// Two strategies run this loop (choose_strategy picks one per call):
//
// persistent (small batches): one cooperative kernel runs every step. Block k owns hidden units
//   [k*U, (k+1)*U): forward keeps their 4U rows of W_hh (all four gates) in shared memory, backward
//   the U columns of W_hh (as U rows of length 4H), for all T steps. Per step a block reads the
//   previous step's h (forward) or dG (backward) of all sequences from global memory (it was written
//   by every block; L2-resident) into shared memory, BT sequences at a time, and each warp computes a
//   4 x BT block of dot products: lanes split the K dimension, then a transposing butterfly (31
//   shuffles for 32 sums) leaves one finished sum per lane group, and the lanes holding a unit's
//   values run the epilogue. One grid-wide barrier separates steps; no host round trip.
//
// streaming (large batches, or weights too big for shared memory): one fused kernel per step, a
//   double-buffered shared-memory GEMM (tile_gemm) whose thread tile holds all four gates of its units
//   (the forward's weight tile puts a unit's four gates side by side), followed by the same epilogue.
//   The T launches are enqueued back to back on the caller's stream without host synchronisation, so
//   launch overhead overlaps the previous step's execution.
//
// Options, in the epilogues and tile loads: lengths (a sequence's first step reads h0 / c0, y and dG
// are 0 where it does not exist), zoneout (c and h keep their previous values with weights zc, zh; the
// backward's direct path zh dh to h[t-1] has its own carry) and recurrent dropout (rec_mask multiplies
// h[t-1] where it enters the step GEMM, and dG W_hh on the way back).
//
// Every CUDA call is checked (FASTLSTM_CUDA_CHECK throws with the failing expression); kernels read
// their geometry from arguments the host computed and never pick their own grid.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../check.h"
#include "lstm_cuda.h"

namespace cg = cooperative_groups;

namespace fastlstm::cuda {
namespace {

[[noreturn]] void throw_cuda(cudaError_t err, const char* expr, const char* file, int line) {
  std::ostringstream os;
  os << "CUDA error " << cudaGetErrorName(err) << " (" << cudaGetErrorString(err) << ") in " << expr << " at "
     << file << ":" << line;
  throw std::runtime_error(os.str());
}

#define FASTLSTM_CUDA_CHECK(expr)                                               \
  do {                                                                          \
    const cudaError_t fastlstm_err_ = (expr);                                   \
    if (fastlstm_err_ != cudaSuccess) throw_cuda(fastlstm_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// ---- device helpers ------------------------------------------------------------------------------------
template <typename Real> struct Vec;  // the 16-byte vector of Real, for shared-memory loads
template <> struct Vec<float> { using type = float4; static constexpr int n = 4; };
template <> struct Vec<double> { using type = double2; static constexpr int n = 2; };

__device__ __forceinline__ float sigmoid_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double sigmoid_(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// A load that bypasses L1: data another block wrote before the last grid barrier (L1 is not coherent
// across multiprocessors).
template <typename Real>
__device__ __forceinline__ Real load_l2(const Real* p) { return __ldcg(p); }

// Fills xs [rows][kp] (shared) with `rows` rows of `len` values from global memory, zero past len
// and for rows whose pointer is nullptr; row_of(r) gives row r's pointer, mask_of(r) a row to multiply
// by elementwise (or nullptr). The block's threads share the work a 16-byte vector each (read past L1,
// see load_l2) where the row is aligned for it.
template <typename Real, typename RowOf, typename MaskOf>
__device__ __forceinline__ void load_tile(Real* xs, int64_t kp, int rows, int64_t len, RowOf row_of, MaskOf mask_of) {
  using V = typename Vec<Real>::type;
  constexpr int VW = Vec<Real>::n;
  const int64_t nv = kp / VW;
  for (int64_t e = threadIdx.x; e < rows * nv; e += blockDim.x) {
    const int r = static_cast<int>(e / nv);
    const int64_t k = (e % nv) * VW;
    const Real* p = row_of(r);
    V v;
    Real* vr = reinterpret_cast<Real*>(&v);
    if (p && k + VW <= len && (reinterpret_cast<std::uintptr_t>(p + k) & 15) == 0) {
      v = __ldcg(reinterpret_cast<const V*>(p + k));
    } else {
#pragma unroll
      for (int i = 0; i < VW; ++i) vr[i] = (p && k + i < len) ? load_l2(p + k + i) : Real(0);
    }
    if (const Real* m = p ? mask_of(r) : nullptr) {
#pragma unroll
      for (int i = 0; i < VW; ++i) vr[i] *= k + i < len ? __ldg(m + k + i) : Real(0);
    }
    reinterpret_cast<V*>(xs + r * kp)[e % nv] = v;
  }
}

__host__ __device__ constexpr int log2_of(int n) { return n <= 1 ? 0 : 1 + log2_of(n / 2); }

// One stage of the transposing butterfly: lanes whose bit `O` is set keep the upper half of the
// values and send the lower half to their partner, which does the opposite, so after the stage each
// lane holds half as many values, each summed over two lanes.
template <int Half, int O, int N, typename Real>
__device__ __forceinline__ void transpose_stage(Real (&v)[N], int lane) {
  if constexpr (Half >= 1) {
    const bool upper = (lane & O) != 0;
#pragma unroll
    for (int i = 0; i < Half; ++i) {
      const Real send = upper ? v[i] : v[i + Half];
      const Real keep = upper ? v[i + Half] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    transpose_stage<Half / 2, O / 2>(v, lane);
  }
}

// Sums each of the N values (N a power of two <= 32) over the warp's 32 lanes with N - 1 + 5 - log2 N
// shuffles: afterwards every lane returns the total of value (lane >> (5 - log2 N)).
template <int N, typename Real>
__device__ __forceinline__ Real warp_transpose_sum(Real (&v)[N], int lane) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N must be a power of two <= 32");
  transpose_stage<N / 2, 16>(v, lane);
  Real s = v[0];
#pragma unroll
  for (int o = 16 / N; o >= 1; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// acc[r * BT + b] += sum over k of A[r][k] X[b][k], lanes splitting k in 16-byte vectors; A: R rows,
// X: BT rows, both in shared memory with row stride kp (a multiple of the vector width).
template <typename Real, int R, int BT>
__device__ __forceinline__ void warp_dot(const Real* A, const Real* X, int64_t kp, int lane, Real (&acc)[R * BT]) {
  using V = typename Vec<Real>::type;
  constexpr int VW = Vec<Real>::n;
  const int64_t nv = kp / VW;
  for (int64_t kv = lane; kv < nv; kv += 32) {
    V w[R], x[BT];
#pragma unroll
    for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const V*>(A + r * kp)[kv];
#pragma unroll
    for (int b = 0; b < BT; ++b) x[b] = reinterpret_cast<const V*>(X + b * kp)[kv];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const Real* wr = reinterpret_cast<const Real*>(&w[r]);
#pragma unroll
      for (int b = 0; b < BT; ++b) {
        const Real* xb = reinterpret_cast<const Real*>(&x[b]);
#pragma unroll
        for (int e = 0; e < VW; ++e) acc[r * BT + b] = fma(wr[e], xb[e], acc[r * BT + b]);
      }
    }
  }
}

// ---- variable lengths (lstm.h: sequence b exists at t < lengths[b]; lengths non-increasing) -------------
// A sequence's first step in processing order starts from h0 / c0: time 0 of a forward direction, time
// lengths[b]-1 of a reverse one (whose later times do not exist). Where it does not exist, y is 0 and
// backward's dG is 0; the state carries (the forward reads h[t-1] from y only while the sequence exists).
template <typename Args>
__device__ __forceinline__ int64_t length_of(const Args& a, int64_t b) { return a.lengths ? a.lengths[b] : a.T; }

template <typename Args>
__device__ __forceinline__ bool first_step(const Args& a, int64_t t, int64_t b) {
  return t == (a.reverse ? length_of(a, b) - 1 : 0);
}

// ... and its last step, where h_n and c_n come from (and dh_n, dc_n enter the backward).
template <typename Args>
__device__ __forceinline__ bool last_step(const Args& a, int64_t t, int64_t b) {
  return t == (a.reverse ? 0 : length_of(a, b) - 1);
}

// Row b of h[t-1] for the forward step at time t: h0's row (nullptr: zeros) on the sequence's first
// step, else y at the previous step; nullptr where the sequence has no step t (nothing is read: a
// reverse direction's t+1 may be T, past the end of y).
template <typename Real>
__device__ __forceinline__ const Real* previous_h(const LstmForwardArgs<Real>& a, int64_t t, int64_t b) {
  if (t >= length_of(a, b)) return nullptr;
  if (first_step(a, t, b)) return a.h0 ? a.h0 + b * a.H : nullptr;
  return a.y + (a.reverse ? t + 1 : t - 1) * a.y_st + b * a.y_sb;
}

// ---- the epilogues (shared by both strategies) ----------------------------------------------------------
// z's input part for unit j of sequence b at time t: gx[t][b] + bias, gates i, f, g, o. Loaded before
// the step's GEMM where possible, so its latency hides behind the dot products.
template <typename Real>
__device__ __forceinline__ void input_part(const LstmForwardArgs<Real>& a, int64_t t, int64_t b, int64_t j,
                                           Real (&in)[4]) {
  const int64_t H = a.H;
  const Real* gxr = a.gx + t * a.gx_st + b * a.gx_sb;
#pragma unroll
  for (int g = 0; g < 4; ++g) in[g] = __ldg(gxr + g * H + j) + (a.bias ? __ldg(a.bias + g * H + j) : Real(0));
}

// Forward cell update of unit j of sequence b at time t, given z's input part and GEMM part.
template <typename Real>
__device__ __forceinline__ void forward_cell(const LstmForwardArgs<Real>& a, int64_t t, int64_t b, int64_t j,
                                             const Real (&in)[4], const Real (&rec)[4]) {
  const int64_t H = a.H, len = length_of(a, b);
  if (t >= len) {  // the sequence has ended (forward) or not begun (reverse): y = 0, the state carries
    a.y[t * a.y_st + b * a.y_sb + j] = Real(0);
    return;
  }
  Real z[4];
#pragma unroll
  for (int g = 0; g < 4; ++g) z[g] = in[g] + rec[g];
  const Real i = sigmoid_(z[0]), f = sigmoid_(z[1]), gg = tanh_(z[2]), o = sigmoid_(z[3]);
  const Real c_prev = first_step(a, t, b) ? (a.c0 ? a.c0[b * H + j] : Real(0)) : a.c_n[b * H + j];
  Real c = f * c_prev + i * gg;
  Real h = o * tanh_(c);
  if (a.zoneout_h || a.zoneout_c || a.zoneout_h_p > Real(0) || a.zoneout_c_p > Real(0)) {
    // zoneout keeps c[t-1] and h[t-1] with weights zc, zh: the training masks, or in eval their probabilities
    const int64_t at = (t * a.B + b) * H + j;
    const Real zc = a.zoneout_c ? a.zoneout_c[at] : a.zoneout_c_p, zh = a.zoneout_h ? a.zoneout_h[at] : a.zoneout_h_p;
    const Real* h_row = previous_h(a, t, b);
    const Real h_prev = h_row ? load_l2(h_row + j) : Real(0);
    c = zc * c_prev + (Real(1) - zc) * c;
    h = zh * h_prev + (Real(1) - zh) * h;
  }
  a.y[t * a.y_st + b * a.y_sb + j] = h;
  a.c_n[b * H + j] = c;  // the running cell state: only this thread reads and writes entry (b, j)
  if (a.gates) {
    Real* gr = a.gates + (t * a.B + b) * 4 * H;
    gr[j] = i;
    gr[H + j] = f;
    gr[2 * H + j] = gg;
    gr[3 * H + j] = o;
    a.cell[(t * a.B + b) * H + j] = c;
  }
  if (last_step(a, t, b)) a.h_n[b * H + j] = h;
}

// Backward of unit j of sequence b at backward step s (time t), given dG[t+1] W_hh's entry `rec`;
// dc_carry [B, H] holds dL/dc[t] flowing from later steps (only this thread touches entry (b, j)).
// dh0 = rec and dc0 are stored once the sequence's first step has been differentiated: at s == T, or,
// for a reverse direction's shorter sequence, at the (absent) step t = length right after it.
// With zoneout, dh_carry [B, H] holds the part of dL/dh[t] that reaches h[t-1] directly (zh dh).
template <typename Real>
__device__ __forceinline__ void backward_cell(const LstmBackwardArgs<Real>& a, Real* dc_carry, Real* dh_carry,
                                             int64_t s, int64_t t, int64_t b, int64_t j, Real rec) {
  const int64_t H = a.H, T = a.T, len = length_of(a, b);
  if (a.rec_mask) rec *= a.rec_mask[b * H + j];  // h[t-1] entered the recurrence times the mask
  if (dh_carry) rec += dh_carry[b * H + j];  // (zeroed by the host before the first step)
  if (s == T ? !a.reverse || len == T : a.reverse && t == len) {  // the step before was the sequence's first
    a.dh0[b * H + j] = rec;
    a.dc0[b * H + j] = dc_carry[b * H + j];
  }
  if (s == T) return;
  if (t >= len) {  // no such step: dG = 0 (the weight-gradient GEMMs read it)
    Real* dg = a.dg + t * a.dg_st + b * a.dg_sb;
#pragma unroll
    for (int g = 0; g < 4; ++g) dg[g * H + j] = Real(0);
    return;
  }
  Real dh = rec + (a.dy ? a.dy[t * a.dy_st + b * a.dy_sb + j] : Real(0));
  Real dc_in;
  if (last_step(a, t, b)) {  // h_n and c_n came from here
    dh += a.dh_n ? a.dh_n[b * H + j] : Real(0);
    dc_in = a.dc_n ? a.dc_n[b * H + j] : Real(0);
  } else {
    dc_in = dc_carry[b * H + j];
  }
  const Real* gr = a.gates + (t * a.B + b) * 4 * H;
  const Real i = gr[j], f = gr[H + j], gg = gr[2 * H + j], o = gr[3 * H + j];
  const int64_t tp = a.reverse ? t + 1 : t - 1;
  const Real c_prev = first_step(a, t, b) ? (a.c0 ? a.c0[b * H + j] : Real(0)) : a.cell[(tp * a.B + b) * H + j];
  Real c = a.cell[(t * a.B + b) * H + j], dc_state = dc_in, zc = Real(0);
  if (a.zoneout_h || a.zoneout_c) {
    // the cell saved the state after zoneout; the gates act on c~ = f c[t-1] + i g, h~ = o tanh(c~)
    const int64_t at = (t * a.B + b) * H + j;
    zc = a.zoneout_c ? a.zoneout_c[at] : Real(0);
    const Real zh = a.zoneout_h ? a.zoneout_h[at] : Real(0);
    c = f * c_prev + i * gg;
    dc_state = (Real(1) - zc) * dc_in;
    dh_carry[b * H + j] = zh * dh;
    dh = (Real(1) - zh) * dh;
  }
  const Real tc = tanh_(c);
  const Real dc = fma(dh * o, Real(1) - tc * tc, dc_state);
  Real* dg = a.dg + t * a.dg_st + b * a.dg_sb;
  dg[j] = dc * gg * (i * (Real(1) - i));
  dg[H + j] = dc * c_prev * (f * (Real(1) - f));
  dg[2 * H + j] = dc * i * (Real(1) - gg * gg);
  dg[3 * H + j] = dh * tc * (o * (Real(1) - o));
  dc_carry[b * H + j] = zc * dc_in + dc * f;
}

// Steps of a direction: step s of the forward is time forward_time(a, s); backward step s (s = 0..T-1)
// differentiates time backward_time(a, s), the forward's step T-1-s.
template <typename Args>
__device__ __forceinline__ int64_t forward_time(const Args& a, int64_t s) { return a.reverse ? a.T - 1 - s : s; }
template <typename Args>
__device__ __forceinline__ int64_t backward_time(const Args& a, int64_t s) { return a.reverse ? s : a.T - 1 - s; }

template <typename Args>
struct Dirs {
  Args d[2];
};

// ---- persistent kernels ----------------------------------------------------------------------------------
constexpr int kMaxPersistentThreads = 512;

// Forward. Grid (blocks per direction, directions); block k of a direction owns units [k*U, k*U + U).
// Shared memory: ws [4U][kp] (row 4u+g: gate g of unit u), xs [BT][kp] (h[t-1] of BT sequences).
template <typename Real, int BT>
__global__ void __launch_bounds__(kMaxPersistentThreads)
forward_persistent(const Dirs<LstmForwardArgs<Real>> p, int U, int64_t kp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Real* ws = reinterpret_cast<Real*>(smem_raw);
  Real* xs = ws + 4 * U * kp;
  const LstmForwardArgs<Real>& a = p.d[blockIdx.y];
  const int64_t H = a.H, B = a.B, T = a.T;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * U;
  const int nu = static_cast<int>(min(static_cast<int64_t>(U), H - u0));  // >= 1: the host sizes the grid
  for (int64_t e = threadIdx.x; e < 4 * U * kp; e += blockDim.x) {
    const int64_t r = e / kp, k = e % kp, u = r / 4, g = r % 4;
    ws[e] = (u < nu && k < H) ? a.w_hh[(g * H + u0 + u) * H + k] : Real(0);
  }
  cg::grid_group grid = cg::this_grid();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  constexpr int N = 4 * BT, shift = 5 - log2_of(N);
  const int vidx = lane >> shift, vb = vidx % BT;  // after the sum: this lane's value is gate vidx / BT of sequence vb
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = forward_time(a, s);
    for (int64_t b0 = 0; b0 < B; b0 += BT) {
      __syncthreads();  // the last tile's readers are done with xs (and ws is complete on the first pass)
      load_tile(xs, kp, BT, H, [&](int r) { return b0 + r < B ? previous_h(a, t, b0 + r) : nullptr; },
                [&](int r) { return a.rec_mask ? a.rec_mask + (b0 + r) * H : nullptr; });
      __syncthreads();
      for (int u = warp; u < nu; u += nwarps) {
        // the lanes that will run the epilogue: the first of each group holding gate i of a sequence
        const bool owner = vidx < BT && (lane & ((1 << shift) - 1)) == 0 && b0 + vb < B;
        Real in[4] = {};
        if (owner) input_part(a, t, b0 + vb, u0 + u, in);
        Real acc[N] = {};
        warp_dot<Real, 4, BT>(ws + 4 * u * kp, xs, kp, lane, acc);
        const Real sum = warp_transpose_sum(acc, lane);
        Real rec[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) rec[g] = __shfl_sync(0xffffffffu, sum, (g * BT + vb) << shift);
        if (owner) forward_cell(a, t, b0 + vb, u0 + u, in, rec);
      }
    }
    if (s + 1 < T) grid.sync();  // every block's h[t] is in global memory before anyone reads it
  }
}

// Backward. Block k owns units [k*U, k*U + U) (U a multiple of 4); each warp item is 4 units x BT
// sequences. Shared memory: ws [U][kp] (row u: column u0+u of W_hh, length 4H), xs [BT][kp] (dG of
// the step differentiated before, BT sequences). Iteration s == T stores dh0 and dc0.
template <typename Real, int BT>
__global__ void __launch_bounds__(kMaxPersistentThreads)
backward_persistent(const Dirs<LstmBackwardArgs<Real>> p, Real* dc_carry, Real* dh_carry_all, int U, int64_t kp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Real* ws = reinterpret_cast<Real*>(smem_raw);
  Real* xs = ws + U * kp;
  const LstmBackwardArgs<Real>& a = p.d[blockIdx.y];
  const int64_t H = a.H, B = a.B, T = a.T, G = 4 * H;
  Real* carry = dc_carry + blockIdx.y * B * H;
  Real* dh_carry = dh_carry_all ? dh_carry_all + blockIdx.y * B * H : nullptr;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * U;
  const int nu = static_cast<int>(min(static_cast<int64_t>(U), H - u0));
  for (int64_t e = threadIdx.x; e < U * kp; e += blockDim.x) {
    const int64_t u = e / kp, r = e % kp;
    ws[e] = (u < nu && r < G) ? a.w_hh[r * H + u0 + u] : Real(0);
  }
  cg::grid_group grid = cg::this_grid();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  constexpr int N = 4 * BT, shift = 5 - log2_of(N);
  const int vidx = lane >> shift, vu = vidx / BT, vb = vidx % BT;
  const int groups = (nu + 3) / 4;
  for (int64_t s = 0; s <= T; ++s) {
    const int64_t t = s < T ? backward_time(a, s) : -1;
    const Real* src = s == 0 ? nullptr : a.dg + backward_time(a, s - 1) * a.dg_st;  // dG of the step after t
    for (int64_t b0 = 0; b0 < B; b0 += BT) {
      __syncthreads();
      if (src)
        load_tile(xs, kp, BT, G, [&](int r) { return b0 + r < B ? src + (b0 + r) * a.dg_sb : nullptr; },
                  [](int) -> const Real* { return nullptr; });
      __syncthreads();
      for (int grp = warp; grp < groups; grp += nwarps) {
        Real sum = Real(0);
        if (src) {
          Real acc[N] = {};
          warp_dot<Real, 4, BT>(ws + 4 * grp * kp, xs, kp, lane, acc);
          sum = warp_transpose_sum(acc, lane);
        }
        const int u = 4 * grp + vu;
        if ((lane & ((1 << shift) - 1)) == 0 && u < nu && b0 + vb < B)
          backward_cell(a, carry, dh_carry, s, t, b0 + vb, u0 + u, sum);
      }
    }
    if (s < T) grid.sync();  // every block's dG[t] is in global memory before anyone reads it
  }
}

// ---- streaming kernels -----------------------------------------------------------------------------------
constexpr int kStreamMaxThreads = 256;  // a tile's threads: (BU / TU) x (BM / TM), at most this

// The four gates' weights of a unit for one k, adjacent in a shared-memory row: one 16-byte load for
// float, two for double.
template <typename Real>
__device__ __forceinline__ void load_gates(const Real* p, Real (&w)[4]) {
  using V = typename Vec<Real>::type;
  constexpr int VW = Vec<Real>::n;
#pragma unroll
  for (int v = 0; v < 4 / VW; ++v) {
    const V x = reinterpret_cast<const V*>(p)[v];
    const Real* xr = reinterpret_cast<const Real*>(&x);
#pragma unroll
    for (int e = 0; e < VW; ++e) w[v * VW + e] = xr[e];
  }
}

// The streaming kernels' GEMM: acc[m][q][c] += sum over k < K of A(row, k) B(k, col) for this thread's
// rows ty*TM + m of the block's BM and columns (tx + q*NX)*CW + c of its BN*CW (CW adjacent columns: a
// unit's four gates in the forward, one unit in the backward). A and B pass through shared memory BK
// values of K at a time, double-buffered: the next tile is fetched into registers while the current one
// is multiplied, so one barrier per tile suffices. load_a(row, k) and load_b(k, col) return 0 out of
// range; B_K_MAJOR says that consecutive B values in global memory run along k (the forward's
// w_hh[g*H + u][k]) rather than along columns (the backward's w_hh[k][j]), so loads coalesce either way.
template <typename Real> struct StreamK { static constexpr int value = 16; };
template <> struct StreamK<double> { static constexpr int value = 8; };  // (keeps the tiles under 48 KB)

template <typename Real, int BM, int BN, int TM, int TN, int CW, bool B_K_MAJOR, typename LoadA, typename LoadB>
__device__ __forceinline__ void tile_gemm(int64_t K, const LoadA& load_a, const LoadB& load_b,
                                          Real (&acc)[TM][TN][CW]) {
  constexpr int BK = StreamK<Real>::value, NX = BN / TN, NY = BM / TM, NT = NX * NY;
  constexpr int PAD = 16 / sizeof(Real), AROW = BM + PAD, BROW = BN * CW + PAD;  // rows stay 16-byte aligned
  constexpr int AL = (BM * BK + NT - 1) / NT, BL = (BK * BN * CW + NT - 1) / NT;
  __shared__ __align__(16) Real as[2][BK][AROW];
  __shared__ __align__(16) Real bs[2][BK][BROW];
  const int tid = threadIdx.x, tx = tid % NX, ty = tid / NX;
  Real ra[AL], rb[BL];
  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < AL; ++i) {
      const int e = tid + i * NT;
      ra[i] = e < BM * BK ? load_a(e / BK, k0 + e % BK) : Real(0);
    }
#pragma unroll
    for (int i = 0; i < BL; ++i) {
      const int e = tid + i * NT;
      const int kk = B_K_MAJOR ? e % BK : e / (BN * CW), c = B_K_MAJOR ? e / BK : e % (BN * CW);
      rb[i] = e < BK * BN * CW ? load_b(k0 + kk, c) : Real(0);
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int i = 0; i < AL; ++i) {
      const int e = tid + i * NT;
      if (e < BM * BK) as[buf][e % BK][e / BK] = ra[i];
    }
#pragma unroll
    for (int i = 0; i < BL; ++i) {
      const int e = tid + i * NT;
      const int kk = B_K_MAJOR ? e % BK : e / (BN * CW), c = B_K_MAJOR ? e / BK : e % (BN * CW);
      if (e < BK * BN * CW) bs[buf][kk][c] = rb[i];
    }
  };
  fetch(0);
  store(0);
  __syncthreads();
  int cur = 0;
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    const bool more = k0 + BK < K;
    if (more) fetch(k0 + BK);  // global loads in flight during the products below
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      Real x[TM], w[TN][CW];
      if constexpr ((TM * sizeof(Real)) % 16 == 0) {
        using V = typename Vec<Real>::type;
#pragma unroll
        for (int v = 0; v < TM / Vec<Real>::n; ++v) {
          const V xv = reinterpret_cast<const V*>(&as[cur][kk][ty * TM])[v];
          const Real* xr = reinterpret_cast<const Real*>(&xv);
#pragma unroll
          for (int e = 0; e < Vec<Real>::n; ++e) x[v * Vec<Real>::n + e] = xr[e];
        }
      } else {
#pragma unroll
        for (int m = 0; m < TM; ++m) x[m] = as[cur][kk][ty * TM + m];
      }
#pragma unroll
      for (int q = 0; q < TN; ++q) {
        if constexpr (CW == 4) {
          load_gates(&bs[cur][kk][4 * (tx + q * NX)], w[q]);
        } else {
#pragma unroll
          for (int c = 0; c < CW; ++c) w[q][c] = bs[cur][kk][(tx + q * NX) * CW + c];
        }
      }
#pragma unroll
      for (int m = 0; m < TM; ++m)
#pragma unroll
        for (int q = 0; q < TN; ++q)
#pragma unroll
          for (int c = 0; c < CW; ++c) acc[m][q][c] = fma(x[m], w[q][c], acc[m][q][c]);
    }
    if (more) store(cur ^ 1);  // the other buffer: last read before the previous barrier
    __syncthreads();
    cur ^= 1;
  }
}

// f(m, q, b, j) for each (sequence b, unit j) of the tile this thread owns after tile_gemm: sequences
// b0 + ty*TM + m, units j0 + tx + q*NX (tile_gemm's mapping), those inside [0, B) x [0, H) only.
template <int BM, int BU, int TM, int TU, typename F>
__device__ __forceinline__ void for_each_owned(int64_t b0, int64_t j0, int64_t B, int64_t H, F&& f) {
  constexpr int NX = BU / TU;
  const int tx = threadIdx.x % NX, ty = threadIdx.x / NX;
#pragma unroll
  for (int m = 0; m < TM; ++m)
#pragma unroll
    for (int q = 0; q < TU; ++q) {
      const int64_t b = b0 + ty * TM + m, j = j0 + tx + q * NX;
      if (b < B && j < H) f(m, q, b, j);
    }
}

// Forward step s. Grid (unit tiles of BU, sequence tiles of BM, directions); thread (tx, ty) owns
// units tx + q*NX (q < TU) and sequences ty*TM + m (m < TM), all four gates of each unit: B's column
// 4u + g is w_hh[g*H + j0 + u], read in place.
template <typename Real, int BM, int BU, int TM, int TU>
__global__ void __launch_bounds__(kStreamMaxThreads)
forward_step(const Dirs<LstmForwardArgs<Real>> p, int64_t s) {
  constexpr int NX = BU / TU, NY = BM / TM;
  static_assert(NX * NY <= kStreamMaxThreads && (NX * NY) % 32 == 0, "a tile takes whole warps");
  const LstmForwardArgs<Real>& a = p.d[blockIdx.z];
  const int64_t H = a.H, B = a.B;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * BU, b0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t t = forward_time(a, s);
  Real acc[TM][TU][4] = {};
  if (s > 0 || a.h0) {  // (else h[t-1] is all zeros: at s = 0 every row is absent or starts from h0)
    auto load_h = [&](int r, int64_t k) -> Real {  // h[t-1] times the recurrent-dropout mask, if any
      const Real* hrow = (b0 + r < B && k < H) ? previous_h(a, t, b0 + r) : nullptr;
      if (!hrow) return Real(0);
      return a.rec_mask ? hrow[k] * a.rec_mask[(b0 + r) * H + k] : hrow[k];
    };
    auto load_w = [&](int64_t k, int c) -> Real {
      const int64_t u = j0 + c / 4, g = c % 4;
      return (k < H && u < H) ? a.w_hh[(g * H + u) * H + k] : Real(0);
    };
    tile_gemm<Real, BM, BU, TM, TU, 4, true>(H, load_h, load_w, acc);
  }
  for_each_owned<BM, BU, TM, TU>(b0, j0, B, H, [&](int m, int q, int64_t b, int64_t j) {
    Real in[4];
    input_part(a, t, b, j, in);
    forward_cell(a, t, b, j, in, acc[m][q]);
  });
}

// Backward step s (s == T: dh0 and dc0). Grid (unit tiles of BU, sequence tiles of BM, directions);
// dh[b][j] over K = 4H from the dG of the step differentiated before and W_hh read in place.
template <typename Real, int BM, int BU, int TM, int TU>
__global__ void __launch_bounds__(kStreamMaxThreads)
backward_step(const Dirs<LstmBackwardArgs<Real>> p, Real* dc_carry, Real* dh_carry_all, int64_t s) {
  constexpr int NX = BU / TU, NY = BM / TM;
  static_assert(NX * NY <= kStreamMaxThreads && (NX * NY) % 32 == 0, "a tile takes whole warps");
  const LstmBackwardArgs<Real>& a = p.d[blockIdx.z];
  const int64_t H = a.H, B = a.B, T = a.T, G = 4 * H;
  Real* carry = dc_carry + blockIdx.z * B * H;
  Real* dh_carry = dh_carry_all ? dh_carry_all + blockIdx.z * B * H : nullptr;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * BU, b0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t t = s < T ? backward_time(a, s) : -1;
  const Real* src = s == 0 ? nullptr : a.dg + backward_time(a, s - 1) * a.dg_st;
  Real acc[TM][TU][1] = {};
  if (src) {
    auto load_dg = [&](int r, int64_t k) -> Real {
      return (b0 + r < B && k < G) ? src[(b0 + r) * a.dg_sb + k] : Real(0);
    };
    auto load_w = [&](int64_t k, int c) -> Real { return (k < G && j0 + c < H) ? a.w_hh[k * H + j0 + c] : Real(0); };
    tile_gemm<Real, BM, BU, TM, TU, 1, false>(G, load_dg, load_w, acc);
  }
  for_each_owned<BM, BU, TM, TU>(b0, j0, B, H, [&](int m, int q, int64_t b, int64_t j) {
    backward_cell(a, carry, dh_carry, s, t, b, j, acc[m][q][0]);
  });
}

// ---- host side -------------------------------------------------------------------------------------------
struct Device {
  int id = 0, sms = 0, smem_optin = 0, cooperative = 0;
};

// Makes `id` this thread's current device for the guard's lifetime and then restores the previous one,
// so a call never changes the device the caller (CuPy) works on.
class DeviceGuard {
 public:
  explicit DeviceGuard(int id) {
    int count = 0;
    FASTLSTM_CUDA_CHECK(cudaGetDeviceCount(&count));
    FASTLSTM_CHECK(id >= 0 && id < count, "device: expected a CUDA device in [0, " << count << "), got " << id);
    FASTLSTM_CUDA_CHECK(cudaGetDevice(&previous_));
    FASTLSTM_CUDA_CHECK(cudaSetDevice(id));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }  // cannot fail: previous_ was current a moment ago
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// The properties of device `id` (the current device, under a DeviceGuard).
Device describe_device(int id) {
  Device d;
  d.id = id;
  FASTLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, d.id));
  FASTLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, d.id));
  FASTLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&d.cooperative, cudaDevAttrCooperativeLaunch, d.id));
  return d;
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
int64_t ceil_div(int64_t n, int64_t m) { return (n + m - 1) / m; }

// Batches up to this size prefer the persistent kernel when it fits (a first estimate from the
// design: per-step launches and weight streaming dominate at small B; bench/ --device cuda is where
// this threshold gets tuned).
constexpr int64_t kPersistentMaxBatch = 32;

// The persistent geometry of one call: units per block, sequences per shared-memory tile, threads,
// shared bytes; ok = false when the weights slice cannot stay on chip.
struct Persistent {
  bool ok = false;
  int U = 0, BT = 0, threads = 0, blocks = 0;
  int64_t kp = 0;
  size_t smem = 0;
};

template <typename Real>
Persistent plan_persistent(const Device& dev, int64_t B, int64_t H, int ndirs, bool backward) {
  Persistent pl;
  if (!dev.cooperative || dev.sms <= 0) return pl;
  const int64_t per_dir_blocks = std::max<int64_t>(1, dev.sms / ndirs);
  int64_t U = ceil_div(H, per_dir_blocks);
  if (backward) U = round_up(U, 4);
  pl.U = static_cast<int>(U);
  pl.blocks = static_cast<int>(ceil_div(H, U));
  pl.kp = round_up(backward ? 4 * H : H, Vec<Real>::n);
  const int64_t rows = backward ? U : 4 * U;
  const int64_t items = backward ? ceil_div(U, 4) : U;
  pl.threads = static_cast<int>(32 * std::clamp<int64_t>(items, 4, kMaxPersistentThreads / 32));
  // the largest sequence tile (a power of two up to 8, no more than B needs) whose buffers fit
  for (int bt = 8; bt >= 1; bt /= 2) {
    if (bt > 1 && bt / 2 >= B) continue;
    const size_t bytes = static_cast<size_t>((rows + bt) * pl.kp) * sizeof(Real);
    if (bytes <= static_cast<size_t>(dev.smem_optin)) {
      pl.BT = bt;
      pl.smem = bytes;
      pl.ok = true;
      break;
    }
  }
  return pl;
}

// Checks that the whole grid can be resident at once (a cooperative launch's precondition). The
// kernel's dynamic shared-memory limit is raised to the device's maximum once per device and kernel
// (a limit, not a size: concurrent calls with different sizes all fit under it).
bool fits_cooperatively(const void* kernel, const Device& dev, const Persistent& pl, int ndirs) {
  static std::mutex mutex;
  static std::set<std::pair<int, const void*>> raised;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (raised.insert({dev.id, kernel}).second) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin);
      if (err != cudaSuccess) raised.erase({dev.id, kernel});
      FASTLSTM_CUDA_CHECK(err);
    }
  }
  int per_sm = 0;
  FASTLSTM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, pl.threads, pl.smem));
  return static_cast<int64_t>(per_sm) * dev.sms >= static_cast<int64_t>(pl.blocks) * ndirs;
}

// The persistent kernel instantiated for sequence tile BT (1, 2, 4 or 8), as cudaLaunchCooperativeKernel
// and the occupancy API take it.
template <typename Real, int BT>
const void* persistent_entry(bool backward) {
  return backward ? reinterpret_cast<const void*>(&backward_persistent<Real, BT>)
                  : reinterpret_cast<const void*>(&forward_persistent<Real, BT>);
}

template <typename Real>
const void* persistent_kernel(bool backward, int BT) {
  switch (BT) {
    case 1: return persistent_entry<Real, 1>(backward);
    case 2: return persistent_entry<Real, 2>(backward);
    case 4: return persistent_entry<Real, 4>(backward);
    default: return persistent_entry<Real, 8>(backward);
  }
}

template <typename Real>
Strategy resolve(Strategy requested, const Device& dev, int64_t B, int64_t H, int ndirs, bool backward,
                 Persistent& pl) {
  if (requested == Strategy::Streaming || (requested == Strategy::Auto && B > kPersistentMaxBatch))
    return Strategy::Streaming;
  pl = plan_persistent<Real>(dev, B, H, ndirs, backward);
  const bool fits = pl.ok && fits_cooperatively(persistent_kernel<Real>(backward, pl.BT), dev, pl, ndirs);
  if (requested == Strategy::Persistent) {
    FASTLSTM_CHECK(dev.cooperative, "strategy='persistent': this GPU does not support cooperative launches; use "
                                    "'auto' or 'streaming'");
    FASTLSTM_CHECK(fits, "strategy='persistent': this problem (B=" << B << ", H=" << H << ", " << ndirs
                                                                  << " direction(s), " << sizeof(Real) * 8
                                                                  << "-bit) does not fit on chip on this GPU; "
                                                                     "use 'auto' or 'streaming'");
    return Strategy::Persistent;
  }
  return fits ? Strategy::Persistent : Strategy::Streaming;
}

// Launches persistent kernel `kernel` with the plan's grid (blocks x directions), block and shared memory.
void launch_persistent(const void* kernel, const Persistent& pl, int ndirs, void** args, cudaStream_t stream) {
  FASTLSTM_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel, dim3(pl.blocks, ndirs), dim3(pl.threads), args, pl.smem,
                                                  stream));
  FASTLSTM_CUDA_CHECK(cudaGetLastError());
}

// Stream-ordered scratch memory, released on the stream when the call's work is done.
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream) : stream_(stream) {  // (0 bytes: no allocation, get() is nullptr)
    if (bytes) FASTLSTM_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~Scratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);  // cannot fail for a pointer this class allocated
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* get() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// The streaming tiles, largest first (sequences BM x units BU per block, TM x TU per thread). A step
// is one launch whose blocks each do a small GEMM, so the grid must fill the GPU: pick_tile takes the
// largest tile that still gives every multiprocessor a block (and does not waste most of its rows on
// a small batch), else the smallest.
struct Tile {
  int BM, BU;
};
constexpr Tile kForwardTiles[] = {{64, 32}, {32, 32}, {16, 16}, {8, 16}, {8, 8}};
constexpr Tile kBackwardTiles[] = {{64, 64}, {32, 64}, {16, 32}, {8, 32}, {8, 16}};

// FASTLSTM_CUDA_TILE=i forces tile i of both tables (tests cover every tile at small sizes with it).
template <size_t N>
int pick_tile(const Tile (&tiles)[N], int64_t B, int64_t H, int ndirs, int sms) {
  if (const char* forced = std::getenv("FASTLSTM_CUDA_TILE")) {
    const int i = std::atoi(forced);
    FASTLSTM_CHECK(i >= 0 && i < static_cast<int>(N), "FASTLSTM_CUDA_TILE: expected 0.." << N - 1 << ", got '" << forced << "'");
    return i;
  }
  for (size_t i = 0; i < N; ++i) {
    if (tiles[i].BM > 2 * B && tiles[i].BM > 8) continue;
    if (ceil_div(H, tiles[i].BU) * ceil_div(B, tiles[i].BM) * ndirs >= sms) return static_cast<int>(i);
  }
  return static_cast<int>(N) - 1;
}

template <typename Real, int BM, int BU, int TM, int TU>
void launch_forward_steps(const Dirs<LstmForwardArgs<Real>>& p, int ndirs, cudaStream_t stream) {
  const LstmForwardArgs<Real>& a = p.d[0];
  const dim3 grid(static_cast<unsigned>(ceil_div(a.H, BU)), static_cast<unsigned>(ceil_div(a.B, BM)), ndirs);
  constexpr int threads = (BU / TU) * (BM / TM);
  for (int64_t s = 0; s < a.T; ++s) {
    forward_step<Real, BM, BU, TM, TU><<<grid, threads, 0, stream>>>(p, s);
    FASTLSTM_CUDA_CHECK(cudaGetLastError());
  }
}

template <typename Real, int BM, int BU, int TM, int TU>
void launch_backward_steps(const Dirs<LstmBackwardArgs<Real>>& p, Real* carry, Real* dh_carry, int ndirs,
                           cudaStream_t stream) {
  const LstmBackwardArgs<Real>& a = p.d[0];
  const dim3 grid(static_cast<unsigned>(ceil_div(a.H, BU)), static_cast<unsigned>(ceil_div(a.B, BM)), ndirs);
  constexpr int threads = (BU / TU) * (BM / TM);
  for (int64_t s = 0; s <= a.T; ++s) {
    backward_step<Real, BM, BU, TM, TU><<<grid, threads, 0, stream>>>(p, carry, dh_carry, s);
    FASTLSTM_CUDA_CHECK(cudaGetLastError());
  }
}

// What the CUDA kernels support; the rest of lstm.h's options are CPU-only for now.
template <typename Args>
void check_common(const Args* dirs, int ndirs, const char* what) {
  FASTLSTM_CHECK(ndirs == 1 || ndirs == 2, what << ": expected 1 or 2 directions, got " << ndirs);
  for (int d = 0; d < ndirs; ++d) {
    const Args& a = dirs[d];
    FASTLSTM_CHECK(a.T > 0 && a.B > 0 && a.H > 0, what << ": expected T, B, H > 0");
    FASTLSTM_CHECK(a.T == dirs[0].T && a.B == dirs[0].B && a.H == dirs[0].H, what << ": directions differ in shape");
    // (a streaming grid has ceil(B / 8) sequence tiles along y, at most 65535)
    FASTLSTM_CHECK(a.B <= 65535 * 8 && a.H <= (1 << 26), what << ": B (at most 524280 on the GPU) or H (2^26) too "
                                                               "large, got B=" << a.B << ", H=" << a.H);
    FASTLSTM_CHECK(a.P == 0, what << ": projections (proj_size) are not supported on the GPU yet");
    FASTLSTM_CHECK(a.w_hh != nullptr, what << ": w_hh is required");
  }
}

}  // namespace

// ---- public entry points -----------------------------------------------------------------------------------
Strategy strategy_from_name(const std::string& name) {
  if (name == "auto") return Strategy::Auto;
  if (name == "persistent") return Strategy::Persistent;
  if (name == "streaming") return Strategy::Streaming;
  throw std::invalid_argument("strategy: expected 'auto', 'persistent' or 'streaming', got '" + name + "'");
}

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::Persistent: return "persistent";
    case Strategy::Streaming: return "streaming";
    default: return "auto";
  }
}

// FASTLSTM_CUDA_ARCHS is CMake's CUDA_ARCHITECTURES joined by '+': "80-real+90" -> sm_80, sm_90,
// compute_90 ("NN" alone is machine code and PTX, "-real" machine code only, "-virtual" PTX only).
std::vector<std::string> archs_compiled() {
  std::vector<std::string> out;
#ifdef FASTLSTM_CUDA_ARCHS
  const std::string all = std::string(FASTLSTM_CUDA_ARCHS) + "+";
  std::string cur;
  for (char ch : all) {
    if (ch != '+') {
      cur += ch;
      continue;
    }
    if (cur.empty()) continue;
    const auto dash = cur.find('-');
    const std::string num = cur.substr(0, dash), kind = dash == std::string::npos ? "" : cur.substr(dash + 1);
    if (num.find_first_not_of("0123456789") != std::string::npos) {  // "native", "all", "all-major": as given
      out.push_back(cur);
    } else {
      if (kind != "virtual") out.push_back("sm_" + num);
      if (kind != "real") out.push_back("compute_" + num);
    }
    cur.clear();
  }
#endif
  return out;
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // reset the runtime's last-error state, so later checks do not see this one
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return prop.name;
}

template <typename Real>
Strategy choose_strategy(int64_t B, int64_t H, int ndirs, bool backward, int device) {
  FASTLSTM_CHECK(B > 0 && H > 0 && (ndirs == 1 || ndirs == 2), "choose_strategy: expected B, H > 0 and 1 or 2 directions");
  const DeviceGuard guard(device);
  Persistent pl;
  return resolve<Real>(Strategy::Auto, describe_device(device), B, H, ndirs, backward, pl);
}

template <typename Real>
void lstm_forward(const LstmForwardArgs<Real>* dirs, int ndirs, int device, std::uintptr_t stream_handle,
                  Strategy strategy) {
  check_common(dirs, ndirs, "lstm_forward");
  for (int d = 0; d < ndirs; ++d) {
    FASTLSTM_CHECK(dirs[d].gx && dirs[d].y && dirs[d].h_n && dirs[d].c_n, "lstm_forward: gx, y, h_n, c_n are required");
    FASTLSTM_CHECK((dirs[d].gates == nullptr) == (dirs[d].cell == nullptr), "lstm_forward: gates and cell go together");
  }
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const DeviceGuard guard(device);
  const Device dev = describe_device(device);
  Dirs<LstmForwardArgs<Real>> p{};
  for (int d = 0; d < ndirs; ++d) p.d[d] = dirs[d];
  const int64_t B = dirs[0].B, H = dirs[0].H;
  Persistent pl;
  if (resolve<Real>(strategy, dev, B, H, ndirs, false, pl) == Strategy::Persistent) {
    int U = pl.U;
    int64_t kp = pl.kp;
    void* args[] = {&p, &U, &kp};
    launch_persistent(persistent_kernel<Real>(false, pl.BT), pl, ndirs, args, stream);
    return;
  }
  switch (pick_tile(kForwardTiles, B, H, ndirs, dev.sms)) {  // (TM, TU): 128, 128, 128, 128, 64 threads
    case 0: launch_forward_steps<Real, 64, 32, 8, 2>(p, ndirs, stream); break;
    case 1: launch_forward_steps<Real, 32, 32, 4, 2>(p, ndirs, stream); break;
    case 2: launch_forward_steps<Real, 16, 16, 2, 1>(p, ndirs, stream); break;
    case 3: launch_forward_steps<Real, 8, 16, 1, 1>(p, ndirs, stream); break;
    default: launch_forward_steps<Real, 8, 8, 1, 1>(p, ndirs, stream); break;
  }
}

template <typename Real>
void lstm_backward(const LstmBackwardArgs<Real>* dirs, int ndirs, int device, std::uintptr_t stream_handle,
                   Strategy strategy) {
  check_common(dirs, ndirs, "lstm_backward");
  for (int d = 0; d < ndirs; ++d) {
    FASTLSTM_CHECK(dirs[d].gates && dirs[d].cell && dirs[d].dg && dirs[d].dh0 && dirs[d].dc0,
                   "lstm_backward: gates, cell, dg, dh0, dc0 are required");
    FASTLSTM_CHECK(dirs[d].dbias == nullptr, "lstm_backward: dbias is summed by the caller on the GPU");
  }
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const DeviceGuard guard(device);
  const Device dev = describe_device(device);
  Dirs<LstmBackwardArgs<Real>> p{};
  for (int d = 0; d < ndirs; ++d) p.d[d] = dirs[d];
  const int64_t B = dirs[0].B, H = dirs[0].H;
  const size_t state_bytes = static_cast<size_t>(ndirs) * B * H * sizeof(Real);
  Scratch carry_buf(state_bytes, stream);
  Real* carry = carry_buf.get<Real>();
  // zoneout: the direct path dL/dh[t] -> h[t-1] (zh dh) needs its own carry, starting at 0
  const bool zoneout = dirs[0].zoneout();
  Scratch dh_carry_buf(zoneout ? state_bytes : 0, stream);
  Real* dh_carry = dh_carry_buf.get<Real>();
  if (zoneout) FASTLSTM_CUDA_CHECK(cudaMemsetAsync(dh_carry, 0, state_bytes, stream));
  Persistent pl;
  if (resolve<Real>(strategy, dev, B, H, ndirs, true, pl) == Strategy::Persistent) {
    int U = pl.U;
    int64_t kp = pl.kp;
    void* args[] = {&p, &carry, &dh_carry, &U, &kp};
    launch_persistent(persistent_kernel<Real>(true, pl.BT), pl, ndirs, args, stream);
    return;
  }
  switch (pick_tile(kBackwardTiles, B, H, ndirs, dev.sms)) {  // (TM, TU): 128, 128, 128, 256, 128 threads
    case 0: launch_backward_steps<Real, 64, 64, 8, 4>(p, carry, dh_carry, ndirs, stream); break;
    case 1: launch_backward_steps<Real, 32, 64, 4, 4>(p, carry, dh_carry, ndirs, stream); break;
    case 2: launch_backward_steps<Real, 16, 32, 2, 2>(p, carry, dh_carry, ndirs, stream); break;
    case 3: launch_backward_steps<Real, 8, 32, 1, 1>(p, carry, dh_carry, ndirs, stream); break;
    default: launch_backward_steps<Real, 8, 16, 1, 1>(p, carry, dh_carry, ndirs, stream); break;
  }
}

template Strategy choose_strategy<float>(int64_t, int64_t, int, bool, int);
template Strategy choose_strategy<double>(int64_t, int64_t, int, bool, int);
template void lstm_forward<float>(const LstmForwardArgs<float>*, int, int, std::uintptr_t, Strategy);
template void lstm_forward<double>(const LstmForwardArgs<double>*, int, int, std::uintptr_t, Strategy);
template void lstm_backward<float>(const LstmBackwardArgs<float>*, int, int, std::uintptr_t, Strategy);
template void lstm_backward<double>(const LstmBackwardArgs<double>*, int, int, std::uintptr_t, Strategy);

}  // namespace fastlstm::cuda
