// lstm.h: the C++ interface of fastlstm's kernels. Shapes, gate order and entry points live here.
//
// What this is: plain argument structs (one per kernel) and the functions that run them on the CPU
// through the ISA dispatch table. What it is not: a layer. Stacking, directions' weights, dropout and
// the big GEMMs' orchestration live in python/fastlstm/layer.py; bindings.cpp converts arrays.
//
// Gate order, everywhere in this library (as PyTorch): i, f, g, o. A [4H] gate vector holds
// i in [0, H), f in [H, 2H), g in [2H, 3H), o in [3H, 4H). Weights use PyTorch's layout:
// weight_ih [4H, I] and weight_hh [4H, H], row-major.
//
// One direction of one layer, forward, for t in processing order (t = T-1..0 when reverse):
//   g   = gx[t] + bias + h[t-1] W_hh^T                (gx = x W_ih^T, computed beforehand or in the loop)
//   i, f, o = sigmoid(g_i, g_f, g_o); gg = tanh(g_g)
//   c[t] = f * c[t-1] + i * gg;  h[t] = o * tanh(c[t])
//
// Sequence arrays are addressed through two strides (in elements) so that time-major [T, B, ...] and
// batch-major [B, T, ...] buffers, and one direction's columns inside a bidirectional buffer, are all
// read and written in place: element (t, b, j) of a sequence array p is p[t * st + b * sb + j].
//
// Extension points (later issues): per-sequence lengths, a projection (LSTMP: h = W_hr (o*tanh c),
// recurrent width P instead of H), zoneout and variational recurrent dropout masks add fields to these
// structs; nullptr / 0 in a new field keeps today's behaviour, so callers that do not use a feature do
// not change. A CUDA backend takes the same structs with device pointers.
//
// Test: tests/test_kernels.py runs every entry point on every ISA against fastlstm.reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastlstm {

// ---- forward: one direction of one layer ---------------------------------------------------------
template <typename Real>
struct LstmForwardArgs {
  int64_t T = 0, B = 0, H = 0;   // time steps, batch, hidden units
  const Real* gx = nullptr;         // gx:   [T, B, 4H] (strides gx_st, gx_sb) input projection x W_ih^T
  int64_t gx_st = 0, gx_sb = 0;
  // or, on the CPU, the input projection fused into the loop (gx = nullptr): each thread computes
  // x[t] W_ih^T for the units it owns (and, done with those, some of another's), a chunk of steps at a
  // time, into the owner's scratch
  int64_t I = 0;                    // input size
  const Real* x = nullptr;          // x:    [T, B, I] (strides x_st, x_sb) the layer's input
  int64_t x_st = 0, x_sb = 0;
  const Real* w_ih = nullptr;       // w_ih: [4H, I] input weights, row-major (PyTorch layout)
  const Real* bias = nullptr;       // bias: [4H] b_ih + b_hh, or nullptr for none
  const Real* w_hh = nullptr;       // w_hh: [4H, H] recurrent weights, row-major (PyTorch layout)
  const Real* h0 = nullptr;         // h0:   [B, H] initial hidden state, or nullptr for zeros
  const Real* c0 = nullptr;         // c0:   [B, H] initial cell state, or nullptr for zeros
  Real* y = nullptr;                // y:    [T, B, H] (strides y_st, y_sb) output h[t]
  int64_t y_st = 0, y_sb = 0;
  Real* h_n = nullptr;              // h_n:  [B, H] final hidden state (after the last processed step)
  Real* c_n = nullptr;              // c_n:  [B, H] final cell state
  // training only (both nullptr in inference: then no gate value is ever written to memory)
  Real* gates = nullptr;            // gates: [T, B, 4H] contiguous, activated i, f, gg, o
  Real* cell = nullptr;             // cell:  [T, B, H] contiguous, c[t] (the state, after zoneout)
  bool reverse = false;          // process t = T-1 .. 0 (the reverse direction of a bidirectional layer)
  // regularisation, all off by default (see reference.py for the equations)
  // projection (LSTMP, PyTorch's proj_size): h[t] = W_hr (o * tanh(c~)) has P values; w_hh is then
  // [4H, P], h0 / h_n [B, P] and y [T, B, P] (its strides count elements as before)
  int64_t P = 0;                    // 0: no projection (h has H values)
  const Real* w_hr = nullptr;       // w_hr:  [P, H]
  Real* h_raw = nullptr;            // h_raw: [T, B, H] training with P > 0: o * tanh(c~) (for backward)
  const Real* zoneout_h = nullptr;  // zoneout_h: [T, B, H or P] 1 where h[t] keeps h[t-1] (training), or nullptr
  const Real* zoneout_c = nullptr;  // zoneout_c: [T, B, H] 1 where c[t] keeps c[t-1], or nullptr
  Real zoneout_h_p = 0, zoneout_c_p = 0;  // without the arrays, these weights (eval: the expectation)
  const Real* rec_mask = nullptr;   // rec_mask: [B, H] multiplies h[t-1] where it enters the recurrence
                                    //           (variational recurrent dropout), or nullptr
  bool zoneout() const { return zoneout_h || zoneout_c || zoneout_h_p > 0 || zoneout_c_p > 0; }
  const int64_t* lengths = nullptr;  // lengths: [B] steps of each sequence, each in 1..T, non-increasing
                                 // (the caller sorts); sequence b exists at t < lengths[b] only: elsewhere
                                 // its state is kept and y is 0. nullptr: all T (see reference.py)
  int64_t step_offset = 0;       // this call's first step within a longer stream (a stateful layer fed in
                                 // chunks): per-step choices of the kernels (the order they walk weights
                                 // in) follow the absolute step, so chunks match one long call bit for bit
};

// ---- backward: one direction of one layer ---------------------------------------------------------
// Consumes what a training forward saved; produces the pre-activation gate gradients dG, from which
// the caller forms dW_ih = dG^T x, dW_hh = dG^T h[t-1] and dx = dG W_ih (big GEMMs); db = sum dG
// is summed here, in the epilogue, when dbias is given.
template <typename Real>
struct LstmBackwardArgs {
  int64_t T = 0, B = 0, H = 0;
  const Real* w_hh = nullptr;       // w_hh:  [4H, H] the weights the forward used
  const Real* gates = nullptr;      // gates: [T, B, 4H] contiguous, activated i, f, gg, o (from forward)
  const Real* cell = nullptr;       // cell:  [T, B, H] contiguous, c[t] (from forward)
  const Real* c0 = nullptr;         // c0:    [B, H] initial cell state, or nullptr for zeros
  const Real* dy = nullptr;         // dy:    [T, B, H] (strides dy_st, dy_sb) dL/dy, or nullptr for zeros
  int64_t dy_st = 0, dy_sb = 0;
  const Real* dh_n = nullptr;       // dh_n:  [B, H] dL/dh_n, or nullptr for zeros
  const Real* dc_n = nullptr;       // dc_n:  [B, H] dL/dc_n, or nullptr for zeros
  Real* dg = nullptr;               // dg:    [T, B, 4H] (strides dg_st, dg_sb) out: dL/d(pre-activation)
  int64_t dg_st = 0, dg_sb = 0;
  Real* dh0 = nullptr;              // dh0:   [B, H] out: dL/dh0
  Real* dc0 = nullptr;              // dc0:   [B, H] out: dL/dc0
  Real* dbias = nullptr;            // dbias: [4H] out: sum of dG over all steps and sequences (the bias
                                    //        gradient, summed in double), or nullptr to skip it
  bool reverse = false;
  const int64_t* lengths = nullptr; // lengths: as the forward's (dG is 0 where a sequence does not exist)
  int64_t P = 0;                    // projection size, as the forward's (0: none); w_hh is then [4H, P],
                                    // dy [T, B, P], dh_n / dh0 [B, P]
  const Real* w_hr = nullptr;       // w_hr:    [P, H]
  const Real* h_raw = nullptr;      // h_raw:   [T, B, H] the forward's o * tanh(c~)
  Real* dh_proj = nullptr;          // dh_proj: [T, B, P] out: dL/d(W_hr h_raw) per step (0 where a sequence
                                    //          does not exist), for dW_hr = sum dh_proj^T h_raw
  const Real* zoneout_h = nullptr;  // zoneout_h, zoneout_c, rec_mask: the forward's masks (training)
  const Real* zoneout_c = nullptr;
  const Real* rec_mask = nullptr;
  bool zoneout() const { return zoneout_h || zoneout_c; }
};

// ---- GEMM for the big products over all time steps --------------------------------------------------
// C = op(A) op(B) (+ bias per column) or C += op(A) op(B). op(A): [M, K], op(B): [K, N].
template <typename Real>
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const Real* a = nullptr;          // a: [M, K] row stride lda, or [K, M] when trans_a
  int64_t lda = 0;
  bool trans_a = false;
  const Real* b = nullptr;          // b: [K, N] row stride ldb, or [N, K] when trans_b
  int64_t ldb = 0;
  bool trans_b = false;
  Real* c = nullptr;                // c: [M, N] row stride ldc
  int64_t ldc = 0;
  const Real* bias = nullptr;       // bias: [N] added to every row (only when !accumulate), or nullptr
  bool accumulate = false;
  // row selections (variable-length batches skip padding): nullptr selects 0..M-1 / 0..K-1
  const int64_t* m_rows = nullptr;  // m_rows: [M] storage rows of A and of C to compute (needs !trans_a)
  const int64_t* k_rows = nullptr;  // k_rows: [K] storage rows of A and of B to sum over (needs trans_a
                                    //         and !trans_b: the weight gradients dG^T x)
  // A second product over the same A, for one pass over A where two share it (the weight gradients
  // dG^T x and dG^T h[t-1]): C2 (+)= op(A) B2, [M, N2], row stride ldc2. B2's row for A's storage row k
  // (see k_rows) is b2 + (k - b2_lo) ldb2 for k in [b2_lo, b2_hi) and zero elsewhere: h[t-1] is y one step
  // away. Needs !trans_b and no bias. N2 = 0: none.
  int64_t N2 = 0;
  const Real* b2 = nullptr;
  int64_t ldb2 = 0, b2_lo = 0, b2_hi = 0;
  Real* c2 = nullptr;
  int64_t ldc2 = 0;
  // a_sums: [M] = op(A)'s rows summed over the K rows taken, in double, or nullptr. Needs trans_a: the bias
  // gradient (dG summed over steps and sequences) from the pass that packs dG^T for the weight gradients.
  double* a_sums = nullptr;
};

// ---- instruction sets ------------------------------------------------------------------------------
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* isa_name(Isa isa);
std::vector<Isa> isa_compiled();   // built into this binary
std::vector<Isa> isa_supported();  // compiled and runnable on this CPU
Isa isa_selected();
void isa_select(Isa isa);          // throws std::invalid_argument if not supported
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument for unknown names

// One ISA's kernels; every translation unit in csrc/cpu/ fills one of these.
// num_threads: 0 picks a count from the problem size (see choose_threads), n > 0 uses at most n.
template <typename Real>
struct KernelSet {
  void (*lstm_forward)(const LstmForwardArgs<Real>* dirs, int ndirs, int num_threads);
  void (*lstm_backward)(const LstmBackwardArgs<Real>* dirs, int ndirs, int num_threads);
  void (*gemm)(const GemmArgs<Real>& args, int num_threads);
  void (*sigmoid)(const Real* x, Real* y, int64_t n);  // vectorised activations, exposed for tests
  void (*tanh)(const Real* x, Real* y, int64_t n);
};
struct KernelTable {
  KernelSet<float> f32;
  KernelSet<double> f64;
};
const KernelTable& kernels();  // the selected ISA's table

// ---- entry points (validate, then run on the selected ISA; the caller holds no GIL) -----------------
// Runs the directions of one layer; they share nothing and run concurrently when threads allow.
template <typename T>
void lstm_forward(const LstmForwardArgs<T>* dirs, int ndirs, int num_threads);
template <typename T>
void lstm_backward(const LstmBackwardArgs<T>* dirs, int ndirs, int num_threads);
template <typename T>
void gemm(const GemmArgs<T>& args, int num_threads);

// Whether the CPU forward should take x and w_ih (the input projection fused into the recurrent loop)
// rather than a precomputed gx, for D directions of packed weights [4H, I + KP] of `elem` bytes each.
// Fused, every step's epilogue reads x W_ih^T from a small per-thread buffer instead of a [T, B, 4H]
// array, but W_ih is read again every chunk of steps: it pays while both weights stay in the last-level
// cache (half of it, leaving room for the streamed arrays). Measured on the README's 2-core EPYC (32 MiB
// L3), one layer forward: 100,1,128,128 1.06x, 1000,1,32,64 1.14x, 100,16,256,256 1.06x, 100,64,512,512
// 1.09x, 50,32,640,640 1.00x, 50,32,768,768 1.04x (19 MiB of weights: left on the GEMM route, a margin
// for machines whose cache holds less), 50,32,1024,1024 0.88x (32 MiB).
bool fuse_input_projection(int64_t I, int64_t H, int64_t KP, int D, int64_t elem);

}  // namespace fastlstm
