// One allocation per operator call, carved into 64-byte-aligned buffers (packed planes,
// packed weights, partial sums). Nothing is allocated once the kernels run, and nothing
// is zero-filled that the packing routines write anyway.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace convkit {

class Workspace {
 public:
  // Lays out a buffer of `count` U's; returns its handle (a byte offset).
  template <typename U>
  std::size_t add(std::int64_t count) {
    const std::size_t at = size_;
    size_ += (static_cast<std::size_t>(count) * sizeof(U) + 63) / 64 * 64;
    return at;
  }
  void allocate() {
    data_.reset(static_cast<char*>(std::aligned_alloc(64, size_ ? size_ : 64)));
    if (!data_) throw std::bad_alloc();
  }
  template <typename U>
  U* at(std::size_t handle) const {
    return reinterpret_cast<U*>(data_.get() + handle);
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::size_t size_ = 0;
  std::unique_ptr<char, Free> data_;
};

}  // namespace convkit
