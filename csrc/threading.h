// threading.h: fastlstm's thread pool, spin barrier and thread-count heuristic.
//
// What this is: a small persistent pool whose workers stay alive between calls (so a recurrent loop
// with a barrier per step costs a few hundred nanoseconds a step, not a thread launch), a barrier
// for the per-step synchronisation, and aligned scratch allocation. What it is not: a general task
// scheduler. Everything here is out of line (threading.cpp, baseline compiler flags) because the
// per-ISA translation units in cpu/ call it: an inline function shared by TUs compiled with different
// -m flags could be emitted with AVX-512 instructions and picked by the linker for the scalar path.
//
// Concurrency: one kernel call owns the pool at a time (a Parallel lease). A second Python thread that
// calls in while the pool is owned runs its kernel on its own thread instead of waiting, so concurrent
// eval-mode calls never deadlock and never share scratch memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace fastlstm {

// Threads a kernel may use: defaults to the machine's cores (sched_getaffinity), FASTLSTM_NUM_THREADS
// overrides at import, set_max_threads at run time.
int max_threads();
void set_max_threads(int n);  // clamped to [1, 4095]

using TaskFn = void (*)(void* ctx, int tid, int nthreads);

// A lease on the pool for one kernel call: size() threads (the caller is thread 0).
class Parallel {
 public:
  explicit Parallel(int wanted);  // gets min(wanted, max_threads()), or 1 when the pool is in use
  ~Parallel();
  Parallel(const Parallel&) = delete;
  Parallel& operator=(const Parallel&) = delete;
  int size() const;
  void run(TaskFn fn, void* ctx);  // fn(ctx, tid, size()) for every tid; returns when all are done
 private:
  int n_;
  void* pool_;  // the pool this lease owns, or nullptr when running on the caller alone
};

// Sense-reversing barrier for a fixed group of threads: spins briefly (pause), then yields.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n);
  void wait();
 private:
  alignas(64) std::atomic<int> count_;
  alignas(64) std::atomic<int> phase_;
  alignas(64) int n_;
};

// One iteration of a spin-wait for another thread: a pause, or after a while a yield of the core (the thread
// waited for may need it on an oversubscribed machine). `spin` counts the iterations so far.
void spin_wait(int spin);

// Items of work one thread took from another's queue (the GEMM's, the forward's input projection) since the
// process started: a diagnostic for tests and benchmarks (fastlstm._C.work_taken()).
void note_work_taken();
int64_t work_taken();

// How many threads a recurrent loop or GEMM should use: `work_flops` is the work between two
// synchronisations (a step, or a whole GEMM), `units` the number of independent pieces it splits into.
// request > 0 forces min(request, units); request == 0 picks the largest count that keeps every thread
// above `min_flops_per_thread` (one of the two below), so small problems never get slower with more threads.
int choose_threads(double work_flops, int64_t units, int request, double min_flops_per_thread);

// A recurrent loop's step: below this the barrier (~0.25 us a step on the 2-core EPYC of the README) costs more
// than the split saves. Measured crossover at B = 1, 1000 steps: H = 32 (8k flops a step) 156 us on 1 thread vs
// 218 on 2; H = 48 (18k) 374 vs 336; H = 64 661 vs 413.
constexpr double kStepMinFlopsPerThread = 9e3;
// A GEMM over all time steps. On its own a 2-thread GEMM pays off from ~2 MFLOP, but it wakes the pool, and on
// the README's machine the single-threaded loops of the same small layer ran slower while the pool was active
// (0-60% round by round, not explained): at B = 1, H = 8 and 16 (loops too small to split, GEMMs of 1-4 MFLOP)
// the training step with 2 threads took 0.71-1.01x the time of 1 thread at the previous minimum (9e3; 9 of 10
// alternating runs below 1.00x). At this one every kernel of a B = 1 layer up to H = 24 runs on one thread under
// either budget (measured 0.86-1.02x: the host's noise). H = 32 keeps 2 threads for its 16 MFLOP dW: 1.02 and
// 1.07x in two runs, 0.91-0.99x in four later ones, so it sits at the crossover.
constexpr double kGemmMinFlopsPerThread = 5e6;

// A request that every kernel call asking for the automatic choice (request 0) gets instead, process-wide:
// 0 (the default) leaves the choice to choose_threads. A diagnostic for the benchmark's thread-scaling table
// (fastlstm._C.force_threads), which times what the choice saves against always using every thread.
void force_threads(int n);  // clamped to [0, 4095]
int forced_threads();

// 64-byte aligned scratch memory for one kernel call; throws std::bad_alloc. Freed blocks stay with the thread
// that freed them (up to kScratchCacheBytes in all) for that thread's next calls: a kernel called again with the
// same shapes touches no fresh page. (Allocated and freed with each call, a 2-thread weight-gradient GEMM of a
// B = 1, H = 16 layer page-faulted 148 times a call, 80 -> 340 us, in some heap states and never in others: by my
// reading, glibc gave the blocks back to the system whenever its heap's top trimmed.)
void* scratch_alloc(size_t bytes);
void scratch_free(void* p);  // nullptr: nothing

}  // namespace fastlstm
