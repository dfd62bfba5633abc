#include "workspace.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace convkit {
namespace {

constexpr std::size_t kHugePage = std::size_t(2) << 20;
// What stays cached between calls: a few blocks (concurrent calls from Python threads),
// at most this many bytes in all; the oldest go first. A larger block is freed at once.
constexpr std::size_t kMaxCachedBlocks = 4;
constexpr std::size_t kMaxCachedBytes = std::size_t(256) << 20;

class BlockCache {
 public:
  // A block of at least `size` bytes: the most recently released one that fits, or a
  // new one. The most recent block is the one still in the caches: a backward pass
  // alternates grad-input and grad-weight, and when each took the smallest block that
  // fits, the two workspaces (7 and 9 MB on DeepLab's ASPP layer) both had to stay in
  // the L3 beside the tensors; the operator that ran second found its own block evicted
  // and its writes went to DRAM: each ran ~10% slower alternating than repeated (one
  // core; the backward 8.5 -> 8.1 ms with the shared block, DCGAN's 4.6 -> 4.4).
  std::pair<char*, std::size_t> acquire(std::size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (std::size_t i = free_.size(); i-- > 0;)
        if (free_[i].second >= size) {
          auto block = free_[i];
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          return block;
        }
    }
    const bool huge = size >= 2 * kHugePage;
    const std::size_t align = huge ? kHugePage : 64, bytes = (size + align - 1) / align * align;
    char* p = static_cast<char*>(std::aligned_alloc(align, bytes));
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return {p, bytes};
  }

  // Keeps the block for the next call, within the limits above.
  void release(char* p, std::size_t bytes) {
    if (bytes > kMaxCachedBytes) return std::free(p);
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace_back(p, bytes);
    std::size_t total = 0;
    for (const auto& b : free_) total += b.second;
    while (free_.size() > kMaxCachedBlocks || total > kMaxCachedBytes) {
      total -= free_.front().second;
      std::free(free_.front().first);
      free_.erase(free_.begin());
    }
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<char*, std::size_t>> free_;
};

BlockCache& cache() {
  static BlockCache* c = new BlockCache();  // never destroyed: calls may run during static teardown
  return *c;
}

}  // namespace

void Workspace::allocate() {
  auto block = cache().acquire(size_ ? size_ : 64);
  data_ = block.first;
  capacity_ = block.second;
}

Workspace::~Workspace() {
  if (data_) cache().release(data_, capacity_);
}

}  // namespace convkit
