// One workspace per operator call, carved into 64-byte-aligned buffers (packed planes,
// packed grad_output, partial sums). Nothing is allocated once the kernels run, and
// nothing is zero-filled that the packing routines write anyway.
//
// The memory comes from a small cache of blocks kept between calls: a fresh block costs
// a page fault per 4 KiB page on first touch (1-5 us each in a virtual machine: more
// than packing the planes), so repeated calls of a layer reuse the same block. Large
// blocks ask for transparent huge pages, which also spares the kernels TLB misses
// when they read many channel planes at once.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <new>

namespace convkit {

// The element count of a buffer with these dimensions. A product past int64 is a buffer
// no machine holds (a padding or stride near 2^31 can ask for one): std::bad_alloc,
// MemoryError in Python, never a wrapped-around size that the packing would overrun.
inline std::int64_t buffer_size(std::initializer_list<std::int64_t> dims) {
  std::int64_t n = 1;
  for (std::int64_t d : dims)
    if (__builtin_mul_overflow(n, d, &n)) throw std::bad_alloc();
  return n;
}

class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace();

  // Lays out a buffer of `count` U's; returns its handle (a byte offset).
  template <typename U>
  std::size_t add(std::int64_t count) {
    const std::size_t at = size_;
    size_ += (static_cast<std::size_t>(buffer_size({count, std::int64_t{sizeof(U)}})) + 63) / 64 * 64;
    return at;
  }
  void allocate();  // once, after every add()
  template <typename U>
  U* at(std::size_t handle) const {
    return reinterpret_cast<U*>(data_ + handle);
  }

 private:
  std::size_t size_ = 0, capacity_ = 0;
  char* data_ = nullptr;
};

}  // namespace convkit
