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

}  // namespace convkit
