#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace convkit {
namespace {

int available_cores() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

thread_local bool t_inside_task = false;

// How long a thread polls an atomic before it sleeps on a condition variable. A wake-up
// through the condition variable costs 5-50 us (more in a virtual machine): more than a
// small layer's whole work. Back-to-back calls (a network's layers, a benchmark loop)
// hand out the next job well within this, so the workers catch it while polling, as
// OpenMP runtimes do (GOMP_SPINCOUNT). Each poll yields the core: on a machine with
// more runnable threads than cores, a pause-spinning thread burns the time slice its
// partner needs (measured: 1 ms per small layer instead of 30 us under a load of 7),
// while a yield costs well under a microsecond when nothing else wants the core.
constexpr auto kPoll = std::chrono::microseconds(100);

// Polls until ready() or kPoll has passed; returns ready().
template <typename Ready>
bool poll_until(Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + kPoll;
  for (;;) {
    if (ready()) return true;
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() > deadline) return ready();
  }
}

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop_workers(); }

  // Without run_mutex_: Python reads the count on every algo="auto" call (convkit._registry),
  // which must not wait for a job another thread is running; and in a forked child a dead
  // thread may hold the lock.
  int size() const { return size_.load(); }

  void set_fork_join(ForkJoin fork_join) {
    std::lock_guard<std::mutex> lock(run_mutex_);  // not while a job runs
    fork_join_.store(fork_join);
  }

  void resize(int n) {
    if (n <= 0) n = available_cores();
    std::lock_guard<std::mutex> lock(run_mutex_);
    stop_workers();
    stopping_.store(false);
    // A new worker has seen every job so far: it must wait for the next one, not take the
    // last (finished) generation for new work and count itself done twice.
    const std::uint64_t seen = generation_.load(std::memory_order_acquire);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, seen] { worker_loop(seen); });
    size_.store(n);
  }

  void run(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
    if (t_inside_task || !run_lock.owns_lock() || workers_.empty() || n == 1) {
      run_serial(n, fn);
      return;
    }
    if (ForkJoin fork_join = fork_join_.load()) {
      job_ = &fn;
      job_size_ = n;
      next_.store(0);
      error_ = nullptr;
      fork_join([](void* self) { static_cast<Pool*>(self)->work(); }, this,
                static_cast<unsigned>(workers_.size() + 1), 0);
      job_ = nullptr;
      if (error_) std::rethrow_exception(error_);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      job_size_ = n;
      next_.store(0);
      error_ = nullptr;
      active_.store(static_cast<int>(workers_.size()));
      generation_.store(generation_.load() + 1, std::memory_order_release);
    }
    wake_.notify_all();
    work();
    if (!poll_until([this] { return active_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return active_.load() == 0; });
    }
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static void run_serial(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
    bool outer = t_inside_task;
    t_inside_task = true;
    try {
      for (std::int64_t i = 0; i < n; ++i) fn(i);
    } catch (...) {
      t_inside_task = outer;
      throw;
    }
    t_inside_task = outer;
  }

  // Tasks are handed out one at a time from an atomic counter: cheap, and it balances
  // uneven tasks (edge tiles) without any tuning.
  void work() {
    t_inside_task = true;
    for (;;) {
      std::int64_t i = next_.fetch_add(1);
      if (i >= job_size_) break;
      try {
        (*job_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(job_size_);
      }
    }
    t_inside_task = false;
  }

  // A job is published by bumping generation_ (release) after its fields are written
  // under mutex_; a worker that sees the new generation (acquire) may read them.
  void worker_loop(std::uint64_t seen) {
    auto ready = [&] {
      return stopping_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
    };
    for (;;) {
      if (!poll_until(ready)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, ready);
      }
      if (stopping_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      work();
      if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller may be between its check and its wait
        done_.notify_one();
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex run_mutex_;  // one parallel job at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(std::int64_t)>* job_ = nullptr;
  std::int64_t job_size_ = 0;
  std::atomic<std::int64_t> next_{0};
  std::exception_ptr error_;
  std::atomic<int> active_{0};               // workers that have not finished the job
  std::atomic<std::uint64_t> generation_{0};  // bumped once per job
  std::atomic<bool> stopping_{false};
  std::atomic<ForkJoin> fork_join_{nullptr};  // set: jobs run on that runtime's team, not workers_
  std::atomic<int> size_{1};
};

// A forked child (multiprocessing, DataLoader workers) has only the thread that called
// fork(): the pool's workers are gone, and so is the OpenMP team of a fork-join hand-off
// (libgomp's next region hangs in a child, PyTorch's own ops too); the pool's mutexes may
// even be held by threads that no longer exist. So the child leaves the old pool behind,
// never touched nor freed, and builds a new one of the same size, on its own threads, at
// its first parallel call.
std::atomic<Pool*> g_pool{nullptr};
std::atomic<int> g_size_after_fork{0};  // 0: the cores available

void forget_pool_in_child() {
  if (Pool* old = g_pool.load()) g_size_after_fork.store(old->size());
  g_pool.store(nullptr);
}

Pool& pool() {
  static const int registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child);
  (void)registered;
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (!p) {  // never destroyed: workers may outlive static teardown order
    Pool* fresh = new Pool(g_size_after_fork.load());
    if (g_pool.compare_exchange_strong(p, fresh)) return *fresh;
    delete fresh;  // another thread made one first: p is it
  }
  return *p;
}

}  // namespace

void set_num_threads(int n) { pool().resize(n); }
int get_num_threads() { return pool().size(); }
void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& fn) { pool().run(n, fn); }
void set_fork_join(ForkJoin fork_join) { pool().set_fork_join(fork_join); }

}  // namespace convkit
