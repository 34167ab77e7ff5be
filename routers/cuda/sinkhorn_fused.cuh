// The fused log-domain Sinkhorn solver for CUDA: one cooperative kernel runs every sweep and its
// convergence check on the device, so a solve costs one launch and no host synchronisation.
// Plain CUDA (no LibTorch headers) so that nvcc compiles it quickly; routers/sinkhorn.cpp wraps it.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace ssr::routers::cuda {

constexpr int kFusedMaxExperts = 64;  // two columns per lane of a warp

// Blocks the kernel will use for m tokens on the current device (all co-resident).
int fused_sinkhorn_blocks(int64_t m);

// Floats of device scratch the solve needs (per-block column partials, double-buffered).
inline int64_t fused_sinkhorn_scratch_floats(int blocks, int n) { return 2LL * 2 * blocks * n; }

// log_k: (m, n) row-major float32, log K = C / xi - 1. Writes plan (m, n) with rows summing to 1
// and columns to m / n, and stats = {sweeps run, column error sum_j |col_j - m/n| / m}.
// Stops when the column error is <= delta, is not finite, or after max_iter sweeps.
cudaError_t fused_log_sinkhorn(const float* log_k, float* plan, float* stats, float* scratch, int blocks, int64_t m,
                               int n, float delta, int max_iter, cudaStream_t stream);

}  // namespace ssr::routers::cuda
