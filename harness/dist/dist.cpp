#include "harness/dist/dist.hpp"

// The wheel is built with Gloo (and, for CUDA, NCCL); its headers guard the classes behind these
// macros. Gloo's own headers come from libgloo-dev (declarations only: the symbols are
// libtorch_cpu's, so libgloo itself is never linked).
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef SSR_WITH_CUDA
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <sstream>

namespace ssr::dist {
namespace {

using config::ConfigError;
using Clock = std::chrono::steady_clock;

// Gradient and broadcast buckets: large enough that per-call latency is amortised, small enough
// that the flat copies stay a fraction of the model (DDP's default is 25 MB; our models are small).
constexpr int64_t kBucketBytes = 4 << 20;

std::optional<std::string> var(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

int int_var(const char* name, const std::string& v, int lo, int hi) {
  size_t used = 0;
  long x = 0;
  try {
    x = std::stol(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || x < lo || x > hi)
    throw ConfigError(fmt::format("{}: expected an integer in [{}, {}], got '{}'", name, lo, hi, v));
  return static_cast<int>(x);
}

int required_int(const char* name, int lo, int hi, const char* why) {
  auto v = var(name);
  if (!v) throw ConfigError(fmt::format("{}: not set, but {}", name, why));
  return int_var(name, *v, lo, hi);
}

// One line of a collective's failure: Gloo and NCCL messages carry source paths and traces.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// Concatenates same-dtype tensors into flat buckets of about kBucketBytes: index ranges into `ts`.
std::vector<std::pair<size_t, size_t>> buckets(const std::vector<torch::Tensor>& ts) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t start = 0;
  int64_t bytes = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (i > start && (ts[i].scalar_type() != ts[start].scalar_type() || bytes >= kBucketBytes)) {
      out.emplace_back(start, i);
      start = i;
      bytes = 0;
    }
    bytes += ts[i].numel() * static_cast<int64_t>(ts[i].element_size());
  }
  if (start < ts.size()) out.emplace_back(start, ts.size());
  return out;
}

}  // namespace

std::vector<std::string> hostlist(const std::string& list) {
  auto bad = [&](const std::string& why) {
    return ConfigError(fmt::format("SLURM_JOB_NODELIST: '{}' is not a Slurm host list: {}", list, why));
  };
  // Top-level items: commas inside brackets belong to a range list.
  std::vector<std::string> items;
  int depth = 0;
  std::string item;
  for (const char c : list) {
    if (c == '[') ++depth;
    if (c == ']' && --depth < 0) throw bad("']' without '['");
    if (c == '[' && depth > 1) throw bad("nested '['");
    if (c == ',' && depth == 0) {
      items.push_back(item);
      item.clear();
    } else {
      item += c;
    }
  }
  if (depth != 0) throw bad("'[' without ']'");
  items.push_back(item);
  constexpr size_t kMaxHosts = 1 << 20;
  std::vector<std::string> hosts;
  for (const auto& it : items) {
    if (it.empty()) throw bad("an empty host name");
    // Each bracket group multiplies the names so far: rack[1-2]-n[01-02] -> rack1-n01, rack1-n02, ...
    std::vector<std::string> names = {""};
    for (size_t i = 0; i < it.size();) {
      if (it[i] != '[') {
        const size_t next = std::min(it.find('[', i), it.size());
        for (auto& n : names) n += it.substr(i, next - i);
        i = next;
        continue;
      }
      const size_t close = it.find(']', i);
      std::vector<std::string> values;
      std::stringstream ranges(it.substr(i + 1, close - i - 1));
      for (std::string r; std::getline(ranges, r, ',');) {
        const auto dash = r.find('-');
        const std::string lo = r.substr(0, dash), hi = dash == std::string::npos ? lo : r.substr(dash + 1);
        const auto digits = [](const std::string& d) {
          return !d.empty() && d.size() < 10 && d.find_first_not_of("0123456789") == std::string::npos;
        };
        if (!digits(lo) || !digits(hi)) throw bad(fmt::format("'{}' is not a number or a range a-b", r));
        const long a = std::stol(lo), b = std::stol(hi);
        if (b < a) throw bad(fmt::format("the range '{}' runs backwards", r));
        if (static_cast<size_t>(b - a) >= kMaxHosts) throw bad(fmt::format("the range '{}' is too long", r));
        // Zero padding: the width of the lower bound as written ("01-10" -> 01 ... 10).
        for (long v = a; v <= b; ++v) values.push_back(fmt::format("{:0{}d}", v, lo.size()));
      }
      if (values.empty()) throw bad("an empty range '[]'");
      if (names.size() * values.size() > kMaxHosts) throw bad("more than a million hosts");
      std::vector<std::string> product;
      for (const auto& n : names)
        for (const auto& v : values) product.push_back(n + v);
      names = std::move(product);
      i = close + 1;
    }
    hosts.insert(hosts.end(), names.begin(), names.end());
  }
  return hosts;
}

int slurm_port(int64_t job_id, int64_t step_id) {
  return 20000 + static_cast<int>(job_id % 1000) * 40 + static_cast<int>(step_id % 40);
}

Env environment() {
  Env e;
  if (auto w = var("WORLD_SIZE")) {
    e.world = int_var("WORLD_SIZE", *w, 1, 65536);
    e.source = "WORLD_SIZE";
    if (e.world == 1) return e;
    e.rank = required_int("RANK", 0, e.world - 1, "WORLD_SIZE is");
    e.local_rank = var("LOCAL_RANK") ? int_var("LOCAL_RANK", *var("LOCAL_RANK"), 0, 65535) : e.rank;
    e.master_addr = var("MASTER_ADDR").value_or("127.0.0.1");
    e.master_port = required_int("MASTER_PORT", 1, 65535, "WORLD_SIZE > 1 needs the rendezvous port");
    return e;
  }
  if (auto n = var("SLURM_NTASKS")) {
    const int world = int_var("SLURM_NTASKS", *n, 1, 65536);
    if (world == 1) return e;  // a one-task allocation: an ordinary process (it may launch --nproc itself)
    e.world = world;
    e.source = "SLURM_NTASKS";
    e.rank = required_int("SLURM_PROCID", 0, world - 1, "SLURM_NTASKS is");
    e.local_rank = var("SLURM_LOCALID") ? int_var("SLURM_LOCALID", *var("SLURM_LOCALID"), 0, 65535) : 0;
    if (auto a = var("MASTER_ADDR"))
      e.master_addr = *a;
    else if (auto l = var("SLURM_JOB_NODELIST"))
      e.master_addr = hostlist(*l).front();
    else if (auto l2 = var("SLURM_NODELIST"))
      e.master_addr = hostlist(*l2).front();
    else
      throw ConfigError("MASTER_ADDR: not set and no SLURM_JOB_NODELIST to take rank 0's host from");
    if (auto p = var("MASTER_PORT"))
      e.master_port = int_var("MASTER_PORT", *p, 1, 65535);
    else if (auto j = var("SLURM_JOB_ID"))
      e.master_port =
          slurm_port(int_var("SLURM_JOB_ID", *j, 0, 2147483647),
                     var("SLURM_STEP_ID") ? int_var("SLURM_STEP_ID", *var("SLURM_STEP_ID"), 0, 2147483647) : 0);
    else
      throw ConfigError("MASTER_PORT: not set and no SLURM_JOB_ID to derive it from");
  }
  return e;
}

void check_world(config::Config& cfg, const Env& env) {
  if (env.source.empty()) return;
  const int64_t asked = cfg.i("run.nproc");
  if (asked != 1 && asked != env.world)
    throw ConfigError(fmt::format("run.nproc: {} ranks asked, but {} says {}; make them agree or drop run.nproc", asked,
                                  env.source, env.world));
  cfg.set("run.nproc", env.world, env.source);
}

std::string backend_for(const config::Config& cfg) {
  const bool cuda = cfg.s("run.device") == "cuda";
  std::string b = cfg.s("run.backend");
#ifdef SSR_WITH_CUDA
  if (b == "auto") b = cuda ? "nccl" : "gloo";
#else
  if (b == "auto") b = "gloo";  // this build has no NCCL; Gloo stages CUDA tensors through the host
  if (b == "nccl") throw ConfigError("run.backend: nccl needs a CUDA build (make build CUDA=ON); use gloo");
#endif
  if (b == "nccl" && !cuda) throw ConfigError("run.backend: nccl needs run.device=cuda; use gloo on the CPU");
  return b;
}

std::pair<int64_t, int64_t> share(int64_t total, int rank, int world, const std::string& key) {
  if (total % world != 0)
    throw ConfigError(fmt::format("{}: {} streams do not split evenly over {} ranks; use a multiple of {}", key, total,
                                  world, world));
  return {rank * (total / world), total / world};
}

uint64_t stream_seed(int64_t seed, uint64_t stream) {
  if (stream == 0) return static_cast<uint64_t>(seed);
  // splitmix64 of (seed, stream): nearby seeds and streams give unrelated generators.
  uint64_t z = static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ULL + stream;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

void check_ranks(const config::Config& cfg) {
  const int world = static_cast<int>(cfg.i("run.nproc"));
  backend_for(cfg);  // one rank uses no backend, but a config that names one it cannot have is wrong
  const int64_t B = cfg.i("train.batch_size"), split = cfg.i("train.batch_split");
  const int64_t rows = share(B, 0, world, "train.batch_size").second;
  share(cfg.i("eval.batch_size"), 0, world, "eval.batch_size");
  if (split > rows)
    throw ConfigError(
        fmt::format("train.batch_split: {} micro-batches need at least as many streams per rank "
                    "(train.batch_size {} over {} ranks)",
                    split, B, world));
}

struct Group::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  torch::Device comm{torch::kCPU};  // where collectives run: the host for Gloo, the GPU for NCCL
  double timeout_s = 0;
  int rank = 0;
  double gather_seconds = 0;

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const {
    try {
      work->wait();
    } catch (const std::exception& e) {
      throw std::runtime_error(
          fmt::format("rank {}: {} failed (another rank died, or did not answer within "
                      "run.dist_timeout_s = {} s): {}",
                      rank, what, timeout_s, first_line(e.what())));
    }
  }
  void allreduce(torch::Tensor& flat, const char* what) {
    std::vector<torch::Tensor> ts{flat};
    wait(pg->allreduce(ts), what);
  }
};

Group::Group(const Env& env, const std::string& backend, torch::Device device, double timeout_s)
    : impl_(std::make_unique<Impl>()), rank_(env.rank), world_(env.world), backend_(backend) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  impl_->timeout_s = timeout_s;
  impl_->rank = env.rank;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = static_cast<size_t>(env.world);
    so.timeout = timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    if (backend == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank, env.world, opts);
    } else {
#ifdef SSR_WITH_CUDA
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device.index()));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world, opts);
      impl_->comm = device;
#else
      throw ConfigError("run.backend: nccl needs a CUDA build (make build CUDA=ON); use gloo");
#endif
    }
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(
        fmt::format("rank {} of {}: no process group at {}:{} within run.dist_timeout_s = {} s: {}", env.rank,
                    env.world, env.master_addr, env.master_port, timeout_s, first_line(e.what())));
  }
}

Group::~Group() = default;

void Group::broadcast(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (const auto& [lo, hi] : buckets(tensors)) {
    std::vector<torch::Tensor> parts;
    for (size_t i = lo; i < hi; ++i) parts.push_back(tensors[i].detach().reshape({-1}));
    std::vector<torch::Tensor> flat{torch::cat(parts).to(impl_->comm)};  // (bucket elements)
    impl_->wait(impl_->pg->broadcast(flat), "broadcast from rank 0");
    int64_t off = 0;
    for (size_t i = lo; i < hi; ++i) {
      const int64_t n = tensors[i].numel();
      tensors[i].detach().copy_(flat[0].narrow(0, off, n).view(tensors[i].sizes()));
      off += n;
    }
  }
}

void Group::average_gradients(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  auto defined = torch::zeros({static_cast<int64_t>(params.size())}, torch::kFloat);  // (params) 1 = has a gradient
  for (size_t i = 0; i < params.size(); ++i) defined[i] = params[i].grad().defined() ? 1.0f : 0.0f;
  defined = defined.to(impl_->comm);
  impl_->allreduce(defined, "gradient all-reduce");
  defined = defined.cpu();
  std::vector<torch::Tensor> grads;
  for (size_t i = 0; i < params.size(); ++i) {
    if (defined[i].item<float>() == 0) continue;
    auto p = params[i];
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  for (const auto& [lo, hi] : buckets(grads)) {
    std::vector<torch::Tensor> parts;
    for (size_t i = lo; i < hi; ++i) parts.push_back(grads[i].reshape({-1}));
    auto flat = torch::cat(parts).to(impl_->comm);  // (bucket elements)
    impl_->allreduce(flat, "gradient all-reduce");
    flat.div_(world_);
    int64_t off = 0;
    for (size_t i = lo; i < hi; ++i) {
      const int64_t n = grads[i].numel();
      grads[i].copy_(flat.narrow(0, off, n).view(grads[i].sizes()));
      off += n;
    }
  }
}

std::vector<double> Group::sum(const std::vector<double>& values) {
  auto t = torch::tensor(values, torch::kDouble).to(impl_->comm);  // (values)
  impl_->allreduce(t, "sum over ranks");
  t = t.cpu();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

std::vector<torch::Tensor> Group::all_gather(const torch::Tensor& t) {
  std::vector<torch::Tensor> in{t.detach().contiguous().to(impl_->comm)};
  std::vector<std::vector<torch::Tensor>> out(1);
  for (int r = 0; r < world_; ++r) out[0].push_back(torch::empty_like(in[0]));
  impl_->wait(impl_->pg->allgather(out, in), "all-gather");
  for (auto& o : out[0]) o = o.to(t.device());
  return out[0];
}

torch::Tensor Group::sum_tensor(const torch::Tensor& t) {
  auto flat = t.detach().contiguous().to(impl_->comm);
  impl_->allreduce(flat, "all-reduce");
  return flat.to(t.device());
}

// The autograd node of gather_rows. The group travels as an integer in saved_data (IValues hold
// no raw pointers); it outlives every graph the trainer builds.
struct Group::GatherRows : torch::autograd::Function<Group::GatherRows> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& t, int64_t group) {
    const auto t0 = Clock::now();
    auto* g = reinterpret_cast<Group*>(group);
    ctx->saved_data["group"] = group;
    ctx->saved_data["rows"] = t.size(0);
    auto out = torch::cat(g->all_gather(t));  // (world * rows, ...)
    g->impl_->gather_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto t0 = Clock::now();
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    const int64_t rows = ctx->saved_data["rows"].toInt();
    // Every rank's loss depends on every rank's rows: sum the gathered gradients, keep ours.
    auto total = g->sum_tensor(grads[0]);  // (world * rows, ...)
    auto mine = total.narrow(0, g->rank() * rows, rows).contiguous();
    g->impl_->gather_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    return {mine, torch::Tensor()};
  }
};

torch::Tensor Group::gather_rows(const torch::Tensor& t) {
  return GatherRows::apply(t, reinterpret_cast<int64_t>(this));
}

double Group::take_gather_seconds() {
  const double s = impl_->gather_seconds;
  impl_->gather_seconds = 0;
  return s;
}

void broadcast_module(Group& group, const torch::nn::Module& module) {
  auto tensors = module.parameters();
  for (const auto& b : module.buffers()) tensors.push_back(b);
  group.broadcast(tensors);
}

}  // namespace ssr::dist
