#pragma once
// Output tensors of the CPU ops, on memory that is cheap to fill.
//
// A fresh 50 MB output from the default allocator is mapped in 4 KiB pages, and the first write
// to each faults: ~12,500 faults, which on the development VM cost 15-17 ms, more than the
// kernel's reads and arithmetic together (glibc returns blocks above 32 MiB to the system on
// free, so this recurs every training step). The ops' outputs of at least 2 MiB therefore come
// from a small allocator of their own:
//   * blocks are 2 MiB-aligned and advised for transparent huge pages (madvise MADV_HUGEPAGE),
//     as PyTorch does for every allocation under THP_MEM_ALLOC_ENABLE=1: ~25 faults, not 12,500;
//   * freed blocks are kept for reuse by an output of the same rounded size (a training step
//     asks for the same sizes every step), up to TRANSFUSION_CPU_OUTPUT_CACHE_MIB MiB in all
//     (default 256; 0 turns the cache off), oldest dropped first.
// Smaller outputs come from PyTorch's CPU allocator.
#include <ATen/ATen.h>

#include <cstddef>
#include <utility>

namespace transfusion::cpu {

// at::empty_like(like, format) (dtype and shape of `like`) on the allocator above.
at::Tensor empty_output_like(const at::Tensor& like, at::MemoryFormat format);

// (bytes cached now, cache limit in bytes).
std::pair<size_t, size_t> output_cache_info();

// Frees every cached block (outputs still alive are untouched).
void empty_output_cache();

}  // namespace transfusion::cpu
