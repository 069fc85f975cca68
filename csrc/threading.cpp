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
    unsigned seen = 0;   // gen_'s initial value (a worker that starts after the first publish still sees it)
    bool spin = true;    // after a job of its own: the next may follow at once (a layer call is a few kernels)
    for (;;) {
      unsigned word;
      for (int i = 0;; ++i) {
        word = gen_.load(std::memory_order_acquire);
        if (word != seen) break;
        if (spin && i < kSpinBeforeSleep) {
          FASTLSTM_PAUSE();
          continue;
        }
        gen_.wait(word, std::memory_order_acquire);
      }
      seen = word;
      if (stop_.load()) return;
      const int n = static_cast<int>(word & kTeamMask);
      spin = id < n;  // a worker left out of a smaller team (a lower budget) sleeps instead of burning a core
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
    g_max_threads = n;
    // a lower budget keeps the pool (teams are capped at the budget; the workers past it sleep), so a program
    // that switches budgets does not start new threads each time, which the scheduler must first place
    if (!g_pool || n <= g_pool->size()) return;
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
  const int n = std::min(wanted, std::min(p.size(), g_max_threads));
  if (n <= 1 || !p.busy().try_lock()) return;  // pool in use: run on this thread alone
  pool_ = &p;
  n_ = n;
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
std::atomic<int> g_forced_threads{0};
}  // namespace

void note_work_taken() { g_work_taken.fetch_add(1, std::memory_order_relaxed); }
int64_t work_taken() { return g_work_taken.load(std::memory_order_relaxed); }

void spin_wait(int spin) {
  if (spin < kSpinBeforeYield) FASTLSTM_PAUSE();
  else sched_yield();
}

int choose_threads(double work_flops, int64_t units, int request, double min_flops_per_thread) {
  int64_t limit = std::max<int64_t>(1, units);
  if (request <= 0) request = g_forced_threads.load(std::memory_order_relaxed);
  if (request > 0) return static_cast<int>(std::min<int64_t>(request, limit));
  int n = max_threads();
  while (n > 1 && work_flops / n < min_flops_per_thread) --n;
  return static_cast<int>(std::min<int64_t>(n, limit));
}

namespace {
// The blocks a thread has freed, oldest first. Each block starts with a 64-byte header holding its size.
constexpr size_t kScratchHeader = 64;
constexpr size_t kScratchCacheBytes = size_t(64) << 20;  // kept per thread at most; a larger block is freed
constexpr size_t kScratchCacheBlocks = 32;

struct ScratchCache {
  struct Block {
    char* base;
    size_t size;  // usable bytes after the header
  };
  std::vector<Block> blocks;
  size_t bytes = 0;
  ~ScratchCache() {
    for (const Block& b : blocks) std::free(b.base);
  }
};
thread_local ScratchCache t_scratch;
}  // namespace

void* scratch_alloc(size_t bytes) {
  const size_t size = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  ScratchCache& cache = t_scratch;
  // the smallest cached block that fits, unless it is much larger (a small request would take the block a
  // large one of the same call needs, which would then be allocated afresh)
  int best = -1;
  for (int i = 0; i < static_cast<int>(cache.blocks.size()); ++i) {
    const size_t have = cache.blocks[i].size;
    if (have >= size && have <= 2 * size + (size_t(64) << 10) && (best < 0 || have < cache.blocks[best].size)) best = i;
  }
  char* base;
  if (best >= 0) {
    base = cache.blocks[best].base;
    cache.bytes -= cache.blocks[best].size;
    cache.blocks.erase(cache.blocks.begin() + best);
  } else {
    if (size > SIZE_MAX - kScratchHeader) throw std::bad_alloc();
    base = static_cast<char*>(std::aligned_alloc(64, size + kScratchHeader));
    if (!base) throw std::bad_alloc();
    *reinterpret_cast<size_t*>(base) = size;
  }
  return base + kScratchHeader;
}

void scratch_free(void* p) {
  if (!p) return;
  char* base = static_cast<char*>(p) - kScratchHeader;
  const size_t size = *reinterpret_cast<size_t*>(base);
  ScratchCache& cache = t_scratch;
  if (size > kScratchCacheBytes) {
    std::free(base);
    return;
  }
  cache.blocks.push_back({base, size});
  cache.bytes += size;
  while (cache.bytes > kScratchCacheBytes || cache.blocks.size() > kScratchCacheBlocks) {  // the oldest go first
    cache.bytes -= cache.blocks.front().size;
    std::free(cache.blocks.front().base);
    cache.blocks.erase(cache.blocks.begin());
  }
}

void force_threads(int n) { g_forced_threads.store(std::clamp(n, 0, kMaxPoolThreads), std::memory_order_relaxed); }
int forced_threads() { return g_forced_threads.load(std::memory_order_relaxed); }

}  // namespace fastlstm
