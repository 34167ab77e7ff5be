// Data-parallel process groups on torch c10d: where this process sits in a job (ranks from the
// launcher's, torchrun's or Slurm's environment), and the collectives the trainer needs, on
// ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA builds) with a TCPStore rendezvous hosted by
// rank 0. Every collective must be called by all ranks in the same order.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::dist {

// This process's place in a job, as a launcher describes it.
struct Env {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr;  // where rank 0 hosts the rendezvous store
  int master_port = 0;
  std::string source;  // the variable world came from ("WORLD_SIZE", "SLURM_NTASKS"); "" for one process
};

// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (ssr train --nproc, torchrun), else
// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID with the first host of SLURM_JOB_NODELIST and the port
// slurm_port gives (MASTER_ADDR/MASTER_PORT over both). No such variables: one process. Malformed
// values throw ConfigError.
Env environment();

// A Slurm host list expanded in order: "rack[1-2]-n[01-02],login" -> rack1-n01, rack1-n02,
// rack2-n01, rack2-n02, login (several bracket groups, zero padding as the lower bound is written,
// suffixes). Throws ConfigError naming SLURM_JOB_NODELIST for a malformed list.
std::vector<std::string> hostlist(const std::string& list);

// The rendezvous port of step `step_id` of Slurm job `job_id`: 20000 + 40 (job mod 1000) + step mod
// 40, so the steps of one job (up to 40 at once) never share a port, and two jobs share one only
// when their ids agree mod 1000 and they meet on one node. MASTER_PORT overrides it.
int slurm_port(int64_t job_id, int64_t step_id);

// Reconciles run.nproc with the environment: a process started as one rank of W sets
// run.nproc = W (a different explicit run.nproc is an error).
void check_world(config::Config& cfg, const Env& env);

// run.backend resolved for run.device: auto is nccl on cuda, gloo on cpu. Throws ConfigError for
// nccl on cpu or in a build without CUDA.
std::string backend_for(const config::Config& cfg);

// Rows [first, first + count) of `total` streams that rank `rank` of `world` reads: the
// reference's contiguous share [r*B/W, (r+1)*B/W). Throws ConfigError (naming `key`) unless W
// divides total, so that every rank's loss weighs the same in the gradient average.
std::pair<int64_t, int64_t> share(int64_t total, int rank, int world, const std::string& key);

// Seed of random stream `stream` of a run: stream 0 is the run's seed itself (rank 0's generator,
// so a one-process run draws what it always drew); others are decorrelated mixes of it.
uint64_t stream_seed(int64_t seed, uint64_t stream);
constexpr uint64_t kDataStream = 1ULL << 32;    // data wrap offsets, alike on every rank
constexpr uint64_t kSharedStream = 2ULL << 32;  // router.global_batch routing, alike on every rank
constexpr uint64_t kRouterStream = 3ULL << 32;  // routers' own draws: kRouterStream + rank

// What a launcher checks before starting run.nproc ranks: share() of train.batch_size and
// eval.batch_size, at least train.batch_split streams per rank, and (nproc > 1) backend_for().
void check_ranks(const config::Config& cfg);

class Group {
 public:
  // Connects to the other ranks; throws when they do not all arrive within the timeout.
  Group(const Env& env, const std::string& backend, torch::Device device, double timeout_s);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  const std::string& backend() const { return backend_; }

  // Overwrites every tensor with rank 0's values (flattened in buckets).
  void broadcast(const std::vector<torch::Tensor>& tensors);
  // Averages the gradients of `params` over ranks in flat buckets of a few MB. A gradient that
  // is undefined on some ranks counts as zero there; undefined on every rank it stays undefined,
  // so the optimizer skips it exactly as a one-process run over the global batch would.
  void average_gradients(const std::vector<torch::Tensor>& params);
  // Element-wise sums over ranks.
  std::vector<double> sum(const std::vector<double>& values);
  // Element-wise sum over ranks of t (any shape), on t's device.
  torch::Tensor sum_tensor(const torch::Tensor& t);
  // Every rank's t (equal shapes), in rank order.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& t);
  // all_gather with autograd: the gradient of the gathered rows is summed over ranks and each
  // rank keeps its own rows' part. Adds its time (both directions) to gather_seconds.
  torch::Tensor gather_rows(const torch::Tensor& t);
  // Seconds spent in gather_rows since the last call, then reset.
  double take_gather_seconds();

  struct Impl;

 private:
  struct GatherRows;
  std::unique_ptr<Impl> impl_;
  int rank_, world_;
  std::string backend_;
};

// Overwrites the module's parameters and buffers with rank 0's.
void broadcast_module(Group& group, const torch::nn::Module& module);

}  // namespace ssr::dist
