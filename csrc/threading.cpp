// threading.cpp: the pool, barrier and heuristics declared in threading.h (baseline compiler flags).
//
// Pool protocol: the owner of a Parallel lease publishes (fn, ctx, n), bumps a generation counter and
// runs tid 0 itself; workers 1..n-1 run their share and count down `pending`. Workers spin for a short
// while on the generation (a layer call is a few back-to-back kernels) and then sleep in a futex wait.
// After fork() the child gets a fresh pool on first use (the parent's worker threads do not exist there).
#include "threading.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTLSTM_PAUSE() _mm_pause()
#define FASTLSTM_GET_FP_MODE() _mm_getcsr()
#define FASTLSTM_SET_FP_MODE(m) _mm_setcsr(m)
#else
#define FASTLSTM_PAUSE() ((void)0)
#define FASTLSTM_GET_FP_MODE() 0u
#define FASTLSTM_SET_FP_MODE(m) ((void)(m))
#endif

namespace fastlstm {
namespace {

// spin iterations before a waiting thread starts yielding (barrier) or sleeping (idle worker)
constexpr int kSpinBeforeYield = 4000;
constexpr int kSpinBeforeSleep = 40000;
// the largest pool (the generation word below holds a team size in 12 bits)
constexpr int kMaxPoolThreads = 4095;

int default_threads() {
  if (const char* env = std::getenv("FASTLSTM_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return std::min(n, kMaxPoolThreads);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::clamp(CPU_COUNT(&set), 1, kMaxPoolThreads);
  return std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, kMaxPoolThreads);
}

class Pool {
 public:
  explicit Pool(int nthreads) : nthreads_(nthreads) {
    for (int i = 1; i < nthreads_; ++i) workers_.emplace_back([this, i] { worker(i); });
  }
  ~Pool() {
    stop_.store(true);
    publish(0, nullptr, nullptr);
    for (auto& t : workers_) t.join();
  }
  int size() const { return nthreads_; }
  std::mutex& busy() { return busy_; }

  void run(int n, TaskFn fn, void* ctx) {
    // the workers compute in the caller's floating-point mode (MXCSR: flush-to-zero, denormals-are-zero,
    // rounding), so which thread computes an item never changes a result
    fp_mode_ = FASTLSTM_GET_FP_MODE();
    publish(n, fn, ctx);
    fn(ctx, 0, n);
    for (int spin = 0;; ++spin) {
      int left = pending_.load(std::memory_order_acquire);
      if (left == 0) break;
      if (spin < kSpinBeforeSleep) FASTLSTM_PAUSE();
      else pending_.wait(left, std::memory_order_acquire);
    }
  }

 private:
  // The generation word: a counter above kTeamBits bits of team size. A worker reads its generation's
  // team size from the same atomic load that tells it a job was published, so a worker outside a team
  // never mistakes the next job's parameters for its own. fn_, ctx_ and fp_mode_ are read only by team members,
  // and the next job cannot be published before every member has counted down `pending_`.
  static constexpr unsigned kTeamBits = 12;  // teams of up to 4095 threads (max_threads() is capped there)
  static constexpr unsigned kTeamMask = (1u << kTeamBits) - 1;

  void publish(int n, TaskFn fn, void* ctx) {
    fn_ = fn;
    ctx_ = ctx;
    pending_.store(n - 1, std::memory_order_relaxed);
    const unsigned word = gen_.load(std::memory_order_relaxed);
    gen_.store((word & ~kTeamMask) + (1u << kTeamBits) + static_cast<unsigned>(n), std::memory_order_release);
    gen_.notify_all();
  }

  void worker(int id) {
    unsigned seen = 0;  // gen_'s initial value (a worker that starts after the first publish still sees it)
    for (;;) {
      unsigned word;
      for (int spin = 0;; ++spin) {
        word = gen_.load(std::memory_order_acquire);
        if (word != seen) break;
        if (spin < kSpinBeforeSleep) {
          FASTLSTM_PAUSE();
          continue;
        }
        gen_.wait(word, std::memory_order_acquire);
      }
      seen = word;
      if (stop_.load()) return;
      const int n = static_cast<int>(word & kTeamMask);
      if (id < n) {
        FASTLSTM_SET_FP_MODE(fp_mode_);
        fn_(ctx_, id, n);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
      }
    }
  }

  int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex busy_;
  alignas(64) std::atomic<unsigned> gen_{0};
  alignas(64) std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  unsigned fp_mode_ = 0;
};

std::mutex g_config_mutex;  // guards g_pool replacement and g_max_threads
Pool* g_pool = nullptr;
int g_max_threads = 0;

void after_fork_child() {
  // the parent's workers are gone; leak the old object (its mutex may be locked) and start afresh
  g_pool = nullptr;
  new (&g_config_mutex) std::mutex();
}

// the current pool, created on first use; call with g_config_mutex held
Pool& pool_locked() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, after_fork_child); });
  if (g_max_threads == 0) g_max_threads = default_threads();
  if (!g_pool) g_pool = new Pool(g_max_threads);  // never destroyed: workers sleep through exit
  return *g_pool;
}

}  // namespace

int max_threads() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  if (g_max_threads == 0) g_max_threads = default_threads();
  return g_max_threads;
}

void set_max_threads(int n) {
  n = std::clamp(n, 1, kMaxPoolThreads);
  Pool* old = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_config_mutex);
    if (n == g_max_threads && g_pool) return;
    g_max_threads = n;
    old = g_pool;
    g_pool = nullptr;
  }
  if (old) {
    // wait for a kernel that still owns the old pool, then retire it
    { std::lock_guard<std::mutex> wait_idle(old->busy()); }
    delete old;
  }
}

Parallel::Parallel(int wanted) : n_(1), pool_(nullptr) {
  if (wanted <= 1) return;
  // under the config lock, so set_max_threads cannot retire this pool between lookup and lease
  std::lock_guard<std::mutex> lock(g_config_mutex);
  Pool& p = pool_locked();
  if (p.size() <= 1 || !p.busy().try_lock()) return;  // pool in use: run on this thread alone
  pool_ = &p;
  n_ = std::min(wanted, p.size());
}

Parallel::~Parallel() {
  if (pool_) static_cast<Pool*>(pool_)->busy().unlock();
}

int Parallel::size() const { return n_; }

void Parallel::run(TaskFn fn, void* ctx) {
  if (n_ == 1) {
    fn(ctx, 0, 1);
    return;
  }
  static_cast<Pool*>(pool_)->run(n_, fn, ctx);
}

SpinBarrier::SpinBarrier(int n) : count_(0), phase_(0), n_(n) {}

void SpinBarrier::wait() {
  if (n_ <= 1) return;
  int phase = phase_.load(std::memory_order_acquire);
  if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
    count_.store(0, std::memory_order_relaxed);
    phase_.store(phase + 1, std::memory_order_release);
    return;
  }
  for (int spin = 0; phase_.load(std::memory_order_acquire) == phase; ++spin) spin_wait(spin);
}

namespace {
std::atomic<int64_t> g_work_taken{0};
}  // namespace

void note_work_taken() { g_work_taken.fetch_add(1, std::memory_order_relaxed); }
int64_t work_taken() { return g_work_taken.load(std::memory_order_relaxed); }

void spin_wait(int spin) {
  if (spin < kSpinBeforeYield) FASTLSTM_PAUSE();
  else sched_yield();
}

int choose_threads(double work_flops, int64_t units, int request) {
  // below this much work per thread between synchronisations the barrier (~0.25 us a step on the
  // 2-core EPYC of the README) costs more than the split saves: measured crossover at B=1, 1000 steps:
  // H=32 (8k flops a step) 156 us on 1 thread vs 218 on 2; H=48 (18k) 374 vs 336; H=64 661 vs 413
  constexpr double kMinFlopsPerThread = 9e3;
  int64_t limit = std::max<int64_t>(1, units);
  if (request > 0) return static_cast<int>(std::min<int64_t>(request, limit));
  int n = max_threads();
  while (n > 1 && work_flops / n < kMinFlopsPerThread) --n;
  return static_cast<int>(std::min<int64_t>(n, limit));
}

void* aligned_alloc64(size_t bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  return p;
}

void aligned_free64(void* p) { std::free(p); }

}  // namespace fastlstm
