#include "harness/train/lm_task.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/record_function.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <functional>
#include <map>
#include <optional>

#include "harness/data/corpus.hpp"
#include "harness/train/memory.hpp"
#include "models/precision.hpp"
#include "models/switch_lm.hpp"
#include "routers/registry.hpp"

namespace ssr::train {
namespace {

torch::Device device_of(const config::Config& cfg, int local_rank) {
  if (cfg.s("run.device") == "cuda") {
    if (!torch::cuda::is_available())
      throw config::ConfigError("run.device: cuda requested but no CUDA device is available (use run.device=cpu)");
    const auto n = static_cast<int>(torch::cuda::device_count());
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % n));
  }
  return torch::Device(torch::kCPU);
}

// The metric a split reports: bits per character for byte-level data, perplexity otherwise.
std::pair<std::string, double> headline(const config::Config& cfg, double nll) {
  if (cfg.s("data.format") == "byte") return {"bpc", nll / std::log(2.0)};
  return {"ppl", std::exp(nll)};
}

// Splits the B streams into batch_split contiguous row groups (the reference's micro-batches).
std::vector<std::pair<int64_t, int64_t>> row_groups(int64_t streams, int64_t parts) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t j = 0; j < parts; ++j) {
    int64_t lo = streams * j / parts, hi = streams * (j + 1) / parts;
    if (hi > lo) out.emplace_back(lo, hi - lo);
  }
  return out;
}

void to_device(models::LMState& s, torch::Device device) {
  for (auto& c : s.cache) c = c.to(device);
}

// Rank r's generators and micro-batch caches are stored under the names a one-process run over
// the same global batch with world * batch_split micro-batches would use (its group r * split + j
// holds the same streams), so rank 0's names are those of a one-process checkpoint.
std::string gen_key(const std::string& base, int rank) {
  return rank == 0 ? base : fmt::format("{}_rank{}", base, rank);
}

class LMTask final : public Task {
 public:
  LMTask(const config::Config& cfg, const Options& opts, std::optional<data::Corpus> corpus)
      : cfg_(cfg),
        rank_(opts.dist.rank),
        world_(opts.dist.world),
        device_(device_of(cfg, opts.dist.local_rank)),
        corpus_(load(cfg, std::move(corpus))),
        B_(cfg.i("train.batch_size")),
        M_(cfg.i("train.seq_len")),
        split_(cfg.i("train.batch_split")),
        model_(nullptr) {
    if (cfg.i("run.nproc") != world_)
      throw config::ConfigError(
          fmt::format("run.nproc: {} ranks asked, but this process is one of {}; `ssr train` "
                      "starts the ranks (or srun/torchrun with RANK and WORLD_SIZE)",
                      cfg.i("run.nproc"), world_));
    dist::check_ranks(cfg);
    std::tie(row0_, rows_) = dist::share(B_, rank_, world_, "train.batch_size");
    std::tie(eval_row0_, eval_rows_) = dist::share(cfg.i("eval.batch_size"), rank_, world_, "eval.batch_size");
    check_lm_memory(cfg, device_, rows_, corpus_.vocab_size());
    for (const auto& name : cfg.strings("eval.splits"))
      if (!corpus_.splits.count(name))
        throw config::ConfigError(fmt::format("eval.splits: no split '{}' in {}", name, cfg.s("data.dir")));
    model_ = models::SwitchLM(cfg, corpus_.vocab_size());
    model_->to(device_);
    // Every split is batched here, so that one too short for its streams stops the job before
    // the run row exists instead of after training.
    train_walk_.emplace(walk("train", B_, false, "train.batch_size streams"));
    const int64_t eval_every = cfg.i("train.eval_every");
    if (eval_every > 0) {
      if (!corpus_.splits.count("valid"))
        throw config::ConfigError(
            "train.eval_every: partial validation needs a valid split (set data.valid or data.holdout, or "
            "train.eval_every=0)");
      valid_walk_.emplace(
          walk("valid", B_, false, "partial validation every train.eval_every steps reads train.batch_size streams"));
    }
    // The reference validates on a tenth of an iteration's steps, at most one pass of the stream.
    valid_segments_ =
        cfg.i("train.eval_segments") > 0 || !valid_walk_
            ? cfg.i("train.eval_segments")
            : std::min(std::max<int64_t>(1, eval_every / 10), (valid_walk_->stream_length() + M_ - 1) / M_);
    for (const auto& name : cfg.strings("eval.splits"))
      eval_walks_.emplace(
          name, walk(name, cfg.i("eval.batch_size"), cfg.b("data.eval_every_token"), "eval.batch_size streams"));
    groups_ = row_groups(rows_, split_);  // this rank's micro-batches, as rows of the global batch
    for (auto& g : groups_) g.first += row0_;
    for (const auto& [lo, n] : groups_) states_.push_back(model_->initial_state(n));
    valid_state_ = model_->initial_state(rows_);
    for (auto& s : states_) to_device(s, device_);
    to_device(valid_state_, device_);

    // Routers draw from their own stream, so that one router's coin or noise changes neither the
    // dropout masks nor the data of a run (SSR that never fires trains vanilla's model). Routing
    // the gathered global batch, every rank must decide alike: one stream for all ranks.
    global_routing_ = world_ > 1 && cfg.b("router.global_batch");
    if (global_routing_ && routers::router_spec(cfg.s("router.name")).caps.token_ids)
      throw config::ConfigError(
          fmt::format("router.global_batch: {} decides each token by its id alone, so there is "
                      "no global batch to route; set router.global_batch=false",
                      cfg.s("router.name")));
    router_gen_ =
        generator(dist::stream_seed(seed(), global_routing_ ? dist::kSharedStream : dist::kRouterStream + rank_));
    for (auto& m : model_->moe_layers) m->use_router_generator(router_gen_);
    if (world_ > 1) {
      group_ = std::make_unique<dist::Group>(opts.dist, dist::backend_for(cfg), device_, cfg.f("run.dist_timeout_s"));
      dist::broadcast_module(*group_, *model_);
      if (global_routing_)
        for (auto& m : model_->moe_layers)
          m->route_globally([g = group_.get()](const torch::Tensor& t) { return g->gather_rows(t); }, rank_,
                            router_gen_);
    }
  }

  torch::nn::Module& model() override { return *model_; }
  std::vector<models::MoE> moe_layers() override { return model_->moe_layers; }
  std::vector<torch::Tensor> no_decay_parameters() override { return model_->no_decay_parameters(); }
  torch::Device device() const override { return device_; }
  store::RunInfo run_info() const override {
    store::RunInfo info = store::this_machine(cfg_.s("run.device"));
    info.world_size = world_;
    if (group_) info.backend = group_->backend();
    return info;
  }
  dist::Group* group() override { return group_.get(); }
  int rank() const override { return rank_; }
  std::string unit() const override { return "tok"; }
  std::string rate_metric() const override { return "tokens_per_s"; }
  std::string describe() const override {
    return fmt::format("{} steps of {} x {} tokens", cfg_.i("train.steps"), B_, M_);
  }

  StepResult forward_backward(int64_t /*step*/, bool bf16) override {
    StepResult r;
    auto t0 = Clock::now();
    data::StreamBatcher::Batch batch;
    {
      RECORD_USER_SCOPE("ssr::data");  // the phases of `ssr bench step --trace`
      batch = train_walk_->next(data_gen_);
      if (batch.reset)
        for (auto& s : states_)
          for (auto& c : s.cache) c.zero_();
    }
    r.t_data = seconds_since(t0);
    // Summed on the device in float64 (the same sum the host made of each micro-batch's value) and
    // read once: one device-to-host copy a step instead of two per micro-batch.
    auto sums = torch::zeros({2}, torch::TensorOptions().dtype(torch::kDouble).device(device_));  // (nll, aux)
    for (size_t j = 0; j < groups_.size(); ++j) {
      const auto [lo, rows] = groups_[j];
      auto tokens = batch.tokens.narrow(0, lo, rows).to(device_);    // (rows, seq_len)
      auto targets = batch.targets.narrow(0, lo, rows).to(device_);  // (rows, seq_len)
      t0 = Clock::now();
      models::LMOutput out;
      {
        RECORD_USER_SCOPE("ssr::forward");
        models::AutocastGuard autocast(device_, bf16);  // the forward only: backward follows the forward's dtypes
        out = model_->forward(tokens, targets, states_[j], gen_);
      }
      auto loss = (out.nll + out.aux) / static_cast<double>(groups_.size());
      sync();
      r.t_forward += seconds_since(t0);
      t0 = Clock::now();
      {
        RECORD_USER_SCOPE("ssr::backward");
        loss.backward();
      }
      sync();
      r.t_backward += seconds_since(t0);
      sums += torch::stack({out.nll.detach(), out.aux.detach()}).to(torch::kDouble);
    }
    const auto host = sums.cpu();
    r.loss_sum = host[0].item<double>();
    r.aux_sum = host[1].item<double>();
    r.parts = static_cast<int64_t>(groups_.size());
    r.units = B_ * M_;
    return r;
  }

  void log_timings(int64_t step, RunLog& log) override {
    if (global_routing_) log.timing(step, "gather", group_->take_gather_seconds());  // in forward and backward
  }

  Validation validate(int64_t /*step*/, bool bf16) override {
    // Partial validation: the next valid_segments segments of the validation stream, walked as
    // the training stream is (the reference's train_iteration with eval_only).
    const double v = evaluate_nll([&](int64_t) { return valid_walk_->next(data_gen_); }, valid_segments_, valid_state_,
                                  bf16, row0_, rows_);
    const auto [name, value] = headline(cfg_, v);
    return {v, {{"loss", v}, {name, value}}, fmt::format("partial valid {} {:.3f}", name, value)};
  }

  void save(torch::serialize::OutputArchive& ar, int64_t /*step*/) override {
    auto gathered = [&](const torch::Tensor& t) {
      return group_ ? group_->all_gather(t) : std::vector<torch::Tensor>{t};
    };
    const auto gen_states = gathered(gen_.get_state()), router_states = gathered(router_gen_.get_state());
    std::vector<std::pair<std::string, torch::Tensor>> caches;
    for (size_t j = 0; j < states_.size(); ++j)
      for (size_t l = 0; l < states_[j].cache.size(); ++l) {
        const auto parts = gathered(states_[j].cache[l]);  // per rank (rows / split, span, d_model)
        for (int r = 0; r < world_; ++r)
          caches.emplace_back(fmt::format("cache_{}_{}", r * split_ + static_cast<int64_t>(j), l), parts[r]);
      }
    std::vector<torch::Tensor> valid_caches;  // per layer (streams, span, d_model)
    for (const auto& c : valid_state_.cache) valid_caches.push_back(torch::cat(gathered(c)));
    if (rank_ != 0) return;
    for (int r = 0; r < world_; ++r) {
      ar.write(gen_key("gen_state", r), gen_states[r]);
      ar.write(gen_key("router_gen_state", r), router_states[r]);
    }
    ar.write("data_gen_state", data_gen_.get_state());
    ar.write("data_position",
             torch::tensor({train_walk_->position(), valid_walk_ ? valid_walk_->position() : int64_t{0}}));
    for (const auto& [name, c] : caches) ar.write(name, c);
    for (size_t l = 0; l < valid_caches.size(); ++l) ar.write(fmt::format("valid_cache_{}", l), valid_caches[l]);
  }

  void load(torch::serialize::InputArchive& ar, int64_t /*step*/) override {
    // A fresh tensor for every read: reading into a defined tensor re-points it (set_).
    auto read = [&](const std::string& key) {
      torch::Tensor t;
      ar.read(key, t);
      return t.cpu();
    };
    gen_.set_state(read(gen_key("gen_state", rank_)));
    data_gen_.set_state(read("data_gen_state"));
    router_gen_.set_state(read(gen_key("router_gen_state", rank_)));
    const auto position = read("data_position");
    train_walk_->set_position(position[0].item<int64_t>());
    if (valid_walk_) valid_walk_->set_position(position[1].item<int64_t>());
    for (size_t j = 0; j < states_.size(); ++j)
      for (size_t l = 0; l < states_[j].cache.size(); ++l)
        ar.read(fmt::format("cache_{}_{}", rank_ * split_ + static_cast<int64_t>(j), l), states_[j].cache[l]);
    for (size_t l = 0; l < valid_state_.cache.size(); ++l) {
      torch::Tensor all;  // (streams, span, d_model)
      ar.read(fmt::format("valid_cache_{}", l), all);
      valid_state_.cache[l] = all.narrow(0, row0_, rows_).contiguous();
    }
  }

  void begin_final_evaluation() override {
    // The reference's final evaluation splits eval.batch_size streams over its ranks with
    // batch_split 1, so each router call saw more tokens than in training and validation.
    if (cfg_.i("router.eval_group_tokens") > 0)
      for (auto& m : model_->moe_layers) m->set_group_tokens(cfg_.i("router.eval_group_tokens"));
  }

  double evaluate(const std::string& split, const std::string& stored_as, bool bf16, RunLog& log,
                  Progress& progress) override {
    return final_eval(split, stored_as, bf16, log, progress, false);
  }

  // The same model without the context its caches carry across segments: how much of its loss
  // is the evaluation protocol (nanoGPT scores independent blocks).
  void extra_evaluations(bool bf16, RunLog& log, Progress& progress) override {
    if (cfg_.b("eval.reset_cache"))
      for (const auto& split : cfg_.strings("eval.splits"))
        final_eval(split, split + "@reset_cache", bf16, log, progress, true);
  }

  void final_results(RunLog& log) override {
    if (valid_walk_) log.result("train", "valid_segments", static_cast<double>(valid_segments_));
  }

 private:
  static data::Corpus load(const config::Config& cfg, std::optional<data::Corpus> given) {
    if (cfg.i("run.threads") > 0) torch::set_num_threads(static_cast<int>(cfg.i("run.threads")));
    // Seeded before the model draws its initial weights from torch's default generator.
    torch::manual_seed(static_cast<uint64_t>(cfg.i("run.seed")));
    return given ? std::move(*given) : data::load_corpus(cfg);
  }
  uint64_t seed() const { return static_cast<uint64_t>(cfg_.i("run.seed")); }
  static torch::Generator generator(uint64_t s) { return at::make_generator<at::CPUGeneratorImpl>(s); }
  void sync() const {
    if (device_.is_cuda()) torch::cuda::synchronize();
  }

  data::StreamBatcher walk(const std::string& split, int64_t streams, bool every_token, const std::string& why) {
    try {
      return data::StreamBatcher(corpus_.splits.at(split), streams, M_, every_token);
    } catch (const config::ConfigError& e) {
      throw config::ConfigError(fmt::format("{} split of {} ({}): {}", split, cfg_.s("data.dir"), why, e.what()));
    }
  }

  // Token-weighted mean NLL over `count` segments handed out by `next_segment(i)`, carrying
  // `state` across them (a segment with reset set, or every segment with `reset_each`, zeroes the
  // caches first). This rank scores rows [row0, row0 + rows) of every segment; the sums are
  // reduced over ranks.
  double evaluate_nll(const std::function<data::StreamBatcher::Batch(int64_t)>& next_segment, int64_t count,
                      models::LMState& state, bool bf16, int64_t row0, int64_t rows, bool reset_each = false,
                      const std::function<void()>& each_segment = {}) {
    torch::NoGradGuard no_grad;
    models::AutocastGuard autocast(device_, bf16);
    model_->eval();
    double total = 0, tokens = 0;
    for (int64_t i = 0; i < count; ++i) {
      if (each_segment) each_segment();
      auto batch = next_segment(i);
      if (batch.reset || reset_each)
        for (auto& c : state.cache) c.zero_();
      auto tokens_in = batch.tokens.narrow(0, row0, rows).to(device_);  // (rows, seq_len)
      auto targets = batch.targets.narrow(0, row0, rows).to(device_);   // (rows, seq_len)
      auto out = model_->forward(tokens_in, targets, state, gen_);
      const double n = static_cast<double>(targets.numel());
      total += out.nll.item<double>() * n;
      tokens += n;
    }
    model_->train();
    if (group_) {
      const auto sums = group_->sum({total, tokens});
      total = sums[0];
      tokens = sums[1];
    }
    return total / tokens;
  }

  // Evaluates one split and stores its results under `stored_as`; returns the mean NLL.
  double final_eval(const std::string& split, const std::string& stored_as, bool bf16, RunLog& log, Progress& progress,
                    bool reset_each) {
    const int64_t steps = cfg_.i("train.steps"), max_seg = cfg_.i("eval.max_segments");
    const data::StreamBatcher& walk = eval_walks_.at(split);
    const int64_t n = max_seg > 0 ? std::min(max_seg, walk.eval_segments()) : walk.eval_segments();
    auto state = model_->initial_state(eval_rows_);
    to_device(state, device_);
    const bool norms = stored_as == "valid";  // paper Fig. 2: MoE output norm per layer
    for (auto& m : model_->moe_layers) {
      if (norms) m->take_output_norm();  // drop what training steps accumulated
      m->collect_stats(norms);
    }
    // One rank alone must not leave the evaluation (the others would wait in its sum): with
    // several ranks the loop checks for signals between splits only.
    int64_t done = 0;
    std::function<void()> poll = [&] {
      if (!group_) log.poll(steps);
      if (rank_ == 0) progress.evaluating(stored_as, done++, n);
    };
    double loss = evaluate_nll([&](int64_t i) { return walk.segment(i); }, n, state, bf16, eval_row0_, eval_rows_,
                               reset_each, poll);
    for (auto& m : model_->moe_layers) m->collect_stats(false);
    const auto [metric, value] = headline(cfg_, loss);
    log.result(stored_as, "loss", loss);
    log.result(stored_as, metric, value);
    log.result(stored_as, "segments", static_cast<double>(n));
    if (norms) {
      for (size_t l = 0; l < model_->moe_layers.size(); ++l) {
        model_->moe_layers[l]->take_stats();
        log.metric(steps, "valid", fmt::format("layer{}/output_norm", l), model_->moe_layers[l]->take_output_norm());
      }
      log.flush(steps);
    }
    progress.message(fmt::format("run {}: {} {} {:.3f}", log.id(), stored_as, metric, value));
    // A perplexity beyond the double range (a loss above ~709 nats) is a diverged run, not a result.
    return std::isfinite(value) ? loss : std::numeric_limits<double>::infinity();
  }

  const config::Config& cfg_;
  const int rank_, world_;
  const torch::Device device_;
  data::Corpus corpus_;
  const int64_t B_, M_, split_;
  int64_t row0_ = 0, rows_ = 0, eval_row0_ = 0, eval_rows_ = 0, valid_segments_ = 0;
  // What each rank draws. Dropout and routers: a generator per rank (rank 0's is the one of a
  // one-process run). Data wrap offsets must agree across ranks: one process keeps drawing them
  // from its only generator, so its losses reproduce; several ranks share a generator seeded
  // alike (the reference's Python `random`, so a router's draws do not change which segments
  // the other routers' runs see). router.global_batch routing runs the same router call on every
  // rank: a third one, also alike.
  torch::Generator gen_ = generator(dist::stream_seed(static_cast<int64_t>(seed()), rank_));
  torch::Generator data_gen_ = generator(dist::stream_seed(static_cast<int64_t>(seed()), dist::kDataStream));
  torch::Generator router_gen_;
  bool global_routing_ = false;
  models::SwitchLM model_;
  std::optional<data::StreamBatcher> train_walk_, valid_walk_;
  std::map<std::string, data::StreamBatcher> eval_walks_;
  std::vector<std::pair<int64_t, int64_t>> groups_;  // (first row, rows) of this rank's micro-batches
  std::vector<models::LMState> states_;              // per micro-batch
  models::LMState valid_state_;
  std::unique_ptr<dist::Group> group_;
};

}  // namespace

std::unique_ptr<Task> make_lm_task(const config::Config& cfg, const Options& opts, std::optional<data::Corpus> corpus) {
  return std::make_unique<LMTask>(cfg, opts, std::move(corpus));
}

}  // namespace ssr::train
