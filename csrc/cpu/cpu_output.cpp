// The allocator of the CPU ops' large outputs; see transfusion/cpu_output.h.
#include "transfusion/cpu_output.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace transfusion::cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

size_t cache_limit_from_env() {
  const char* v = std::getenv("TRANSFUSION_CPU_OUTPUT_CACHE_MIB");
  if (v == nullptr || *v == '\0') return size_t{256} << 20;
  try {
    const long long mib = std::stoll(v);
    return mib <= 0 ? 0 : static_cast<size_t>(mib) << 20;
  } catch (const std::exception&) {
    TORCH_CHECK(false, "TRANSFUSION_CPU_OUTPUT_CACHE_MIB must be a whole number of MiB, got '", v,
                "'");
  }
}

struct Block {
  void* ptr;
  size_t size;  // a multiple of kHugePage
};

// Freed blocks kept for reuse, oldest first, at most `limit` bytes in all.
class BlockCache {
 public:
  BlockCache() : limit_(cache_limit_from_env()) {}

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
      if (it->size == size) {
        void* p = it->ptr;
        cached_ -= size;
        blocks_.erase(std::next(it).base());
        return p;
      }
    }
    return nullptr;
  }

  void give(Block b) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (b.size > limit_) {
      std::free(b.ptr);
      return;
    }
    while (cached_ + b.size > limit_) {
      std::free(blocks_.front().ptr);
      cached_ -= blocks_.front().size;
      blocks_.pop_front();
    }
    blocks_.push_back(b);
    cached_ += b.size;
  }

  std::pair<size_t, size_t> info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_, limit_};
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Block& b : blocks_) std::free(b.ptr);
    blocks_.clear();
    cached_ = 0;
  }

 private:
  std::mutex mutex_;
  std::deque<Block> blocks_;
  size_t cached_ = 0;
  size_t limit_;
};

BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive statics
  return *cache;
}

void return_block(void* ctx) {
  Block* b = static_cast<Block*>(ctx);
  block_cache().give(*b);
  delete b;
}

class LargeOutputAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes < kHugePage) return c10::GetCPUAllocator()->allocate(nbytes);
    const size_t size = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = block_cache().take(size);
    if (p == nullptr) {
      TORCH_CHECK(posix_memalign(&p, kHugePage, size) == 0 && p != nullptr,
                  "transfusion: out of memory allocating ", nbytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(p, size, MADV_HUGEPAGE);  // advice only: ignored where THP is off
#endif
    }
    return {p, new Block{p, size}, &return_block, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

LargeOutputAllocator& large_output_allocator() {
  static LargeOutputAllocator allocator;
  return allocator;
}

}  // namespace

at::Tensor empty_output_like(const at::Tensor& like, at::MemoryFormat format) {
  TORCH_CHECK(like.device().is_cpu(), "empty_output_like: CPU tensors only");
  return at::detail::empty_generic(like.sizes(), &large_output_allocator(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   like.scalar_type(), format);
}

std::pair<size_t, size_t> output_cache_info() { return block_cache().info(); }

void empty_output_cache() { block_cache().clear(); }

}  // namespace transfusion::cpu
