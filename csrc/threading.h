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
// above a minimum of work per synchronisation, so small problems never get slower with more threads.
int choose_threads(double work_flops, int64_t units, int request);

// 64-byte aligned scratch memory; throws std::bad_alloc.
void* aligned_alloc64(size_t bytes);
void aligned_free64(void* p);

}  // namespace fastlstm
