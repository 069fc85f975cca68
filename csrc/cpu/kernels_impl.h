// kernels_impl.h: the CPU kernels, written once over a vector type and compiled once per ISA.
//
// What this is: the fused recurrent loops (forward inference/training, backward), the GEMM used for
// the big products over all time steps, and the vectorised sigmoid/tanh. Each isa_*.cpp includes
// this file inside its own namespace (fastlstm::cpu_scalar / cpu_avx2 / cpu_avx512) after defining
// VF, VD (float/double vectors, see simd_*.h) and kMR, so the three copies never share a symbol.
// Nothing here may call an inline function defined outside that namespace (see threading.h).
//
// The one micro-kernel: acc[MR][NV] (+)= A[MR rows, K] * Bp[K, NV vectors], A read by rows with a
// stride (broadcast one element per row per k), Bp packed [K][NV][W]. It serves three masters:
//   forward step:  A = h[t-1] [B, H],  Bp = W_hh^T for one tile of W hidden units, the NV = 4 vectors
//                  being the i, f, g, o rows of the same units  -> gate epilogue in registers
//                  (and, fused input projection, A = a chunk of x's rows, Bp = W_ih^T of the same tile);
//   backward step: A = dG[t+1] [B, 4H], Bp = W_hh[:, up to 4 tiles of units] -> derivative epilogue;
//   GEMM:          A = x or dG (packed when transposed), Bp = a panel of 4W columns of B -> store.
// Threads split hidden units (forward/backward) or rows and panels (GEMM); a thread that runs out of work
// takes items from another's queue (GEMM, and the forward's fused input projection). Every output element
// is computed by one item in one fixed order, so results are bitwise identical for any thread count and
// whichever thread computes an item.
//
// Tests: tests/test_kernels.py (every ISA against fastlstm.reference), tests/test_math.py (ulp bounds).

#define FASTLSTM_INLINE inline __attribute__((always_inline))

template <int N>
struct Int {
  static constexpr int value = N;
};

FASTLSTM_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
FASTLSTM_INLINE int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
FASTLSTM_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// f(Int<m>{}) for a runtime m in [1, kMR]
template <class F>
FASTLSTM_INLINE void with_rows(int m, F&& f) {
  switch (m) {
    case 1: f(Int<1>{}); break;
    case 2: if constexpr (kMR >= 2) f(Int<2>{}); break;
    case 3: if constexpr (kMR >= 3) f(Int<3>{}); break;
    case 4: if constexpr (kMR >= 4) f(Int<4>{}); break;
    case 5: if constexpr (kMR >= 5) f(Int<5>{}); break;
    case 6: if constexpr (kMR >= 6) f(Int<6>{}); break;
    default: break;
  }
}
template <class F>
FASTLSTM_INLINE void with_vecs(int nv, F&& f) {
  switch (nv) {
    case 1: f(Int<1>{}); break;
    case 2: f(Int<2>{}); break;
    case 3: f(Int<3>{}); break;
    default: f(Int<4>{}); break;
  }
}

// Scratch memory owned by one kernel call (never by a layer object: calls may run concurrently), reused from the
// calling thread's earlier calls where it can be (scratch_alloc).
template <typename T>
struct Scratch {
  T* p = nullptr;
  explicit Scratch(int64_t n) : p(static_cast<T*>(scratch_alloc(sizeof(T) * static_cast<size_t>(imax(n, 1))))) {}
  ~Scratch() { scratch_free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// ---------------------------------------------------------------------------------------------------
// Vectorised sigmoid and tanh.
//
// Both rest on one range reduction: y = n ln2 + r with n = round(y / ln2), |r| <= ln2/2, ln2 split
// into a short high part (n * ln2_hi is exact for the n that occur) and a low part; then
// expm1(r) = r + r^2 (1/2! + r/3! + ... + r^(D-2)/D!), a Taylor polynomial of degree D = 8 (float,
// truncation < 6e-10 relative) or 14 (double, < 3e-19), evaluated by Horner with FMA.
//   sigmoid(x) = num / (1 + e),  e = exp(-|x|) = 2^n (1 + expm1(r)),  num = 1 (x >= 0) or e (x < 0):
//     no cancellation on either side; 2^n is applied in two halves so e is correctly produced down in
//     the subnormal range (sigmoid(-100) is a float32 subnormal, not 0).
//   tanh(x)    = sign(x) * m / (m + 2),  m = expm1(2|x|) = 2^n expm1(r) + (2^n - 1):
//     accurate near 0 (m ~ 2x, so tanh(x) ~ x even for subnormal x) and no 1 - small cancellation.
// Arguments are clamped where the result is already exact (|x| >= 104 / 746 for sigmoid: e
// underflows; |x| >= 10 / 20 for tanh: the result rounds to 1), with min/max that keep NaN, so
// NaN in gives NaN out and infinities give the limits.
// Error bound: within 3 ulp of the exact value, float32 and float64, over the whole range
// (tests/test_math.py checks every binade from the smallest subnormal up, both signs, a dense sweep of
// [-120, 120] and the clamp points, on every ISA; measured maxima 2.1 ulp float32, 2.4 ulp float64).
template <class V>
struct Math {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr bool kF32 = sizeof(T) == 4;
  static constexpr int kDeg = kF32 ? 8 : 14;
  static constexpr double kLn2Hi = kF32 ? 0.693145751953125 : 6.93147180369123816490e-01;
  static constexpr double kLn2Lo = kF32 ? 1.428606765330187045e-06 : 1.90821492927058770002e-10;
  static constexpr double kLog2e = 1.44269504088896340736;
  static constexpr double kSigmoidClamp = kF32 ? 104.0 : 746.0;
  static constexpr double kTanhClamp = kF32 ? 10.0 : 20.0;

  static constexpr double inv_fact(int k) {
    double f = 1.0;
    for (int i = 2; i <= k; ++i) f *= i;
    return 1.0 / f;
  }

  // y = n ln2 + r; returns expm1(r), sets n
  static FASTLSTM_INLINE R reduce_expm1(R y, R& n) {
    n = V::round(V::mul(y, V::set1(T(kLog2e))));
    R r = V::fnma(n, V::set1(T(kLn2Hi)), y);
    r = V::fnma(n, V::set1(T(kLn2Lo)), r);
    R p = V::set1(T(inv_fact(kDeg)));
#pragma GCC unroll 16
    for (int k = kDeg - 1; k >= 2; --k) p = V::fma(p, r, V::set1(T(inv_fact(k))));
    return V::fma(V::mul(r, r), p, r);  // r + r^2 p
  }

  static FASTLSTM_INLINE R sigmoid(R x) {
    const R one = V::set1(T(1));
    R a = V::max_keep_nan(V::set1(T(-kSigmoidClamp)), V::neg(V::abs(x)));  // -|x|, clamped
    R n;
    R q = reduce_expm1(a, n);
    R n1 = V::floor(V::mul(n, V::set1(T(0.5))));
    R p1 = V::pow2i(n1), p2 = V::pow2i(V::sub(n, n1));
    R e = V::mul(V::fma(q, p1, p1), p2);  // 2^n (1 + q), n in [-1076, 0] split in two
    return V::div(V::select_neg(x, e, one), V::add(one, e));
  }

  static FASTLSTM_INLINE R tanh(R x) {
    R a = V::min_keep_nan(V::set1(T(kTanhClamp)), V::abs(x));
    R y = V::add(a, a);
    R n;
    R q = reduce_expm1(y, n);
    R p = V::pow2i(n);
    R m = V::fma(p, q, V::sub(p, V::set1(T(1))));  // expm1(2|x|)
    return V::copysign(V::div(m, V::add(m, V::set1(T(2)))), x);
  }
};

template <class V>
void sigmoid_array(const typename V::T* x, typename V::T* y, int64_t n) {
  constexpr int W = V::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store(y + i, Math<V>::sigmoid(V::load(x + i)));
  if (i < n) V::store_n(y + i, Math<V>::sigmoid(V::load_n(x + i, int(n - i))), int(n - i));
}
template <class V>
void tanh_array(const typename V::T* x, typename V::T* y, int64_t n) {
  constexpr int W = V::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store(y + i, Math<V>::tanh(V::load(x + i)));
  if (i < n) V::store_n(y + i, Math<V>::tanh(V::load_n(x + i, int(n - i))), int(n - i));
}

// ---------------------------------------------------------------------------------------------------
// The micro-kernel (see the top of the file). Element (r, k) of A is a[r * lda + k * aks]: aks = 1 for
// rows in place, lda = 1, aks = MR for a panel packed k-major (one sequential stream).
// micro_acc adds to acc, micro starts from zero. micro_acc is out of line on purpose: inlined into a
// loop with a gate epilogue, GCC keeps the epilogue's constants in registers and spills accumulators
// inside the k loop (measured: recurrent forward at 1 thread, B=16, H=256, 81 -> 94 GFLOP/s).
template <class V, int MR, int NV, bool Backwards = false>
__attribute__((noinline)) void micro_acc(const typename V::T* a, int64_t lda, const typename V::T* bp, int64_t K,
                                         typename V::R (&acc)[MR][NV], int64_t aks, const void* const* pf,
                                         int64_t npf) {
  constexpr int W = V::W;
  if constexpr (Backwards) {  // k from K-1 down to 0: the same loop over mirrored pointers
    a += (K - 1) * aks;
    bp += (K - 1) * NV * W;
  }
  constexpr int64_t dir = Backwards ? -1 : 1;
  typename V::R c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = acc[r][v];
  auto step = [&](int64_t k) __attribute__((always_inline)) {
    typename V::R b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V::load(bp + (dir * k * NV + v) * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      typename V::R av = V::set1(a[r * lda + dir * k * aks]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = V::fma(av, b[v], c[r][v]);
    }
  };
  // pf[0, npf): lines the caller's epilogue will touch, prefetched (for writing: PREFETCHW where the
  // ISA's flags allow it) one per S iterations at the end of the loop, ~16 FMAs apart so a narrow tile
  // does not issue them in a burst
  constexpr int S = (16 + MR * NV - 1) / (MR * NV);
  const int64_t n = imin(npf, K / S), kp = K - n * S;
#pragma GCC unroll 2
  for (int64_t k = 0; k < kp; ++k) step(k);
  for (int64_t i = 0; i < n; ++i) {
    __builtin_prefetch(pf[i], 1, 3);
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) step(kp + i * S + s);
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = c[r][v];
}
template <class V, int MR, int NV, bool Backwards = false>
FASTLSTM_INLINE void micro(const typename V::T* a, int64_t lda, const typename V::T* bp, int64_t K,
                           typename V::R (&acc)[MR][NV], int64_t aks = 1, const void* const* pf = nullptr,
                           int64_t npf = 0) {
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  micro_acc<V, MR, NV, Backwards>(a, lda, bp, K, acc, aks, pf, npf);
}

// Appends to out[n..] the 64-byte cache lines that hold elements [j0, j1) of p: the prefetch lists the
// recurrent loops hand to micro() for their step epilogues. At most lines_per_run(j1 - j0) of them.
template <typename T>
FASTLSTM_INLINE void append_lines(const T* p, int64_t j0, int64_t j1, const void** out, int64_t& n) {
  const auto end = reinterpret_cast<uintptr_t>(p + j1);
  for (auto l = reinterpret_cast<uintptr_t>(p + j0) & ~uintptr_t(63); l < end; l += 64)
    out[n++] = reinterpret_cast<const void*>(l);
}
template <typename T>
constexpr int lines_per_run(int64_t elements) {  // whatever the alignment
  return static_cast<int>((elements * int64_t(sizeof(T)) + 63) / 64) + 1;
}

// load / store W lanes, or the first n of them
template <class V>
FASTLSTM_INLINE typename V::R ld(const typename V::T* p, int n) {
  return n == V::W ? V::load(p) : V::load_n(p, n);
}
template <class V>
FASTLSTM_INLINE void st(typename V::T* p, typename V::R v, int n) {
  if (n == V::W) V::store(p, v);
  else V::store_n(p, v, n);
}

// int64 counters of a work queue shared between threads, one cache line (kSlot of them) per thread
constexpr int64_t kSlot = 64 / sizeof(int64_t);

// Of the n threads' queues, the one other than self's with the most items left (left(u)), if that is two
// or more: where a thread done with its own work takes from next; -1 if none
template <class Left>
FASTLSTM_INLINE int fullest_queue(int n, int self, Left&& left) {
  int v = -1;
  int64_t most = 1;
  for (int u = 0; u < n; ++u) {
    if (u == self) continue;
    const int64_t l = left(u);
    if (l > most) v = u, most = l;
  }
  return v;
}

// Balanced split of `units` pieces over `parts`: [begin, end) of part `idx`.
FASTLSTM_INLINE void split(int64_t units, int parts, int idx, int64_t& begin, int64_t& end) {
  int64_t base = units / parts, extra = units % parts;
  begin = idx * base + imin(idx, extra);
  end = begin + base + (idx < extra ? 1 : 0);
}

// Rows that exist at step t: with lengths (non-increasing), the prefix of sequences longer than t.
FASTLSTM_INLINE int64_t live_rows(const int64_t* lengths, int64_t B, int64_t t) {
  if (t < 0) return 0;
  if (!lengths) return B;
  int64_t n = B;
  while (n > 0 && lengths[n - 1] <= t) --n;
  return n;
}

// A[rows, K] times packed column panels: tiles [t0, t1) of W columns, in groups of up to 4 tiles stored at
// panels + tile * K * W as [K][nv][W] (the layout Backward::pack_columns and Forward's W_hr packing write).
// f(b, tile, acc) receives each row's result for each tile.
constexpr int kPanelGroup = 4;  // tiles per micro-kernel call (its NV) in column-panel products

template <class V, class F>
FASTLSTM_INLINE void panel_products(const typename V::T* a, int64_t lda, const typename V::T* panels, int64_t K,
                                    int64_t t0, int64_t t1, int64_t rows, F&& f) {
  for (int64_t q = t0; q < t1; q += kPanelGroup) {
    const int nvt = static_cast<int>(imin(kPanelGroup, t1 - q));
    for (int64_t b0 = 0; b0 < rows; b0 += kMR) {
      with_vecs(nvt, [&](auto NVc) {
        with_rows(static_cast<int>(imin(kMR, rows - b0)), [&](auto MRc) {
          constexpr int nv = decltype(NVc)::value, mr = decltype(MRc)::value;
          typename V::R acc[mr][nv];
          micro<V, mr, nv>(a + b0 * lda, lda, panels + q * K * V::W, K, acc);
          for (int r = 0; r < mr; ++r)
            for (int v = 0; v < nv; ++v) f(b0 + r, q + v, acc[r][v]);
        });
      });
    }
  }
}

// Directions of one layer over a thread team: with two directions and two or more threads, each
// direction gets half of the team (its own barrier); otherwise the whole team runs them in turn.
struct TeamLayout {
  int groups;  // 1 or 2
  FASTLSTM_INLINE void member(int tid, int n, int& group, int& idx, int& size) const {
    if (groups == 1) { group = 0; idx = tid; size = n; return; }
    int half = n / 2;
    group = tid < half ? 0 : 1;
    idx = group == 0 ? tid : tid - half;
    size = group == 0 ? half : n - half;
  }
};

// ---------------------------------------------------------------------------------------------------
// Forward recurrent loop.
template <class V>
struct Forward {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int W = V::W;
  static constexpr int kGroup = kPanelGroup;  // projection tiles per micro-kernel call

  struct Dir {
    const LstmForwardArgs<T>* a;
    T* wp;      // packed W_hh: [tiles][KP][4][W], tile u holds units [u W, u W + W); KP = P or H
    T* wr;      // packed W_hr^T (P > 0): per group of up to 4 tiles of outputs at q W, [H][nv][W]
    T* hbuf;    // [2][B][KP] double-buffered h (times rec_mask: the recurrence's input)
    T* hr;      // [B][H] o * tanh(c~) of the step (P > 0)
    T* zeros;   // [B][KP] zeros, the h0 of a direction without one
    T* wi;      // packed W_ih (fused input projection): [tiles][I][4][W], as wp
    T* gxs;     // per team member, its units' x W_ih^T for a chunk of steps: [chunk steps][B][own tiles][4][W]
    int64_t gxs_size;  // elements of one member's gxs
    int64_t chunk;     // steps per chunk
    SpinBarrier* barrier;
    int64_t* queues;   // per member, kSlot apart: its projection items of the chunk (see project_chunk)
  };
  struct Ctx {
    Dir dir[2];
    int ndirs;
    TeamLayout team;
  };

  // rows of x per chunk of the fused input projection: enough row blocks that a thread's packed W_ih is
  // read from L2 once per ~16 blocks even at B = 1 (where one step is a single row)
  static constexpr int64_t kChunkRows = 16 * kMR;

  static void run(const LstmForwardArgs<T>* dirs, int ndirs, int num_threads) {
    const int64_t T_ = dirs[0].T, B = dirs[0].B, H = dirs[0].H, P = dirs[0].P, KP = P ? P : H, tiles = ceil_div(H, W);
    const int64_t ptiles = ceil_div(P, W), I = dirs[0].x ? dirs[0].I : 0;
    int n = choose_threads(2.0 * B * 4 * H * (KP + I) * ndirs + 2.0 * B * P * H * ndirs, tiles * ndirs, num_threads,
                           kStepMinFlopsPerThread);
    Parallel par(n);
    n = par.size();
    Ctx ctx;
    ctx.ndirs = ndirs;
    ctx.team.groups = (ndirs == 2 && n >= 2) ? 2 : 1;
    const int members = ctx.team.groups == 2 ? n - n / 2 : n;                         // the larger team
    const int64_t own_tiles = ceil_div(tiles, ctx.team.groups == 2 ? n / 2 : n);      // in the smaller one
    const int64_t chunk = I ? imin(T_, imax(1, kChunkRows / B)) : 0, gxs_size = chunk * B * own_tiles * 4 * W;
    Scratch<T> wp(ndirs * tiles * W * 4 * KP), wr(ndirs * ptiles * W * H), hb(ndirs * 2 * B * KP),
        hr(P ? ndirs * B * H : 0), zeros(B * KP), wi(ndirs * tiles * W * 4 * I), gxs(ndirs * members * gxs_size);
    Scratch<int64_t> queues(ndirs * members * kSlot);
    for (int64_t i = 0; i < ndirs * members * kSlot; ++i) queues.p[i] = 0;
    for (int64_t i = 0; i < B * KP; ++i) zeros.p[i] = T(0);
    SpinBarrier b0(ctx.team.groups == 2 ? n / 2 : n), b1(n - n / 2);
    for (int d = 0; d < ndirs; ++d)
      ctx.dir[d] = Dir{&dirs[d], wp.p + d * tiles * W * 4 * KP, wr.p + d * ptiles * W * H, hb.p + d * 2 * B * KP,
                       P ? hr.p + d * B * H : nullptr, zeros.p, wi.p + d * tiles * W * 4 * I,
                       gxs.p + d * members * gxs_size, gxs_size, chunk,
                       d == 1 && ctx.team.groups == 2 ? &b1 : &b0, queues.p + d * members * kSlot};
    par.run(&worker, &ctx);
  }

  // tile u of a [4H, K] gate-major weight matrix (W_hh or W_ih) -> dst [K][4][W]: the i, f, g, o rows of
  // units [u W, u W + W), zero past H. W x W blocks are transposed in registers where the ISA has it,
  // the ragged edges element by element.
  static void pack_gate_tile(const T* w, int64_t H, int64_t K, int64_t u, T* dst) {
    int64_t k0 = 0;  // columns [0, k0) packed by blocks
    if constexpr (V::kTranspose) {
      if ((u + 1) * W <= H) {  // a full tile: rows g H + u W .. + W - 1 for each gate g
        const T* rows = w + u * W * K;
        for (; k0 + W <= K; k0 += W)
          for (int g = 0; g < 4; ++g) V::transpose(rows + g * H * K + k0, K, dst + (k0 * 4 + g) * W, 4 * W);
      }
    }
    for (int64_t k = k0; k < K; ++k)
      for (int g = 0; g < 4; ++g)
        for (int l = 0; l < W; ++l) {
          int64_t j = u * W + l;
          dst[(k * 4 + g) * W + l] = j < H ? w[(g * H + j) * K + k] : T(0);
        }
  }

  // The fused input projection of a chunk of steps [tlo, tlo + steps): member m's gxs gets x W_ih^T (no bias)
  // for its tiles [u0, u1), row (t - tlo) B + b. Its work is a queue of items, tile u's units for one block of
  // the chunk's rows: kMR rows of one step, or, for a batch smaller than a row block whose rows are evenly
  // spaced (time-major, or B = 1), kMR consecutive rows across steps, so it still gets full micro-kernel
  // blocks (rows past a length are computed too, but no step past the longest). A member that has done its
  // own items takes items from the back of the queue with the most left (two or more), so a core slowed by a
  // neighbour (shared hosts) or a little core projects less; each member waits until every item of its own
  // queue is done before its steps read gxs. Queue word: front (next item of the owner) | back << 32.
  struct Rows {  // the blocks of a chunk's rows
    bool across;            // kMR consecutive rows across steps
    int64_t tend, per_step;  // across: the end of the steps with rows; else blocks per step
    int64_t blocks;
  };
  static Rows chunk_rows(const LstmForwardArgs<T>& a, int64_t tlo, int64_t steps) {
    const int64_t B = a.B;
    Rows r{B < kMR && (B == 1 || a.x_st == B * a.x_sb), 0, ceil_div(B, kMR), 0};
    if (r.across) {
      r.tend = a.lengths ? imax(tlo, imin(tlo + steps, a.lengths[0])) : tlo + steps;
      r.blocks = ceil_div((r.tend - tlo) * B, kMR);
    } else {
      r.blocks = steps * r.per_step;
    }
    return r;
  }

  // item (u, j) of member m's queue into m's gxs (its tiles start at u0)
  static void project_item(const LstmForwardArgs<T>& a, const Dir& dir, int64_t tlo, const Rows& rows, int64_t u,
                           int64_t j, int m, int64_t u0, int64_t u1) {
    const int64_t B = a.B, I = a.I, row_len = (u1 - u0) * 4 * W;
    const T* xrows;
    int64_t lda, row0, n;
    if (rows.across) {
      lda = B == 1 ? a.x_st : a.x_sb;
      row0 = j * kMR;
      n = imin(kMR, (rows.tend - tlo) * B - row0);
      xrows = a.x + tlo * a.x_st + row0 * lda;
    } else {
      const int64_t t = tlo + j / rows.per_step, b0 = j % rows.per_step * kMR;
      lda = a.x_sb;
      row0 = (t - tlo) * B + b0;
      n = imin(kMR, live_rows(a.lengths, B, t) - b0);
      xrows = a.x + t * a.x_st + b0 * a.x_sb;
    }
    if (n <= 0) return;
    T* out = dir.gxs + m * dir.gxs_size + (u - u0) * 4 * W;
    with_rows(static_cast<int>(n), [&](auto MRc) {
      constexpr int mr = decltype(MRc)::value;
      R acc[mr][4];
      micro<V, mr, 4>(xrows, lda, dir.wi + u * I * 4 * W, I, acc);
      for (int r = 0; r < mr; ++r)
        for (int g = 0; g < 4; ++g) V::store(out + (row0 + r) * row_len + g * W, acc[r][g]);
    });
  }

  // The queue word's items left, and a claim on it: the owner's from the front, another member's from the
  // back while two or more are left. False when there is none to take.
  static int64_t items_left(int64_t w) { return (w >> 32) - (w & 0xffffffff); }
  static bool claim(int64_t* word, bool back, int64_t& item) {
    int64_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    do {
      if (items_left(w) < (back ? 2 : 1)) return false;
      item = back ? (w >> 32) - 1 : w & 0xffffffff;
    } while (!__atomic_compare_exchange_n(word, &w, back ? w - (int64_t(1) << 32) : w + 1, false, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));
    return true;
  }

  static void project_chunk(const LstmForwardArgs<T>& a, const Dir& dir, int64_t tlo, int64_t steps, int idx,
                            int size) {
    const int64_t tiles = ceil_div(a.H, W);
    const Rows rows = chunk_rows(a, tlo, steps);
    auto range = [&](int m, int64_t& u0, int64_t& u1) { split(tiles, size, m, u0, u1); };
    int64_t u0, u1;
    range(idx, u0, u1);
    const int64_t total = (u1 - u0) * rows.blocks;
    if (size == 1 || total >= (int64_t(1) << 31)) {  // (the queue word holds 31-bit counts)
      for (int64_t i = 0; i < total; ++i)
        project_item(a, dir, tlo, rows, u0 + i / rows.blocks, i % rows.blocks, idx, u0, u1);
      return;
    }
    int64_t* mine = dir.queues + idx * kSlot;  // [0] the word, [1] items done
    __atomic_store_n(mine + 1, int64_t(0), __ATOMIC_RELAXED);
    __atomic_store_n(mine, total << 32, __ATOMIC_RELEASE);
    int64_t done = 0, i;
    for (; claim(mine, false, i); ++done)  // own items
      project_item(a, dir, tlo, rows, u0 + i / rows.blocks, i % rows.blocks, idx, u0, u1);
    __atomic_fetch_add(mine + 1, done, __ATOMIC_RELEASE);
    for (;;) {  // others' items, from the fullest queue
      const int v = fullest_queue(size, idx, [&](int m) {
        return items_left(__atomic_load_n(dir.queues + m * kSlot, __ATOMIC_RELAXED));
      });
      if (v < 0) break;
      int64_t* theirs = dir.queues + v * kSlot;
      if (!claim(theirs, true, i)) continue;
      note_work_taken();
      int64_t v0, v1;
      range(v, v0, v1);
      project_item(a, dir, tlo, rows, v0 + i / rows.blocks, i % rows.blocks, v, v0, v1);
      __atomic_fetch_add(theirs + 1, int64_t(1), __ATOMIC_RELEASE);
    }
    for (int spin = 0; __atomic_load_n(mine + 1, __ATOMIC_ACQUIRE) < total; ++spin) spin_wait(spin);  // taken items
  }

  static void worker(void* vctx, int tid, int n) {
    Ctx& ctx = *static_cast<Ctx*>(vctx);
    int group, idx, size;
    ctx.team.member(tid, n, group, idx, size);
    for (int d = 0; d < ctx.ndirs; ++d)
      if (ctx.team.groups == 1 || d == group) direction(ctx.dir[d], idx, size);
  }

  static void direction(const Dir& dir, int idx, int size) {
    const LstmForwardArgs<T>& a = *dir.a;
    const int64_t T_ = a.T, B = a.B, H = a.H, P = a.P, KP = P ? P : H, tiles = ceil_div(H, W);
    int64_t u0, u1, q0 = 0, q1 = 0;
    split(tiles, size, idx, u0, u1);
    if (P) split(ceil_div(P, W), size, idx, q0, q1);
    // pack this thread's slices of W_hh and W_ih (first touch by the thread that reuses them every step)
    for (int64_t u = u0; u < u1; ++u) {
      pack_gate_tile(a.w_hh, H, KP, u, dir.wp + u * KP * 4 * W);
      if (a.x) pack_gate_tile(a.w_ih, H, a.I, u, dir.wi + u * a.I * 4 * W);
    }
    for (int64_t q = q0; q < q1; q += kGroup) {  // and of W_hr^T: outputs [q W, ...) of the projection
      const int nv = static_cast<int>(imin(kGroup, q1 - q));
      T* dst = dir.wr + q * H * W;
      for (int64_t k = 0; k < H; ++k)
        for (int v = 0; v < nv; ++v)
          for (int l = 0; l < W; ++l) {
            int64_t p = (q + v) * W + l;
            dst[(k * nv + v) * W + l] = p < P ? a.w_hr[p * H + k] : T(0);
          }
    }
    // c lives in c_n (each thread owns its units' columns). With regularisation or a projection, h_n
    // holds the running h (zoneout mixes it in) and the recurrence reads h * rec_mask from hbuf, h0's
    // included; h's columns are then the projection's outputs the thread owns
    const bool regularised = a.zoneout() || a.rec_mask || P;
    const int64_t c0j = u0 * W, c1j = imin(u1 * W, H);                           // units
    const int64_t h0j = P ? q0 * W : c0j, h1j = P ? imin(q1 * W, P) : c1j;       // h columns
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = c0j; j < c1j; ++j) a.c_n[b * H + j] = a.c0 ? a.c0[b * H + j] : T(0);
      if (regularised)
        for (int64_t j = h0j; j < h1j; ++j) {
          const T h = a.h0 ? a.h0[b * KP + j] : T(0);
          a.h_n[b * KP + j] = h;
          dir.hbuf[B * KP + b * KP + j] = a.rec_mask ? h * a.rec_mask[b * KP + j] : h;
        }
    }
    if (regularised) dir.barrier->wait();  // every column of the first step's input is in hbuf[1]
    const T* h_first = regularised ? dir.hbuf + B * KP : (a.h0 ? a.h0 : dir.zeros);
    // the epilogues' lines are prefetched (epilogue_lines) under the backward loop's rule: arrays streamed from
    // beyond L2 (below that they stay cached: 100,1,128,128 ran ~3% slower with prefetches) and full row
    // blocks to hide them behind (1000,1,32,64 training: the list cost 5-7%, no prefetch 0.99-1.00x of the
    // earlier per-row prefetch). Same process against that earlier prefetch before each micro-kernel call:
    // (100,16,256,256) training 1.00-1.02x fused, 1.07-1.10x from gx; (100,64,512,512) 1.02x
    const int64_t streamed = T_ * B * H * ((a.gates ? 5 : 0) + (a.x ? 1 : 5)) * int64_t(sizeof(T));
    const bool prefetch = B >= kMR && streamed > (int64_t(1) << 20);
    T* gxs = a.x ? dir.gxs + idx * dir.gxs_size : nullptr;
    const int64_t gxs_row = (u1 - u0) * 4 * W;
    int64_t tlo = 0;  // the first step (in t) of the chunk in gxs

    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = a.reverse ? T_ - 1 - s : s;
      const T* hprev = s == 0 ? h_first : dir.hbuf + ((s - 1) & 1) * B * KP;
      T* hout = dir.hbuf + (s & 1) * B * KP;
      const bool last = s == T_ - 1;
      const int64_t live = live_rows(a.lengths, B, t);
      if (a.x && s % dir.chunk == 0) {  // this member's units of x W_ih^T for the next chunk of steps
        const int64_t steps = imin(dir.chunk, T_ - s);
        tlo = a.reverse ? t - steps + 1 : t;
        project_chunk(a, dir, tlo, steps, idx, size);
      }
      for (int64_t b = live; b < B; ++b) {  // absent sequences: state carried, output 0
        for (int64_t j = h0j; j < h1j; ++j) {
          hout[b * KP + j] = hprev[b * KP + j];
          a.y[t * a.y_st + b * a.y_sb + j] = T(0);
          if (last && !regularised) a.h_n[b * KP + j] = hprev[b * KP + j];
        }
      }
      // one row block streams the thread's whole W_hh slice from L2 each step; walking it backwards on
      // odd steps starts each step on the part the previous step left in L1
      const bool mirror = B <= kMR && ((s + a.step_offset) & 1);
      for (int64_t i = u0; i < u1; ++i) {
        const int64_t u = mirror ? u1 - 1 - (i - u0) : i;
        const T* wu = dir.wp + u * KP * 4 * W;
        const int64_t j0 = u * W;
        const int nv = static_cast<int>(imin(W, H - j0));
        for (int64_t b0 = 0; b0 < live; b0 += kMR) {
          with_rows(static_cast<int>(imin(kMR, live - b0)), [&](auto MRc) {
            constexpr int mr = decltype(MRc)::value;
            R acc[mr][4];
            const void* pf[kMaxLines];
            const int64_t npf = prefetch ? epilogue_lines(a, t, b0, mr, j0, nv, pf) : 0;
            if (mirror) micro<V, mr, 4, true>(hprev + b0 * KP, KP, wu, KP, acc, 1, pf, npf);
            else micro<V, mr, 4>(hprev + b0 * KP, KP, wu, KP, acc, 1, pf, npf);
            for (int r = 0; r < mr; ++r) {  // x W_ih^T: from this chunk's gxs (gates W apart) or gx (H apart)
              const int64_t b = b0 + r;
              const T* gp = a.x ? gxs + ((t - tlo) * B + b) * gxs_row + (u - u0) * 4 * W
                                : a.gx + t * a.gx_st + b * a.gx_sb + j0;
              step_epilogue(a, t, b, j0, nv, acc[r], gp, a.x ? W : H, hout, last, dir.hr);
            }
          });
        }
      }
      if (P) {  // the projection needs every unit of the step
        dir.barrier->wait();
        project(a, dir, t, live, q0, q1, hout);
      }
      if (!last) dir.barrier->wait();
    }
  }

  // h = W_hr hr for this thread's outputs, then zoneout / the mask as in step_epilogue
  static void project(const LstmForwardArgs<T>& a, const Dir& dir, int64_t t, int64_t live, int64_t q0, int64_t q1,
                      T* hout) {
    const int64_t H = a.H, P = a.P;
    const R one = V::set1(T(1));
    panel_products<V>(dir.hr, H, dir.wr, H, q0, q1, live, [&](int64_t b, int64_t q, R h) {
      const int64_t p0 = q * W;
      const int nl = static_cast<int>(imin(W, P - p0));
      if (a.zoneout()) {
        R zh = a.zoneout_h ? ld<V>(a.zoneout_h + (t * a.B + b) * P + p0, nl) : V::set1(a.zoneout_h_p);
        h = V::fma(zh, ld<V>(a.h_n + b * P + p0, nl), V::mul(V::sub(one, zh), h));
      }
      st<V>(hout + b * P + p0, a.rec_mask ? V::mul(h, ld<V>(a.rec_mask + b * P + p0, nl)) : h, nl);
      st<V>(a.y + t * a.y_st + b * a.y_sb + p0, h, nl);
      st<V>(a.h_n + b * P + p0, h, nl);
    });
  }

  // The cache lines the epilogues of rows [b0, b0 + mr) of units [j0, j0 + nv) touch at step t in arrays
  // that do not stay in cache between steps (gx[t], y[t] and, training, the saved gates and cell): the
  // micro-kernel before those epilogues prefetches them in its last iterations. Returns how many.
  static constexpr int kMaxLines = kMR * 10 * lines_per_run<T>(W);
  static int64_t epilogue_lines(const LstmForwardArgs<T>& a, int64_t t, int64_t b0, int mr, int64_t j0, int nv,
                                const void** out) {
    const int64_t H = a.H, j1 = j0 + nv;
    int64_t n = 0;
    for (int64_t b = b0; b < b0 + mr; ++b) {
      for (int g = 0; g < 4 && a.gx; ++g) append_lines(a.gx + t * a.gx_st + b * a.gx_sb + g * H, j0, j1, out, n);
      append_lines(a.y + t * a.y_st + b * a.y_sb, j0, j1, out, n);
      if (!a.gates) continue;
      for (int g = 0; g < 4; ++g) append_lines(a.gates + (t * a.B + b) * 4 * H + g * H, j0, j1, out, n);
      append_lines(a.cell + (t * a.B + b) * H, j0, j1, out, n);
    }
    return n;
  }

  // gates -> activations -> cell update, in registers; writes h (and, training, gates and c)
  // gx: this row's x W_ih^T for the tile's units, gate g at gx + g * gstride
  static FASTLSTM_INLINE void step_epilogue(const LstmForwardArgs<T>& a, int64_t t, int64_t b, int64_t j0,
                                            int nv, R* acc, const T* gx, int64_t gstride, T* hout, bool last,
                                            T* hr) {
    const int64_t H = a.H;
    R pre[4];
    for (int g = 0; g < 4; ++g) {
      pre[g] = V::add(acc[g], ld<V>(gx + g * gstride, nv));
      if (a.bias) pre[g] = V::add(pre[g], ld<V>(a.bias + g * H + j0, nv));
    }
    R ig = Math<V>::sigmoid(pre[0]);
    R fg = Math<V>::sigmoid(pre[1]);
    R gg = Math<V>::tanh(pre[2]);
    R og = Math<V>::sigmoid(pre[3]);
    T* cp = a.c_n + b * H + j0;
    R cprev = ld<V>(cp, nv);
    R c = V::fma(fg, cprev, V::mul(ig, gg));
    R h = V::mul(og, Math<V>::tanh(c));
    const int64_t at = (t * a.B + b) * H + j0;
    if (a.zoneout()) {  // keep c[t-1] (and, without a projection, h[t-1]) with weights zc, zh
      const R one = V::set1(T(1));
      R zc = a.zoneout_c ? ld<V>(a.zoneout_c + at, nv) : V::set1(a.zoneout_c_p);
      c = V::fma(zc, cprev, V::mul(V::sub(one, zc), c));
      if (!a.P) {
        R zh = a.zoneout_h ? ld<V>(a.zoneout_h + at, nv) : V::set1(a.zoneout_h_p);
        h = V::fma(zh, ld<V>(a.h_n + b * H + j0, nv), V::mul(V::sub(one, zh), h));
      }
    }
    st<V>(cp, c, nv);
    if (a.P) {  // the projection (project()) forms h from every unit's o * tanh(c~)
      st<V>(hr + b * H + j0, h, nv);
      if (a.h_raw) st<V>(a.h_raw + at, h, nv);
    } else {
      st<V>(hout + b * H + j0, a.rec_mask ? V::mul(h, ld<V>(a.rec_mask + b * H + j0, nv)) : h, nv);
      st<V>(a.y + t * a.y_st + b * a.y_sb + j0, h, nv);
      if (last || a.zoneout() || a.rec_mask) st<V>(a.h_n + b * H + j0, h, nv);
    }
    if (a.gates) {
      T* gs = a.gates + (t * a.B + b) * 4 * H + j0;
      st<V>(gs, ig, nv);
      st<V>(gs + H, fg, nv);
      st<V>(gs + 2 * H, gg, nv);
      st<V>(gs + 3 * H, og, nv);
      st<V>(a.cell + at, c, nv);
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Backward recurrent loop: for each step in reverse processing order,
//   dh  = dy[t] + dG[t+1] W_hh            (the GEMM; dh_n at the first step)
//   dc  = dc' + dh o (1 - tanh^2 c)        dc' = f[t+1] dc[t+1]
//   dG  = [dc gg i(1-i), dc c[t-1] f(1-f), dc i (1-gg^2), dh tanh(c) o(1-o)]
// and after the last, dh0 = dG[first] W_hh, dc0 = f[first] dc[first]. With dbias, each thread also sums
// its columns of dG into double accumulators (steps in processing order, rows in order: the same sum
// for any thread count).
template <class V>
struct Backward {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int W = V::W;
  static constexpr int kGroup = kPanelGroup;  // tiles per micro-kernel call (NV)

  struct Dir {
    const LstmBackwardArgs<T>* a;
    T* wp;        // packed W_hh columns: per group of up to 4 tiles of h's columns, [4H][nv][W]
    T* wr;        // packed W_hr columns (P > 0): per group of up to 4 tiles of units, [P][nv][W]
    double* dbs;  // [4H] running bias-gradient sums (each thread owns its units' columns)
    T* carry;     // [B, KP] zoneout's direct path zh * dh[t] into the step before (own columns)
    T* dhp;       // [B, P] the step's gradient at W_hr h_raw (P > 0)
    SpinBarrier* barrier;
  };
  struct Ctx {
    Dir dir[2];
    int ndirs;
    TeamLayout team;
  };

  static void run(const LstmBackwardArgs<T>* dirs, int ndirs, int num_threads) {
    const int64_t B = dirs[0].B, H = dirs[0].H, P = dirs[0].P, KP = P ? P : H, tiles = ceil_div(H, W);
    const int64_t htiles = ceil_div(KP, W);
    int n = choose_threads(2.0 * B * 4 * H * KP * ndirs + 2.0 * B * P * H * ndirs, tiles * ndirs, num_threads,
                           kStepMinFlopsPerThread);
    Parallel par(n);
    n = par.size();
    Ctx ctx;
    ctx.ndirs = ndirs;
    ctx.team.groups = (ndirs == 2 && n >= 2) ? 2 : 1;
    const bool zo = dirs[0].zoneout();
    Scratch<T> wp(ndirs * htiles * W * 4 * H), wr(P ? ndirs * tiles * W * P : 0), carry(zo ? ndirs * B * KP : 0),
        dhp(P ? ndirs * B * P : 0);
    Scratch<double> dbs(ndirs * 4 * H);
    SpinBarrier b0(ctx.team.groups == 2 ? n / 2 : n), b1(n - n / 2);
    for (int d = 0; d < ndirs; ++d)
      ctx.dir[d] = Dir{&dirs[d], wp.p + d * htiles * W * 4 * H, P ? wr.p + d * tiles * W * P : nullptr,
                       dbs.p + d * 4 * H, zo ? carry.p + d * B * KP : nullptr, P ? dhp.p + d * B * P : nullptr,
                       d == 1 && ctx.team.groups == 2 ? &b1 : &b0};
    par.run(&worker, &ctx);
  }

  static void worker(void* vctx, int tid, int n) {
    Ctx& ctx = *static_cast<Ctx*>(vctx);
    int group, idx, size;
    ctx.team.member(tid, n, group, idx, size);
    for (int d = 0; d < ctx.ndirs; ++d)
      if (ctx.team.groups == 1 || d == group) direction(ctx.dir[d], idx, size);
  }

  // [k][nv][W] panels of the columns [c W, ...) of a [rows, cols] matrix, per group of up to 4 tiles
  static void pack_columns(const T* m, int64_t rows, int64_t cols, int64_t t0, int64_t t1, T* out) {
    for (int64_t c = t0; c < t1; c += kGroup) {
      const int nv = static_cast<int>(imin(kGroup, t1 - c));
      T* dst = out + c * rows * W;
      for (int64_t k = 0; k < rows; ++k)
        for (int v = 0; v < nv; ++v)
          for (int l = 0; l < W; ++l) {
            const int64_t j = (c + v) * W + l;
            dst[(k * nv + v) * W + l] = j < cols ? m[k * cols + j] : T(0);
          }
    }
  }

  static void direction(const Dir& dir, int idx, int size) {
    const LstmBackwardArgs<T>& a = *dir.a;
    const int64_t T_ = a.T, B = a.B, H = a.H, P = a.P, KP = P ? P : H, K = 4 * H, tiles = ceil_div(H, W);
    int64_t u0, u1, q0, q1;  // this thread's tiles of units, and of h's columns (the same without P)
    split(tiles, size, idx, u0, u1);
    if (P) split(ceil_div(P, W), size, idx, q0, q1);
    else q0 = u0, q1 = u1;
    pack_columns(a.w_hh, K, KP, q0, q1, dir.wp);
    if (P) pack_columns(a.w_hr, P, H, u0, u1, dir.wr);
    const int64_t c0j = u0 * W, c1j = imin(u1 * W, H), h0j = q0 * W, h1j = imin(q1 * W, KP);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = c0j; j < c1j; ++j) a.dc0[b * H + j] = a.dc_n ? a.dc_n[b * H + j] : T(0);
      if (dir.carry)
        for (int64_t j = h0j; j < h1j; ++j) dir.carry[b * KP + j] = T(0);
    }
    double* dbs = a.dbias ? dir.dbs : nullptr;
    if (dbs)
      for (int g = 0; g < 4; ++g)
        for (int64_t j = c0j; j < c1j; ++j) dbs[g * H + j] = 0.0;

    // the epilogue's lines are prefetched (epilogue_lines) when they stream from beyond L2 and a micro-kernel
    // call has full row blocks to hide them behind. Measured (same process): at B = 1 the list costs more
    // than it saves, 0.87-0.93x at (1000,1,32,64) and (100,1,128,128); (100,16,256,256) 1.05x at 1 thread and
    // 0.99-1.02x at 2; (100,64,512,512) 1.04x and (50,32,1024,1024) 1.02x at 2
    const bool prefetch = !P && B >= kMR && T_ * B * H * 10 * int64_t(sizeof(T)) > (int64_t(1) << 20);
    int64_t tprev = -1, live_prev = 0;  // the step processed last (its dG feeds this step's dh), its rows
    for (int64_t s = 0; s <= T_; ++s) {
      const int64_t t = s == T_ ? -1 : (a.reverse ? s : T_ - 1 - s);
      const int64_t live = live_rows(a.lengths, B, t), rows = imax(live, live_prev);
      if (t >= 0) {  // absent sequences: dG = 0 (read by the next step and the weight-gradient GEMMs)
        for (int64_t b = live; b < B; ++b) {
          for (int g = 0; g < 4; ++g)
            for (int64_t j = c0j; j < c1j; ++j) a.dg[t * a.dg_st + b * a.dg_sb + g * H + j] = T(0);
          if (P && a.dh_proj)
            for (int64_t j = h0j; j < h1j; ++j) a.dh_proj[(t * B + b) * P + j] = T(0);
        }
      }
      // dh over h's columns: dG[tprev] W_hh, then the mask, zoneout's carry, dy and dh_n
      const int64_t groups = ceil_div(q1 - q0, kGroup);
      const bool mirror = B <= kMR && (s & 1);  // as in Forward: start each step on what L1 still holds
      for (int64_t i = 0; i < groups; ++i) {
        const int64_t q = q0 + (mirror ? groups - 1 - i : i) * kGroup;
        const int nvt = static_cast<int>(imin(kGroup, q1 - q));
        for (int64_t b0 = 0; b0 < rows; b0 += kMR) {
          const int m = static_cast<int>(imin(kMR, rows - b0));
          with_vecs(nvt, [&](auto NVc) {
            with_rows(m, [&](auto MRc) {
              constexpr int nv = decltype(NVc)::value, mr = decltype(MRc)::value;
              R acc[mr][nv];
              if (tprev >= 0 && b0 < live_prev) {  // rows past live_prev read zeroed dG
                const T* dgp = a.dg + tprev * a.dg_st + b0 * a.dg_sb;
                const void* pf[kMaxLines];
                const int64_t npf = prefetch ? epilogue_lines(a, t, b0, imin(b0 + m, live), q * W,
                                                              imin((q + nvt) * W, H), pf) : 0;
                if (mirror) micro<V, mr, nv, true>(dgp, a.dg_sb, dir.wp + q * K * W, K, acc, 1, pf, npf);
                else micro<V, mr, nv>(dgp, a.dg_sb, dir.wp + q * K * W, K, acc, 1, pf, npf);
              } else {
                for (int r = 0; r < mr; ++r)
                  for (int v = 0; v < nv; ++v) acc[r][v] = V::zero();
              }
              for (int r = 0; r < mr; ++r) {
                const int64_t b = b0 + r;
                for (int v = 0; v < nv; ++v) {
                  const int64_t j0 = (q + v) * W;
                  const int nl = static_cast<int>(imin(W, KP - j0));
                  R dh = acc[r][v];  // through W_hh; then the recurrence's mask and zoneout's direct path
                  if (a.rec_mask) dh = V::mul(dh, ld<V>(a.rec_mask + b * KP + j0, nl));
                  if (dir.carry) dh = V::add(dh, ld<V>(dir.carry + b * KP + j0, nl));
                  if (b >= live) {  // b's first forward step was tprev: what flows back from it is dh0
                    st<V>(a.dh0 + b * KP + j0, dh, nl);
                    continue;
                  }
                  // dh_n enters at the sequence's last step in forward processing order
                  const int64_t last_fwd = a.reverse ? 0 : (a.lengths ? a.lengths[b] : T_) - 1;
                  if (a.dh_n && t == last_fwd) dh = V::add(dh, ld<V>(a.dh_n + b * KP + j0, nl));
                  if (!P) {
                    step_epilogue(a, t, b, j0, nl, dh, dbs, dir.carry, false);
                    continue;
                  }
                  if (a.dy) dh = V::add(dh, ld<V>(a.dy + t * a.dy_st + b * a.dy_sb + j0, nl));
                  if (a.zoneout_h) {  // h[t] = zh h[t-1] + (1 - zh) W_hr h_raw
                    R zh = ld<V>(a.zoneout_h + (t * B + b) * P + j0, nl);
                    st<V>(dir.carry + b * P + j0, V::mul(zh, dh), nl);
                    dh = V::mul(V::sub(V::set1(T(1)), zh), dh);
                  }
                  st<V>(dir.dhp + b * P + j0, dh, nl);
                  if (a.dh_proj) st<V>(a.dh_proj + (t * B + b) * P + j0, dh, nl);
                }
              }
            });
          });
        }
      }
      if (P && t >= 0) {  // through the projection: d h_raw = dh W_hr for this thread's units
        dir.barrier->wait();
        panel_products<V>(dir.dhp, P, dir.wr, P, u0, u1, live, [&](int64_t b, int64_t u, R dh_raw) {
          const int64_t j0 = u * W;
          step_epilogue(a, t, b, j0, static_cast<int>(imin(W, H - j0)), dh_raw, dbs, nullptr, true);
        });
      }
      if (t < 0) break;
      tprev = t;
      live_prev = live;
      dir.barrier->wait();
    }
    if (dbs)
      for (int g = 0; g < 4; ++g)
        for (int64_t j = c0j; j < c1j; ++j) a.dbias[g * H + j] = static_cast<T>(dbs[g * H + j]);
  }

  // The cache lines the step epilogue of rows [b0, b1) and units [j0, j1) touches at step t (none before
  // the first step or past the last): its gates, cells and dy were written or read a whole pass ago and
  // dG's lines are cold too, so they come from L3 or memory; the micro-kernel whose result that epilogue
  // takes prefetches them in its last iterations. Returns how many it wrote to out.
  static constexpr int kMaxLines = kMR * 11 * lines_per_run<T>(kGroup * W);
  static int64_t epilogue_lines(const LstmBackwardArgs<T>& a, int64_t t, int64_t b0, int64_t b1, int64_t j0,
                                int64_t j1, const void** out) {
    if (t < 0) return 0;
    const int64_t H = a.H, B = a.B;
    int64_t n = 0;
    const int64_t tp = a.reverse ? t + 1 : t - 1;
    for (int64_t b = b0; b < b1; ++b) {
      for (int g = 0; g < 4; ++g) {
        append_lines(a.gates + (t * B + b) * 4 * H + g * H, j0, j1, out, n);
        append_lines(a.dg + t * a.dg_st + b * a.dg_sb + g * H, j0, j1, out, n);
      }
      if (!a.zoneout()) append_lines(a.cell + (t * B + b) * H, j0, j1, out, n);
      if (tp >= 0 && tp < (a.lengths ? a.lengths[b] : a.T)) append_lines(a.cell + (tp * B + b) * H, j0, j1, out, n);
      if (a.dy) append_lines(a.dy + t * a.dy_st + b * a.dy_sb, j0, j1, out, n);
    }
    return n;
  }

  // p[0..n) += v's first n lanes, in double
  static FASTLSTM_INLINE void add_wide(double* p, R v, int n) {
    if (n == W) {
      V::add_f64(p, v);
      return;
    }
    alignas(64) T lanes[W];
    V::store(lanes, v);
    for (int l = 0; l < n; ++l) p[l] += static_cast<double>(lanes[l]);
  }

  static FASTLSTM_INLINE void step_epilogue(const LstmBackwardArgs<T>& a, int64_t t, int64_t b, int64_t j0,
                                            int nl, R dh, double* dbs, T* carry, bool h_done) {
    // h_done: dh is already dL/d(o tanh(c~)) (a projection's second phase applied dy and zoneout on h)
    const int64_t H = a.H, B = a.B;
    const R one = V::set1(T(1));
    if (a.dy && !h_done) dh = V::add(dh, ld<V>(a.dy + t * a.dy_st + b * a.dy_sb + j0, nl));
    const T* gs = a.gates + (t * B + b) * 4 * H + j0;
    R ig = ld<V>(gs, nl), fg = ld<V>(gs + H, nl), gg = ld<V>(gs + 2 * H, nl), og = ld<V>(gs + 3 * H, nl);
    const int64_t tp = a.reverse ? t + 1 : t - 1;  // previous step in forward processing order
    const bool had_prev = tp >= 0 && tp < (a.lengths ? a.lengths[b] : a.T);
    R cprev = had_prev ? ld<V>(a.cell + (tp * B + b) * H + j0, nl)
                       : (a.c0 ? ld<V>(a.c0 + b * H + j0, nl) : V::zero());
    T* dcp = a.dc0 + b * H + j0;
    R dc_in = ld<V>(dcp, nl);                  // dL/dc[t] from the steps after
    R c, dh_new = dh, dc_state = dc_in, zc = V::zero();
    if (a.zoneout()) {
      // c~ = f c[t-1] + i g (the cell saves the state after zoneout); h[t] = zh h[t-1] + (1-zh) o tanh(c~)
      const int64_t at = (t * B + b) * H + j0;
      zc = a.zoneout_c ? ld<V>(a.zoneout_c + at, nl) : V::zero();
      c = V::fma(fg, cprev, V::mul(ig, gg));
      dc_state = V::mul(V::sub(one, zc), dc_in);
      if (!h_done) {
        R zh = a.zoneout_h ? ld<V>(a.zoneout_h + at, nl) : V::zero();
        dh_new = V::mul(V::sub(one, zh), dh);
        st<V>(carry + b * H + j0, V::mul(zh, dh), nl);
      }
    } else {
      c = ld<V>(a.cell + (t * B + b) * H + j0, nl);
    }
    R tc = Math<V>::tanh(c);
    R dc = V::fma(V::mul(dh_new, og), V::fnma(tc, tc, one), dc_state);  // dL/dc~
    R dgo = V::mul(V::mul(dh_new, tc), V::mul(og, V::sub(one, og)));
    R dgi = V::mul(V::mul(dc, gg), V::mul(ig, V::sub(one, ig)));
    R dgg = V::mul(V::mul(dc, ig), V::fnma(gg, gg, one));
    R dgf = V::mul(V::mul(dc, cprev), V::mul(fg, V::sub(one, fg)));
    st<V>(dcp, a.zoneout() ? V::fma(zc, dc_in, V::mul(dc, fg)) : V::mul(dc, fg), nl);
    T* out = a.dg + t * a.dg_st + b * a.dg_sb + j0;
    st<V>(out, dgi, nl);
    st<V>(out + H, dgf, nl);
    st<V>(out + 2 * H, dgg, nl);
    st<V>(out + 3 * H, dgo, nl);
    if (dbs) {
      add_wide(dbs + j0, dgi, nl);
      add_wide(dbs + H + j0, dgf, nl);
      add_wide(dbs + 2 * H + j0, dgg, nl);
      add_wide(dbs + 3 * H + j0, dgo, nl);
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// GEMM: C (+)= op(A) op(B) (+ bias), and C2 (+)= op(A) B2 in the same pass where asked (GemmArgs). Blocked
// over K (kKc) so a packed B panel [kKc][4W] stays in L2 while every row block of the thread's M range
// streams past it; op(A) is read in place (kMR rows) where its rows are, otherwise packed per K block into
// k-major row blocks (one sequential stream per call). The panels of B2 follow those of B: both products
// share the packed A. Each thread's share (rows x panels) is a queue of items that the others may take
// from once their own is empty (worker).
template <class V>
struct Gemm {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int W = V::W;
  static constexpr int NV = 4;
  static constexpr int64_t NR = NV * W;                 // columns per panel
  static constexpr int64_t kKc = 262144 / (NR * sizeof(T));  // 256 KiB of packed B per K block (L2)

  // one product's right-hand side and output: B's row for A's storage row k is b + (k - lo) ldb for k in
  // [lo, hi), zero elsewhere (the first product: lo = 0, hi = no limit)
  struct Part {
    const T* b;
    int64_t ldb, lo, hi;
    T* c;
    int64_t ldc, N;
    const T* bias;
  };

  struct Ctx {
    const GemmArgs<T>* g;
    Part part[2];
    int64_t panels0;   // panels of the first product; the second's follow
    int64_t panels;    // of both
    int pm, pn;        // thread grid: thread t owns row range t / pn (of pm) and panel range t % pn (of pn)
    int64_t chunks;    // work items per panel of a row range (a thread's queue: its panels x chunks, panel-major)
    T* bpack;          // per thread [kKc][NR]
    T* apack;          // per thread [mrange][kKc], A packed by pack_a (unless a_in_place)
    int64_t mrange;    // rows of the largest M range
    int64_t* next;     // per thread, kSlot apart (a cache line each): the next unclaimed item of its queue, and
                       // the K block its rows of A are packed for (+1); atomic
    SpinBarrier* barrier;
    bool a_in_place;   // op(A) = A, read where it lies (kMR rows lda apart)
    bool prefetch_c;   // the epilogue's lines of C prefetched by the micro-kernel (C beyond L2)
  };

  static void run(const GemmArgs<T>& g, int num_threads) {
    Ctx ctx{&g,
            {Part{g.b, g.ldb, 0, INT64_MAX, g.c, g.ldc, g.N, g.bias},
             Part{g.b2, g.ldb2, g.b2_lo, g.b2_hi, g.c2, g.ldc2, g.N2, nullptr}},
            ceil_div(g.N, NR), ceil_div(g.N, NR) + ceil_div(g.N2, NR), 1, 1, 0, nullptr, nullptr, 0, nullptr,
            nullptr, false, false};
    const int64_t panels = ctx.panels, mblocks = ceil_div(g.M, kMR);
    if (g.a_sums)
      for (int64_t m = 0; m < g.M; ++m) g.a_sums[m] = 0.0;
    if (g.M == 0 || panels == 0) return;
    if (g.K == 0) {
      if (!g.accumulate)
        for (const Part& pt : ctx.part)
          for (int64_t m = 0; m < g.M; ++m)
            for (int64_t j = 0; j < pt.N; ++j) pt.c[crow(g, m) * pt.ldc + j] = pt.bias ? pt.bias[j] : T(0);
      return;
    }
    int n = choose_threads(2.0 * g.M * (g.N + g.N2) * g.K, panels * mblocks, num_threads, kGemmMinFlopsPerThread);
    Parallel par(n);
    n = par.size();
    // the thread grid (pm x pn) that minimises a thread's multiply work plus its packing: each thread
    // packs its own rows of A and its own panels of B, so splitting the smaller side duplicates less
    double best = -1;
    for (int pn = 1; pn <= n; ++pn) {
      const int pm = n / pn;
      const double rows = double(ceil_div(mblocks, pm) * kMR), cols = double(ceil_div(panels, pn) * NR);
      const double cost = rows * cols / (2.0 * W) + rows + cols;  // per k: FMAs / 2W lanes vs packed elements
      if (best < 0 || cost < best) { best = cost; ctx.pm = pm; ctx.pn = pn; }
    }
    // A with its rows in place is not packed unless many panels stream past the same rows: one pass over A
    // pays off there. Same process against always packing: 4-16 panels a thread (dx = dG W_ih at every
    // benchmark shape, x W_ih^T at H = 256) 1.01-1.47x; 32 (x W_ih^T at B = 64, I = H = 512) 0.98x
    ctx.a_in_place = !g.trans_a && !g.m_rows && ceil_div(panels, ctx.pn) <= 16;  // (a_sums: trans_a, packed)
    // Same process against no prefetch: (100,16,256,256)'s products 1.01-1.05x, (100,64,512,512)'s
    // 1.02-1.03x; a C that fits in L2 has no misses to hide (B = 1 training steps with the list: 0.993x)
    ctx.prefetch_c = g.M * (g.N + g.N2) * int64_t(sizeof(T)) > (int64_t(1) << 20);
    ctx.mrange = ceil_div(mblocks, ctx.pm) * kMR;
    ctx.chunks = imin(4, ceil_div(ctx.mrange, kMR));
    // all scratch is allocated here: an exception must never leave a worker thread
    Scratch<T> bpack(n * kKc * NR), apack(ctx.a_in_place ? 0 : n * ctx.mrange * kKc);
    Scratch<int64_t> next(n * kSlot);
    for (int64_t i = 0; i < n * kSlot; ++i) next.p[i] = 0;
    SpinBarrier barrier(n);
    ctx.bpack = bpack.p;
    ctx.apack = apack.p;
    ctx.next = next.p;
    ctx.barrier = &barrier;
    par.run(&worker, &ctx);
  }

  // Thread t's share: its rows [m0, m1) and panels [p0, p1) of the grid
  struct Share {
    int64_t m0, m1, p0, p1;
    int64_t items(const Ctx& ctx) const { return m0 < m1 ? (p1 - p0) * ctx.chunks : 0; }
  };
  static Share share(const Ctx& ctx, int t) {
    Share s;
    int64_t mb0, mb1;
    split(ceil_div(ctx.g->M, kMR), ctx.pm, t / ctx.pn, mb0, mb1);
    split(ctx.panels, ctx.pn, t % ctx.pn, s.p0, s.p1);
    s.m0 = mb0 * kMR;
    s.m1 = imin(mb1 * kMR, ctx.g->M);
    return s;
  }

  // Each thread works through its own queue of items (a panel x a chunk of its rows, in the order of a static
  // split) and then takes items from the queue with the most left, while at least two are (a stolen item
  // packs its panel again): cores that run at different speeds (a busy neighbour on a shared host, big and
  // little cores) finish a K block together, and every element of C is still computed by one item, in one
  // order. GCC's atomic builtins: no inline library code shared across the ISAs' translation units.
  static void worker(void* vctx, int tid, int n) {
    const Ctx& ctx = *static_cast<const Ctx*>(vctx);
    const GemmArgs<T>& g = *ctx.g;
    const Share own = share(ctx, tid);
    T* bpack = ctx.bpack + tid * kKc * NR;
    for (int64_t k0 = 0, kblock = 0; k0 < g.K; k0 += kKc, ++kblock) {
      const int64_t kb = imin(kKc, g.K - k0);
      const bool first = k0 == 0 && !g.accumulate;
      if (kblock > 0) ctx.barrier->wait();  // every item of the block before is done: queues and A reusable
      __atomic_store_n(ctx.next + tid * kSlot, int64_t(0), __ATOMIC_RELAXED);
      // (threads that share an M range pack the same rows: the first of them sums them)
      if (!ctx.a_in_place && own.m0 < own.m1)
        pack_a(g, own.m0, own.m1, k0, kb, ctx.apack + tid * ctx.mrange * kKc, tid % ctx.pn == 0 ? g.a_sums : nullptr);
      __atomic_store_n(ctx.next + tid * kSlot + 1, kblock + 1, __ATOMIC_RELEASE);
      int64_t have = -1;  // the panel in bpack
      for (int v = tid;;) {  // v: the queue this thread takes from, its own and then the fullest other one
        const Share sh = v == tid ? own : share(ctx, v);
        // (another's while two or more items are left: its owner, with the panel packed, would finish a last
        // one sooner than a helper that packs it again)
        if (v == tid || sh.items(ctx) - __atomic_load_n(ctx.next + v * kSlot, __ATOMIC_RELAXED) >= 2) {
          const int64_t item = __atomic_fetch_add(ctx.next + v * kSlot, 1, __ATOMIC_RELAXED);
          if (item < sh.items(ctx)) {
            if (v != tid) note_work_taken();
            run_item(ctx, sh, v, item, k0, kb, first, bpack, have);
            continue;
          }
        }
        // the queue is empty: the one with the most items left, if two or more are and its A is packed
        v = fullest_queue(n, tid, [&](int u) {
          if (__atomic_load_n(ctx.next + u * kSlot + 1, __ATOMIC_ACQUIRE) != kblock + 1) return int64_t(0);
          return share(ctx, u).items(ctx) - __atomic_load_n(ctx.next + u * kSlot, __ATOMIC_RELAXED);
        });
        if (v < 0) break;
      }
    }
  }

  // item `item` of thread v's queue: panel p0 + item / chunks, the item % chunks-th chunk of v's rows
  static void run_item(const Ctx& ctx, const Share& sh, int v, int64_t item, int64_t k0, int64_t kb, bool first,
                       T* bpack, int64_t& have) {
    const GemmArgs<T>& g = *ctx.g;
    const int64_t p = sh.p0 + item / ctx.chunks, c = item % ctx.chunks;
    const int64_t blocks = ceil_div(sh.m1 - sh.m0, kMR);
    int64_t b0, b1;
    split(blocks, static_cast<int>(ctx.chunks), static_cast<int>(c), b0, b1);
    const int64_t m0 = sh.m0 + b0 * kMR, m1 = imin(sh.m0 + b1 * kMR, sh.m1);
    if (m0 >= m1) return;  // (a share of fewer row blocks than chunks)
    const bool second = p >= ctx.panels0;
    const Part& pt = ctx.part[second];
    const int64_t c0 = (second ? p - ctx.panels0 : p) * NR;  // the panel's first column in its product
    if (p != have) pack_b(g, pt, k0, kb, c0, bpack);
    have = p;
    const T* apack = ctx.apack + v * ctx.mrange * kKc;  // v's rows, from sh.m0
    // a last, narrower panel takes only the vectors it has (N = 32 would otherwise waste half the FMAs)
    with_vecs(static_cast<int>(panel_vecs(pt, c0)), [&](auto NVc) {
      constexpr int nv = decltype(NVc)::value;
      for (int64_t m = m0; m < m1; m += kMR) {
        with_rows(static_cast<int>(imin(kMR, m1 - m)), [&](auto MRc) {
          constexpr int mr = decltype(MRc)::value;
          R acc[mr][nv];
          // the tile of C the epilogue reads and writes, prefetched in the micro-kernel's last iterations
          // where C is too big to stay in L2
          const void* pf[kMR * lines_per_run<T>(NR)];
          int64_t npf = 0;
          if (ctx.prefetch_c)
            for (int r = 0; r < mr; ++r) append_lines(pt.c + crow(g, m + r) * pt.ldc, c0, imin(c0 + NR, pt.N), pf, npf);
          if (ctx.a_in_place) micro<V, mr, nv>(g.a + m * g.lda + k0, g.lda, bpack, kb, acc, 1, pf, npf);
          else micro<V, mr, nv>(apack + (m - sh.m0) * kb, 1, bpack, kb, acc, kMR, pf, npf);
          for (int v2 = 0; v2 < nv; ++v2) {
            const int64_t col = c0 + v2 * W;
            const int nl = static_cast<int>(imin(W, pt.N - col));
            R add = (first && pt.bias) ? ld<V>(pt.bias + col, nl) : V::zero();
            for (int r = 0; r < mr; ++r) {
              T* cp = pt.c + crow(g, m + r) * pt.ldc + col;
              st<V>(cp, V::add(acc[r][v2], first ? add : ld<V>(cp, nl)), nl);
            }
          }
        });
      }
    });
  }

  static FASTLSTM_INLINE int64_t crow(const GemmArgs<T>& g, int64_t m) { return g.m_rows ? g.m_rows[m] : m; }
  static FASTLSTM_INLINE int64_t krow(const GemmArgs<T>& g, int64_t k) { return g.k_rows ? g.k_rows[k] : k; }

  // rows [m0, m1) of op(A), columns [k0, k0 + kb) -> dst, per block of kMR rows [kb][kMR] (k-major,
  // rows past m1 zero), so the micro-kernel reads A as one sequential stream; with trans_a, adds each row's
  // elements to sums[m] (if given) on the way, in k order
  static void pack_a(const GemmArgs<T>& g, int64_t m0, int64_t m1, int64_t k0, int64_t kb, T* dst, double* sums) {
    if (g.trans_a) {
      // row k of A holds column k of op(A): a group of row blocks takes its kMR-element pieces from
      // each row of A in turn, so every cache line of A is used up in one visit
      constexpr int64_t kGroupRows = 16 * kMR, kAhead = 16;
      for (int64_t g0 = m0; g0 < m1; g0 += kGroupRows) {
        const int64_t g1 = imin(g0 + kGroupRows, m1);
        for (int64_t k = 0; k < kb; ++k) {
          const T* src = g.a + krow(g, k0 + k) * g.lda;
          if (k + kAhead < kb) {  // rows lda apart (dG's: a page each) defeat the hardware prefetcher
            const T* next = g.a + krow(g, k0 + k + kAhead) * g.lda;
            for (int64_t m = g0; m < g1; m += 64 / sizeof(T)) __builtin_prefetch(next + m);
            __builtin_prefetch(next + g1 - 1);
          }
          for (int64_t mb = g0; mb < g1; mb += kMR) {
            T* d = dst + (mb - m0) * kb + k * kMR;
            if (mb + kMR <= m1) {
              for (int64_t r = 0; r < kMR; ++r) d[r] = src[mb + r];
            } else {
              for (int64_t r = 0; r < kMR; ++r) d[r] = mb + r < m1 ? src[mb + r] : T(0);
            }
          }
          if (sums)
            for (int64_t m = g0; m < g1; ++m) sums[m] += static_cast<double>(src[m]);
        }
      }
      return;
    }
    for (int64_t mb = m0; mb < m1; mb += kMR) {
      T* d = dst + (mb - m0) * kb;
      const int64_t rows = imin(kMR, m1 - mb);
      for (int64_t r = 0; r < kMR; ++r) {
        if (r >= rows) {
          for (int64_t k = 0; k < kb; ++k) d[k * kMR + r] = T(0);
          continue;
        }
        const T* src = g.a + crow(g, mb + r) * g.lda + k0;
        for (int64_t k = 0; k < kb; ++k) d[k * kMR + r] = src[k];
      }
    }
  }

  // vectors in the panel at column c0 of pt: NV, or fewer in a last panel narrower than NR
  static FASTLSTM_INLINE int64_t panel_vecs(const Part& pt, int64_t c0) { return ceil_div(imin(NR, pt.N - c0), W); }

  // columns [c0, c0 + NR) of pt's op(B), rows [k0, k0 + kb), as [kb][panel_vecs][W], zero past column N
  static void pack_b(const GemmArgs<T>& g, const Part& pt, int64_t k0, int64_t kb, int64_t c0, T* dst) {
    const int64_t nc = imin(NR, pt.N - c0), ps = panel_vecs(pt, c0) * W;
    if (g.trans_b) {  // (the first product only)
      for (int64_t k = 0; k < kb; ++k)
        for (int64_t j = nc; j < ps; ++j) dst[k * ps + j] = T(0);
      int64_t j = 0;  // columns [0, j) packed by W x W blocks transposed in registers, where the ISA has it
      if constexpr (V::kTranspose) {
        const int64_t kfull = kb / W * W;
        for (; j + W <= nc; j += W) {
          const T* src = pt.b + (c0 + j) * pt.ldb + k0;
          for (int64_t k = 0; k < kfull; k += W) V::transpose(src + k, pt.ldb, dst + k * ps + j, ps);
          for (int64_t k = kfull; k < kb; ++k)
            for (int64_t l = 0; l < W; ++l) dst[k * ps + j + l] = src[l * pt.ldb + k];
        }
      }
      for (; j < nc; ++j) {
        const T* src = pt.b + (c0 + j) * pt.ldb + k0;
        for (int64_t k = 0; k < kb; ++k) dst[k * ps + j] = src[k];
      }
    } else {
      for (int64_t k = 0; k < kb; ++k) {
        const int64_t row = krow(g, k0 + k);
        T* d = dst + k * ps;
        int64_t j = 0;
        if (row >= pt.lo && row < pt.hi) {
          const T* src = pt.b + (row - pt.lo) * pt.ldb + c0;
          for (; j < nc; ++j) d[j] = src[j];
        }
        for (; j < ps; ++j) d[j] = T(0);
      }
    }
  }
};

template <class V>
KernelSet<typename V::T> make_kernel_set() {
  KernelSet<typename V::T> s;
  s.lstm_forward = &Forward<V>::run;
  s.lstm_backward = &Backward<V>::run;
  s.gemm = &Gemm<V>::run;
  s.sigmoid = &sigmoid_array<V>;
  s.tanh = &tanh_array<V>;
  return s;
}

const KernelTable& table() {
  static const KernelTable t{make_kernel_set<VF>(), make_kernel_set<VD>()};
  return t;
}
