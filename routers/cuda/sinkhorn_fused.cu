// See sinkhorn_fused.cuh. Layout: each warp owns rows (tokens) and each lane two columns
// (experts), so a row's logsumexp is a warp shuffle. A sweep is one pass over log K:
//   a_i = -logsumexp_j(L_ij + b_j)                    (rows exact)
//   C_j = logsumexp_i(L_ij + a_i), col_j = exp(b_j + C_j), b_j <- log(m/n) - C_j
// Column logsumexps are merged online per lane, then per block in shared memory, then across
// blocks through global scratch after a grid-wide barrier. Every block reduces the block
// partials itself in the same order, so all blocks hold the same b and take the same decision
// without a second barrier; scratch is double-buffered by sweep parity for that reason.
#include <cooperative_groups.h>

#include <cmath>

#include "routers/cuda/sinkhorn_fused.cuh"

namespace ssr::routers::cuda {
namespace {

constexpr int kWarps = 8;  // per block
constexpr int kThreads = kWarps * 32;
namespace cg = cooperative_groups;

// (mx, sum) stands for mx + log(sum); merge another such pair into it.
__device__ inline void lse_merge(float& mx, float& sum, float m2, float s2) {
  if (s2 == 0.f) return;
  if (sum == 0.f) {
    mx = m2;
    sum = s2;
  } else if (m2 > mx) {
    sum = sum * expf(mx - m2) + s2;
    mx = m2;
  } else {
    sum += s2 * expf(m2 - mx);
  }
}

// Row logsumexp of (x0, x1) over the warp; absent columns carry -inf.
__device__ inline float warp_lse(float x0, float x1) {
  float mx = fmaxf(x0, x1);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sm = expf(x0 - mx) + expf(x1 - mx);
  for (int o = 16; o > 0; o >>= 1) sm += __shfl_xor_sync(0xffffffffu, sm, o);
  return mx + logf(sm);
}

__global__ void __launch_bounds__(kThreads)
    sinkhorn_kernel(const float* __restrict__ log_k, float* __restrict__ plan, float* __restrict__ stats,
                    float* __restrict__ scratch, int64_t m, int n, float delta, int max_iter) {
  cg::grid_group grid = cg::this_grid();
  __shared__ float b[kFusedMaxExperts];             // (experts) column potentials
  __shared__ float wmax[kWarps][kFusedMaxExperts];  // (warps, experts) partial logsumexp
  __shared__ float wsum[kWarps][kFusedMaxExperts];
  __shared__ float colerr[kFusedMaxExperts];  // (experts)
  __shared__ float next_b[kFusedMaxExperts];  // (experts)
  __shared__ int done;
  __shared__ float err;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j0 = lane, j1 = lane + 32;
  const bool has0 = j0 < n, has1 = j1 < n;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kWarps;
  const float s = static_cast<float>(m) / static_cast<float>(n);
  const float log_s = logf(s);
  if (threadIdx.x < kFusedMaxExperts) b[threadIdx.x] = 0.f;
  __syncthreads();

  int sweeps = 0;
  for (int pass = 0;; ++pass) {
    const float b0 = has0 ? b[j0] : 0.f, b1 = has1 ? b[j1] : 0.f;
    float cm0 = 0.f, cs0 = 0.f, cm1 = 0.f, cs1 = 0.f;  // lane's online logsumexp of L_ij + a_i
    for (int64_t i = first_row; i < m; i += row_stride) {
      const float* row = log_k + i * n;
      const float l0 = has0 ? row[j0] : -INFINITY, l1 = has1 ? row[j1] : -INFINITY;
      const float a = -warp_lse(l0 + b0, l1 + b1);
      if (has0) lse_merge(cm0, cs0, l0 + a, 1.f);
      if (has1) lse_merge(cm1, cs1, l1 + a, 1.f);
    }
    if (has0) {
      wmax[warp][j0] = cm0;
      wsum[warp][j0] = cs0;
    }
    if (has1) {
      wmax[warp][j1] = cm1;
      wsum[warp][j1] = cs1;
    }
    __syncthreads();
    float* part = scratch + static_cast<int64_t>(pass & 1) * 2 * gridDim.x * n;  // (blocks, 2, experts)
    if (threadIdx.x < n) {
      const int j = threadIdx.x;
      float mx = 0.f, sum = 0.f;
      for (int w = 0; w < kWarps; ++w) lse_merge(mx, sum, wmax[w][j], wsum[w][j]);
      part[(2 * blockIdx.x) * n + j] = mx;
      part[(2 * blockIdx.x + 1) * n + j] = sum;
    }
    grid.sync();
    if (threadIdx.x < n) {
      const int j = threadIdx.x;
      float mx = 0.f, sum = 0.f;
      for (unsigned blk = 0; blk < gridDim.x; ++blk)
        lse_merge(mx, sum, part[(2 * blk) * n + j], part[(2 * blk + 1) * n + j]);
      const float c = mx + logf(sum);  // -inf when the column is empty, NaN when L is
      colerr[j] = fabsf(expf(b[j] + c) - s);
      next_b[j] = log_s - c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float e = 0.f;
      for (int j = 0; j < n; ++j) e += colerr[j];
      err = e / static_cast<float>(m);
      done = !(err > delta) || sweeps >= max_iter;  // NaN stops too
    }
    __syncthreads();
    if (done) break;
    if (threadIdx.x < n) b[threadIdx.x] = next_b[threadIdx.x];
    ++sweeps;
    __syncthreads();
  }

  // The plan of (a(b), b): a row softmax of L + b, so rows sum to 1 exactly.
  const float b0 = has0 ? b[j0] : 0.f, b1 = has1 ? b[j1] : 0.f;
  for (int64_t i = first_row; i < m; i += row_stride) {
    const float* row = log_k + i * n;
    const float x0 = has0 ? row[j0] + b0 : -INFINITY, x1 = has1 ? row[j1] + b1 : -INFINITY;
    const float lse = warp_lse(x0, x1);
    if (has0) plan[i * n + j0] = expf(x0 - lse);
    if (has1) plan[i * n + j1] = expf(x1 - lse);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    stats[0] = static_cast<float>(sweeps);
    stats[1] = err;
  }
}

}  // namespace

int fused_sinkhorn_blocks(int64_t m) {
  int device = 0, sms = 1, per_sm = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sinkhorn_kernel, kThreads, 0);
  // At least 8 rows per warp: below that the grid barrier costs more than the rows.
  const int64_t wanted = (m + 8 * kWarps - 1) / (8 * kWarps);
  const int64_t cap = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  return static_cast<int>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

cudaError_t fused_log_sinkhorn(const float* log_k, float* plan, float* stats, float* scratch, int blocks, int64_t m,
                               int n, float delta, int max_iter, cudaStream_t stream) {
  if (n < 1 || n > kFusedMaxExperts || m < 1 || blocks < 1) return cudaErrorInvalidValue;
  void* args[] = {&log_k, &plan, &stats, &scratch, &m, &n, &delta, &max_iter};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(sinkhorn_kernel), dim3(blocks), dim3(kThreads), args,
                                     0, stream);
}

}  // namespace ssr::routers::cuda
