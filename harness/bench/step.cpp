// `ssr bench step`: the training loop's own step (train::Step over the LM task: data, forward, backward, routing
// statistics at logging steps, clipping, the run's optimizer) of one model config for every router, or of every job
// of a sweep file, timed round-robin so that drift of a shared machine hits all cases
// alike. Overhead is the per-round ratio to the baseline case, averaged, with a t-interval over rounds: never a time
// from another machine. Token ids are synthetic: timing does not depend on the text. The session goes into the run
// store under each case's config hash, so the overhead columns and figures of `ssr report` use it for the sweep's jobs.
#include <fmt/format.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <ostream>

#include "analysis/report.hpp"
#include "harness/bench/bench.hpp"
#include "harness/config/config.hpp"
#include "harness/data/corpus.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/sweep.hpp"
#include "harness/bench/trace.hpp"
#include "harness/train/lm_task.hpp"
#include "harness/train/schedule.hpp"
#include "harness/train/step.hpp"

#include "models/switch_lm.hpp"

#ifdef SSR_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace ssr::bench {
namespace {

// Bytes the CUDA caching allocator has handed out in tensors: now, or the peak since the last
// reset. LibTorch keeps no such count on CPU, where both are 0.
int64_t device_bytes(const torch::Device& device, bool peak) {
#ifdef SSR_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device());
    const auto& a = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    return peak ? a.peak : a.current;
  }
#endif
  return 0;
}
void reset_device_peak(const torch::Device& device) {
#ifdef SSR_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(c10::cuda::current_device());
#endif
}

using Clock = std::chrono::steady_clock;

struct Case {
  std::string label;  // router group or sweep job description
  sweep::Job job;     // its labels (none in config mode) and resolved config
  const config::Config& cfg() const { return job.config; }
  size_t baseline = 0;  // index of the case its overhead is measured against
  // The training loop's own task, optimizer and step, over bench_corpus's token ids; the task
  // keeps a reference to its config, which therefore lives here, not in a moved vector slot.
  std::unique_ptr<config::Config> run_cfg;
  std::unique_ptr<train::Task> task;
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::unique_ptr<train::Step> update;
  int64_t steps = 0;       // updates made
  std::vector<double> ms;  // one per timed round
  // Device memory as if the case ran alone (every case's model stays resident during the session):
  // what it keeps between steps (weights, gradients, Adam moments, caches) + its step's transient peak.
  int64_t resident_bytes = 0, transient_bytes = 0;
  int64_t peak_bytes() const { return resident_bytes + transient_bytes; }
  int64_t tokens() const {
    return cfg().i("train.batch_size") / cfg().i("train.batch_split") * cfg().i("train.batch_split") *
           cfg().i("train.seq_len");
  }
};

// Sweep mode: the jobs of a sweep file (optionally filtered by axis=value), each paired with the
// job that has the same labels but the file's first variant, as `ssr report` pairs them.
std::vector<Case> sweep_cases(const StepBenchArgs& args) {
  const auto spec = sweep::load(args.config, args.overrides, args.scale);
  std::vector<std::pair<std::string, std::string>> where;
  for (const auto& w : args.where) {
    const auto eq = w.find('=');
    if (eq == std::string::npos || eq == 0)
      throw config::ConfigError(fmt::format("--where {}: expected AXIS=VALUE", w));
    const auto axis = w.substr(0, eq);
    if (std::none_of(spec.jobs.begin(), spec.jobs.end(), [&](const sweep::Job& j) { return !j.label(axis).empty(); }))
      throw config::ConfigError(fmt::format("--where {}: {} has no axis {} (ssr sweep {} --dry-run lists the jobs)", w,
                                            args.config, axis, args.config));
    where.emplace_back(axis, w.substr(eq + 1));
  }
  std::vector<Case> cases;
  for (const auto& j : spec.jobs) {
    if (std::any_of(where.begin(), where.end(), [&](const auto& kv) { return j.label(kv.first) != kv.second; }))
      continue;
    cases.push_back(Case{j.describe(), j});
  }
  if (cases.empty()) throw config::ConfigError(fmt::format("--where: no job of {} matches", args.config));
  const std::string base_variant = spec.jobs.front().label("variant");
  for (size_t i = 0; i < cases.size(); ++i) {
    if (base_variant.empty()) break;  // no variant axis: everything against the first job
    bool found = false;
    for (size_t b = 0; b < cases.size() && !found; ++b)
      if (cases[i].job.pairs_with(cases[b].job, "variant", base_variant)) cases[i].baseline = b, found = true;
    if (!found)
      throw config::ConfigError(
          fmt::format("--where: job {} has no {} job to compare with; keep variant={} in the selection", cases[i].label,
                      base_variant, base_variant));
  }
  return cases;
}

std::vector<Case> router_cases(const StepBenchArgs& args) {
  std::vector<std::string> routers = args.routers;
  if (routers.empty())
    routers = {"vanilla", "lb", "zloss", "noisy", "sinkhorn", "ssr_l", "ssr_s", "ssr_l_noise", "ssr_s_noise"};
  if (std::find(routers.begin(), routers.end(), "vanilla") == routers.end()) routers.insert(routers.begin(), "vanilla");
  std::vector<Case> cases;
  for (const auto& r : routers) {
    auto overrides = args.overrides;
    overrides.push_back("router=" + r);
    sweep::Job job;
    job.config = config::resolve(args.config, overrides);
    cases.push_back(Case{r, job});
  }
  // vanilla first: every router is measured against it
  std::stable_partition(cases.begin(), cases.end(), [](const Case& c) { return c.label == "vanilla"; });
  return cases;
}

// The vocabulary training would build: from the data when its files are here (the encoded
// corpus is cached), else the paper's (WikiText-103 267,735 words; enwik8 205 symbols).
std::pair<int64_t, std::string> data_vocab(const config::Config& cfg) {
  auto clean = cfg;
  clean.set("eval.splits", nlohmann::json::array({"valid", "test"}), "bench step");
  try {
    return {data::load_corpus(clean).vocab_size(), "from " + cfg.s("data.dir")};
  } catch (const config::ConfigError&) {
    const bool bytes = cfg.s("data.format") == "byte";
    return {bytes ? 205 : 267735,
            fmt::format("{}'s; {} is not here", bytes ? "enwik8" : "WikiText-103", cfg.s("data.dir"))};
  }
}

// Dense peak TFLOP/s of the cards whose figures we know (NVIDIA's H100/H200 SXM data sheets:
// 989 bf16 tensor, 67 fp32), for the MFU column; 0 where unknown (and on CPU).
double known_peak_tflops(const torch::Device& device, bool bf16) {
#ifdef SSR_WITH_CUDA
  if (device.is_cuda()) {
    const std::string name = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index())->name;
    if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return bf16 ? 989.4 : 66.9;
  }
#else
  (void)device, (void)bf16;
#endif
  return 0;
}

// Which kernel scaled_dot_product_attention picks for the attention of model.attn_impl=sdpa
// (its query, key/value and mask shapes and dtype), as PyTorch's own dispatcher decides.
std::string attention_kernel(const config::Config& cfg, const torch::Device& device) {
  if (cfg.s("model.attn_impl") != "sdpa") return "reference (matmul, unskew, softmax, skew, matmul)";
  const int64_t b = cfg.i("train.batch_size") / cfg.i("train.batch_split"), h = cfg.i("model.n_heads");
  const int64_t m = cfg.i("train.seq_len"), total = cfg.i("model.attn_span") + m, dh = cfg.i("model.d_model") / h;
  const auto opts = torch::TensorOptions().device(device).dtype(cfg.s("train.precision") == "bf16" ? torch::kBFloat16
                                                                                                   : torch::kFloat);
  auto q = torch::empty({b, h, m, dh}, opts), kv = torch::empty({b, h, total, dh}, opts);
  auto mask = torch::empty({b, h, m, total}, opts);
  const auto choice =
      static_cast<at::SDPBackend>(at::_fused_sdp_choice(q, kv, kv, mask, cfg.f("model.dropout"), false, 1.0));
  switch (choice) {
    case at::SDPBackend::math: return fmt::format("sdpa: math (head dim {})", dh);
    case at::SDPBackend::flash_attention: return "sdpa: flash";
    case at::SDPBackend::efficient_attention: return "sdpa: memory-efficient";
    case at::SDPBackend::cudnn_attention: return "sdpa: cuDNN";
    default: return "sdpa: other";
  }
}

// Token ids for the timed steps, drawn at random from `vocab` ids (timing does not depend on the
// text): one stream per row of the batch, long enough that no stream wraps during the session
// (a wrap zeroes the caches, which the loop does only once per pass over the data).
data::Corpus bench_corpus(int64_t vocab, int64_t streams, int64_t seq_len, int64_t steps, torch::Generator& gen) {
  data::Corpus c;
  c.format = "word";
  c.vocab.reserve(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) c.vocab.push_back(fmt::format("t{}", i));
  c.splits["train"] = torch::randint(vocab, {streams * (seq_len * (steps + 2) + 1)}, gen);  // (tokens)
  return c;
}

}  // namespace

int run_step_bench(const StepBenchArgs& args, std::ostream& out) {
  const bool sweep_mode = config::is_sweep_file(args.config);
  if (!sweep_mode && (!args.scale.empty() || !args.where.empty()))
    throw config::ConfigError(fmt::format("--scale/--where: {} is a run config, not a sweep file", args.config));
  if (sweep_mode && !args.routers.empty())
    throw config::ConfigError(
        fmt::format("--routers: {} is a sweep file; its variants are the cases (filter with --where)", args.config));
  std::vector<Case> cases = sweep_mode ? sweep_cases(args) : router_cases(args);
  // Stored with each case: reports compare only timings of one thread count (a timed key).
  if (args.threads > 0)
    for (auto& c : cases) c.job.config.set("run.threads", args.threads, "--threads");

  const auto& base = cases.front().cfg();
  for (const auto& c : cases) {
    if (c.cfg().s("model.arch") != "switch_lm")
      throw config::ConfigError(fmt::format("model.arch: {} ({}): bench step times the language model only",
                                            c.cfg().s("model.arch"), c.label));
    if (c.cfg().s("run.device") != base.s("run.device"))
      throw config::ConfigError(fmt::format("run.device: {} has {}, {} has {}: one bench times one device",
                                            cases.front().label, base.s("run.device"), c.label,
                                            c.cfg().s("run.device")));
    if (c.cfg().i("run.threads") != base.i("run.threads"))
      throw config::ConfigError(
          fmt::format("run.threads: {} has {}, {} has {}: one bench runs one thread count (or pass --threads)",
                      cases.front().label, base.i("run.threads"), c.label, c.cfg().i("run.threads")));
    if (c.cfg().i("train.batch_split") > c.cfg().i("train.batch_size"))
      throw config::ConfigError(
          fmt::format("train.batch_split: more micro-batches than train.batch_size streams ({})", c.label));
  }
  if (base.i("run.threads") > 0) torch::set_num_threads(static_cast<int>(base.i("run.threads")));
  const torch::Device device(base.s("run.device") == "cuda" ? torch::kCUDA : torch::kCPU);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw config::ConfigError("run.device: cuda requested but no CUDA device is available (use run.device=cpu)");
  const auto [vocab, vocab_source] =
      args.vocab > 0 ? std::make_pair(args.vocab, std::string("--vocab")) : data_vocab(base);
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };

  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(args.seed);
  // The loop's step, at the loop's logging cadence (routing statistics at logging steps).
  auto step = [&](Case& c) {
    sync();
    const int64_t at_start = device_bytes(device, false);
    reset_device_peak(device);
    const int64_t n = ++c.steps;
    const bool log_step = n % c.run_cfg->i("run.log_every") == 0;
    c.update->run(n, log_step);
    if (log_step)
      for (auto& layer : c.task->moe_layers()) layer->take_stats();
    sync();
    c.transient_bytes = std::max(c.transient_bytes, device_bytes(device, true) - at_start);
  };
  // Each case takes one untimed step as it is built, so that what it keeps resident (its Adam
  // moments appear at that step) is counted before the next case is built. The allocator counts
  // only once CUDA is initialised: a first allocation does that.
  if (device.is_cuda()) torch::empty({1}, torch::TensorOptions().device(device));
  for (auto& c : cases) {
    sync();
    const int64_t before = device_bytes(device, false);
    // The task trains on bench_corpus: no validation, no evaluation splits, one process. These
    // keys are the session's, not the case's: it is stored under the case's own config hash.
    c.run_cfg = std::make_unique<config::Config>(c.cfg());
    c.run_cfg->set("train.eval_every", 0, "bench step");
    c.run_cfg->set("eval.splits", nlohmann::json::array(), "bench step");
    c.run_cfg->set("run.seed", static_cast<int64_t>(args.seed), "bench step");
    c.run_cfg->set("run.nproc", int64_t{1}, "bench step");  // one process times one rank's step
    const int64_t streams = c.cfg().i("train.batch_size");
    // Its steps: the first, the warm-up and timed rounds, the sync count's and the profile's.
    const int64_t steps = 1 + args.warmup + args.repeats + 1 + (args.trace.empty() ? 0 : args.trace_steps);
    c.task = train::make_lm_task(*c.run_cfg, train::Options{},
                                 bench_corpus(vocab, streams, c.cfg().i("train.seq_len"), steps, gen));
    c.opt = train::make_optimizer(*c.run_cfg, c.task->model().parameters(), c.task->no_decay_parameters());
    c.update = std::make_unique<train::Step>(*c.run_cfg, *c.task, *c.opt);
    c.task->model().train();
    step(c);
    c.resident_bytes = device_bytes(device, false) - before;
  }

  const int64_t params = [&] {
    int64_t n = 0;
    for (const auto& p : cases.front().task->model().parameters()) n += p.numel();
    return n;
  }();
  out << fmt::format(
      "# ssr bench step: {}{} ({} parameters in {}), {} tokens per step in {} micro-batch(es), vocab {} ({}), "
      "device {}, {}, {} threads; 1 + {} warm-up + {} timed rounds, {} cases interleaved\n\n",
      args.config, args.scale.empty() ? "" : " --scale " + args.scale, params, cases.front().label,
      cases.front().tokens(), base.i("train.batch_split"), vocab, vocab_source, base.s("run.device"),
      base.s("train.precision"), torch::get_num_threads(), args.warmup, args.repeats, cases.size());
  for (int w = 0; w < args.warmup; ++w)
    for (auto& c : cases) step(c);
  const auto load_before = store::machine_load();
  for (int r = 0; r < args.repeats; ++r)
    for (auto& c : cases) {
      auto t0 = Clock::now();
      step(c);
      c.ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }

  // The load the timing ran under: this benchmark counts itself, so a machine with nothing else to
  // do shows about 1 / cores; above 1 per core other work competed for the cores.
  std::optional<double> load = store::machine_load();
  if (load && load_before) load = std::max(*load, *load_before);
  if (load)
    out << fmt::format("machine load: {:.2f} per core (1-minute load average over {} online cores){}\n\n", *load,
                       sysconf(_SC_NPROCESSORS_ONLN),
                       *load > 1 ? "; above 1: other work competed for the cores, so the times below are not this "
                                   "machine's speed"
                                 : "");
  const bool memory = device.is_cuda();
  const bool bf16 = base.s("train.precision") == "bf16";
  const double peak = args.peak_tflops > 0 ? args.peak_tflops : known_peak_tflops(device, bf16);
  // One more step of each case under the sync counter (CUDA): what a step of `ssr train` waits for.
  std::vector<int64_t> syncs;
  for (auto& c : cases) {
    SyncCounter counter(device);
    step(c);
    syncs.push_back(counter.count());
  }
  out << fmt::format(
      "| {} | step ms (median) | tokens/s | overhead (mean of per-round ratios, 95 % CI) | TFLOP/s by count |{}{}{}\n",
      sweep_mode ? "job" : "router", peak > 0 ? " MFU |" : "", memory ? " peak memory GiB (alone) |" : "",
      device.is_cuda() ? " host syncs / step |" : "");
  out << fmt::format("|---|---|---|---|---|{}{}{}\n", peak > 0 ? "---|" : "", memory ? "---|" : "",
                     device.is_cuda() ? "---|" : "");
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    auto sorted = c.ms;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[sorted.size() / 2];
    std::vector<double> ratios;
    for (size_t k = 0; k < c.ms.size(); ++k) ratios.push_back(c.ms[k] / cases[c.baseline].ms[k] - 1.0);
    const auto ci = analysis::estimate(ratios);
    const std::string overhead = c.baseline == i ? "–"
                                                 : fmt::format("{:+.1f} % ± {:.1f} vs {}", 100 * ci.mean, 100 * ci.ci,
                                                               cases[c.baseline].job.label("variant").empty()
                                                                   ? cases[c.baseline].label
                                                                   : cases[c.baseline].job.label("variant"));
    const double tflops = models::step_flops(c.cfg(), vocab).back().second / (median / 1000.0) / 1e12;
    out << fmt::format("| {} | {:.2f} | {:.0f} | {} | {:.3f} |{}{}{}\n", c.label, median,
                       static_cast<double>(c.tokens()) / (median / 1000.0), overhead, tflops,
                       peak > 0 ? fmt::format(" {:.1f} % |", 100 * tflops / peak) : "",
                       memory ? fmt::format(" {:.2f} |", static_cast<double>(c.peak_bytes()) / (1 << 30)) : "",
                       device.is_cuda() ? fmt::format(" {} |", syncs[i]) : "");
  }
  {
    const auto flops = models::step_flops(base, vocab);
    std::string parts;
    for (const auto& [name, f] : flops) parts += fmt::format("{}{} {:.3g}", parts.empty() ? "" : ", ", name, f / 1e12);
    out << fmt::format("\nTFLOP per step by count ({}; docs/bench/flops.md){}\n", parts,
                       peak > 0 ? fmt::format("; MFU against {:.1f} TFLOP/s", peak) : "");
    std::set<std::string> kernels;
    for (const auto& c : cases) kernels.insert(attention_kernel(c.cfg(), device));
    for (const auto& k : kernels) out << "attention: " << k << "\n";
  }
  if (!args.trace.empty()) {
    std::vector<Profile> profiles;
    for (size_t i = 0; i < cases.size(); ++i) {
      std::filesystem::path path(args.trace);
      if (cases.size() > 1)
        path = path.parent_path() / fmt::format("{}-{}{}", path.stem().string(), i + 1, path.extension().string());
      if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
      profiles.push_back(profile_steps([&] { step(cases[i]); }, args.trace_steps, device, sync, path.string()));
      out << fmt::format("{}trace of {}: {}\n", i == 0 ? "\n" : "", cases[i].label, path.string());
    }
    // Rows: every phase any case entered; forward's parts are indented under it.
    std::vector<std::string> names;
    for (const auto& p : profiles)
      for (const auto& ph : p.phases)
        if (std::find(names.begin(), names.end(), ph.name) == names.end()) names.push_back(ph.name);
    static const std::set<std::string> in_forward = {"attention", "router", "experts", "routing_stats", "output_layer"};
    out << fmt::format("\n{} per step ({}, {} profiled steps{})\n\n| phase |",
                       device.is_cuda() ? "GPU kernel ms" : "ms",
                       device.is_cuda() ? "kernels by the scope that launched them" : "wall time of each scope",
                       args.trace_steps, device.is_cuda() ? "" : "");
    for (const auto& c : cases) out << " " << c.label << " |";
    out << "\n|---|";
    for (size_t i = 0; i < cases.size(); ++i) out << "---|";
    out << "\n";
    auto value = [](const Profile& p, const std::string& name) {
      for (const auto& ph : p.phases)
        if (ph.name == name) return ph.ms;
      return 0.0;
    };
    for (const auto& name : names) {
      out << "| " << (in_forward.count(name) ? "  " : "") << name << " |";
      for (const auto& p : profiles) out << fmt::format(" {:.2f} |", value(p, name));
      out << "\n";
    }
    out << "| step (wall, profiler on) |";
    for (const auto& p : profiles) out << fmt::format(" {:.2f} |", p.step_ms);
    out << "\n";
  }
  if (!args.csv.empty()) {
    std::filesystem::path p(args.csv);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    std::FILE* f = std::fopen(args.csv.c_str(), "w");
    if (!f) throw config::ConfigError(fmt::format("--csv: cannot write {}", args.csv));
    std::fputs("case,round,step_ms,device,threads\n", f);
    for (const auto& c : cases)
      for (size_t k = 0; k < c.ms.size(); ++k)
        std::fputs(
            fmt::format("\"{}\",{},{:.4f},{},{}\n", c.label, k, c.ms[k], base.s("run.device"), torch::get_num_threads())
                .c_str(),
            f);
    std::fclose(f);
    out << fmt::format("\nper-round times: {}\n", args.csv);
  }
  if (!args.db.empty()) {
    std::vector<store::BenchCase> rows;
    for (const auto& c : cases) {
      store::BenchCase bc;
      bc.label = c.label;
      bc.config_hash = c.cfg().hash();
      bc.config = c.cfg().to_json();
      bc.tokens_per_step = c.tokens();
      for (double ms : c.ms) bc.seconds.push_back(ms / 1000.0);
      if (memory) bc.peak_bytes = c.peak_bytes();
      bc.load_per_core = load;
      rows.push_back(std::move(bc));
    }
    store::Store st(args.db);
    const auto id = st.add_bench_session(args.command, store::this_machine(base.s("run.device")), args.warmup, rows);
    out << fmt::format("\nstored as bench session {} in {} (reports with overhead columns use it)\n", id, args.db);
  }
  return 0;
}

}  // namespace ssr::bench
