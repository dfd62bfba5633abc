#include "thread_pool.h"

#include <sched.h>

#include <atomic>
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

class Pool {
 public:
  Pool() { resize(available_cores()); }
  ~Pool() { stop_workers(); }

  int size() {
    std::lock_guard<std::mutex> lock(run_mutex_);
    return static_cast<int>(workers_.size()) + 1;
  }

  void resize(int n) {
    if (n <= 0) n = available_cores();
    std::lock_guard<std::mutex> lock(run_mutex_);
    stop_workers();
    stopping_ = false;
    // A new worker has seen every job so far: it must wait for the next one, not take the
    // last (finished) generation for new work and count itself done twice.
    const std::uint64_t seen = generation_;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, seen] { worker_loop(seen); });
  }

  void run(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
    if (t_inside_task || !run_lock.owns_lock() || workers_.empty() || n == 1) {
      run_serial(n, fn);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      job_size_ = n;
      next_.store(0);
      error_ = nullptr;
      active_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return active_ == 0; });
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

  void worker_loop(std::uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      work();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--active_ == 0) done_.notify_one();
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
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
  int active_ = 0;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static teardown order
  return *p;
}

}  // namespace

void set_num_threads(int n) { pool().resize(n); }
int get_num_threads() { return pool().size(); }
void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& fn) { pool().run(n, fn); }

}  // namespace convkit
