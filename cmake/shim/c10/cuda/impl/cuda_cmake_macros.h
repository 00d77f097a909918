#pragma once
// Shim for the compile-only CUDA check: the CPU wheel of torch ships c10's CUDA headers but not
// this generated file. A CUDA build of torch provides the real one and never sees this folder.
#define C10_CUDA_BUILD_MAIN_LIB
