// convkit's own thread pool.
//
// Why not OpenMP: PyTorch wheels ship their own libgomp, and two OpenMP runtimes in one
// process fight over thread counts (pytorch/pytorch#98836). A small pool of std::threads
// cannot clash with anything, and gives one setting for the thread count.
//
// Contract: parallel_for(n, fn) calls fn(i) exactly once for every task i in [0, n),
// spread over the pool's threads and the caller. Which thread runs a task never changes
// a result: kernels partition work by task index, never by thread id, so outputs are
// bit-identical whatever the thread count. A call from inside a task, or while another
// Python thread holds the pool, runs serially in the caller (same results, no deadlock).
#pragma once
#include <cstdint>
#include <functional>

namespace convkit {

void set_num_threads(int n);  // n <= 0: the cores available to this process
int get_num_threads();
void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& fn);

// libgomp's entry point for a parallel region (GOMP_parallel, also exported by Intel's
// libiomp5): runs fn(data) on num_threads threads, the caller among them, and returns
// when all have. convkit.torch hands over the one of the OpenMP runtime PyTorch loaded:
// between PyTorch ops its OpenMP workers spin-wait for the next region (GOMP_SPINCOUNT,
// milliseconds), and on a machine with as many cores as threads such a spinner takes
// half the core of one of convkit's own workers; running convkit's jobs on that same team
// wakes the spinner with work instead. convkit never links OpenMP itself.
using ForkJoin = void (*)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
void set_fork_join(ForkJoin fork_join);  // nullptr: back to convkit's own workers

}  // namespace convkit
