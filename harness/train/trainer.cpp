#include "harness/train/trainer.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "harness/data/corpus.hpp"
#include "harness/dist/launch.hpp"
#include "harness/train/checkpoint.hpp"
#include "harness/train/progress.hpp"
#include "harness/train/run_log.hpp"
#include "harness/train/schedule.hpp"
#include "harness/train/vision_trainer.hpp"
#include "models/precision.hpp"
#include "models/switch_lm.hpp"
#include "routers/ssr.hpp"

namespace fs = std::filesystem;

namespace ssr::train {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

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

// Where this process's rows sit in the global batch (one process: all of them, no group).
struct Layout {
  dist::Group* group = nullptr;
  int rank = 0, world = 1;
  int64_t split = 1;           // micro-batches per rank (train.batch_split)
  int64_t row0 = 0, rows = 0;  // this rank's training and partial-validation streams
};

// What each rank draws. Dropout and routers: a generator per rank (rank 0's is the one of a
// one-process run). Data wrap offsets must agree across ranks: one process keeps drawing them
// from its only generator, so its losses reproduce; several ranks share a generator seeded alike.
// router.global_batch routing runs the same router call on every rank: a third one, also alike.
struct Rngs {
  torch::Generator model;   // dropout and everything else the model draws
  torch::Generator data;    // data wrap offsets, alike on every rank
  torch::Generator router;  // the routers' draws: per rank, or alike on every rank with router.global_batch
};

// Token-weighted mean NLL over `count` segments handed out by `next_segment(i)`, carrying
// `state` across them (a segment with reset set, or every segment with `reset_each`, zeroes the
// caches first). This rank scores rows [row0, row0 + rows) of every segment; the sums are reduced
// over ranks.
double evaluate(models::SwitchLM& model, const std::function<data::StreamBatcher::Batch(int64_t)>& next_segment,
                int64_t count, models::LMState& state, torch::Device device, torch::Generator& gen, bool bf16,
                int64_t row0, int64_t rows, dist::Group* group, bool reset_each = false) {
  torch::NoGradGuard no_grad;
  models::AutocastGuard autocast(device, bf16);
  model->eval();
  double total = 0, tokens = 0;
  for (int64_t i = 0; i < count; ++i) {
    auto batch = next_segment(i);
    if (batch.reset || reset_each)
      for (auto& c : state.cache) c.zero_();
    auto tokens_in = batch.tokens.narrow(0, row0, rows).to(device);  // (rows, seq_len)
    auto targets = batch.targets.narrow(0, row0, rows).to(device);   // (rows, seq_len)
    auto out = model->forward(tokens_in, targets, state, gen);
    const double n = static_cast<double>(targets.numel());
    total += out.nll.item<double>() * n;
    tokens += n;
  }
  model->train();
  if (group) {
    const auto sums = group->sum({total, tokens});
    total = sums[0];
    tokens = sums[1];
  }
  return total / tokens;
}

// Everything a bit-for-bit continuation needs: weights, optimiser moments, RNG states, data
// position and the per-stream caches.
struct Snapshot {
  int64_t step = 0, train_pos = 0, valid_pos = 0;
  double best_valid = INFINITY;
  int64_t best_step = 0;
};

// Rank r's generator and micro-batch caches are stored under the names a one-process run over
// the same global batch with world * batch_split micro-batches would use (its group r * split + j
// holds the same streams), so rank 0's names are those of a one-process checkpoint.
std::string gen_key(const std::string& base, int rank) {
  return rank == 0 ? base : fmt::format("{}_rank{}", base, rank);
}

// Called by every rank (the state travels to rank 0); only rank 0 writes the file.
void save_checkpoint(const fs::path& path, models::SwitchLM& model, torch::optim::Optimizer& opt, const Rngs& rng,
                     const std::vector<models::LMState>& states, const models::LMState& valid_state,
                     const Snapshot& snap, const Layout& lay) {
  auto gathered = [&](const torch::Tensor& t) {
    return lay.group ? lay.group->all_gather(t) : std::vector<torch::Tensor>{t};
  };
  const auto gen_states = gathered(rng.model.get_state()), router_states = gathered(rng.router.get_state());
  std::vector<std::pair<std::string, torch::Tensor>> caches;
  for (size_t j = 0; j < states.size(); ++j)
    for (size_t l = 0; l < states[j].cache.size(); ++l) {
      const auto parts = gathered(states[j].cache[l]);  // per rank (rows / split, span, d_model)
      for (int r = 0; r < lay.world; ++r)
        caches.emplace_back(fmt::format("cache_{}_{}", r * lay.split + static_cast<int64_t>(j), l), parts[r]);
    }
  std::vector<torch::Tensor> valid_caches;
  for (const auto& c : valid_state.cache) valid_caches.push_back(torch::cat(gathered(c)));  // (streams, span, d_model)
  if (lay.rank != 0) return;

  torch::serialize::OutputArchive ar, m, o;
  model->save(m);
  opt.save(o);
  ar.write("model", m);
  ar.write("optimizer", o);
  for (int r = 0; r < lay.world; ++r) {
    ar.write(gen_key("gen_state", r), gen_states[r]);
    ar.write(gen_key("router_gen_state", r), router_states[r]);
  }
  ar.write("data_gen_state", rng.data.get_state());
  ar.write("default_gen_state", at::detail::getDefaultCPUGenerator().get_state());
  ar.write("counters", torch::tensor({snap.step, snap.train_pos, snap.valid_pos, snap.best_step}));
  ar.write("best_valid", torch::tensor(snap.best_valid, torch::kDouble));
  for (const auto& [name, c] : caches) ar.write(name, c);
  for (size_t l = 0; l < valid_caches.size(); ++l) ar.write(fmt::format("valid_cache_{}", l), valid_caches[l]);
  save_atomically(ar, path);
}

Snapshot load_checkpoint(const fs::path& path, models::SwitchLM& model, torch::optim::Optimizer* opt, Rngs* rng,
                         std::vector<models::LMState>* states, models::LMState* valid_state, torch::Device device,
                         const Layout& lay) {
  torch::serialize::InputArchive ar, m;
  ar.load_from(path.string(), device);
  ar.read("model", m);
  model->load(m);
  Snapshot snap;
  torch::Tensor counters, best;
  ar.read("counters", counters);
  ar.read("best_valid", best);
  snap.step = counters[0].item<int64_t>();
  snap.train_pos = counters[1].item<int64_t>();
  snap.valid_pos = counters[2].item<int64_t>();
  snap.best_step = counters[3].item<int64_t>();
  snap.best_valid = best.item<double>();
  if (opt) {
    torch::serialize::InputArchive o;
    ar.read("optimizer", o);
    opt->load(o);
  }
  if (rng) {
    torch::Tensor g, d;
    ar.read(gen_key("gen_state", lay.rank), g);
    ar.read("default_gen_state", d);
    rng->model.set_state(g.cpu());
    at::Generator default_gen = at::detail::getDefaultCPUGenerator();  // shares the global state
    default_gen.set_state(d.cpu());
    ar.read("data_gen_state", g);
    rng->data.set_state(g.cpu());
    ar.read(gen_key("router_gen_state", lay.rank), g);
    rng->router.set_state(g.cpu());
  }
  if (states)
    for (size_t j = 0; j < states->size(); ++j)
      for (size_t l = 0; l < (*states)[j].cache.size(); ++l)
        ar.read(fmt::format("cache_{}_{}", lay.rank * lay.split + static_cast<int64_t>(j), l), (*states)[j].cache[l]);
  if (valid_state)
    for (size_t l = 0; l < valid_state->cache.size(); ++l) {
      torch::Tensor all;  // (streams, span, d_model)
      ar.read(fmt::format("valid_cache_{}", l), all);
      valid_state->cache[l] = all.narrow(0, lay.row0, lay.rows).contiguous();
    }
  return snap;
}

int64_t parameter_total(models::SwitchLM& model) {
  int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  return n;
}

}  // namespace

Outcome train(const config::Config& cfg, store::Store& store, const Options& opts) {
  if (cfg.s("model.arch") == "swin_moe") return train_vision(cfg, store, opts);
  if (cfg.i("run.threads") > 0) torch::set_num_threads(static_cast<int>(cfg.i("run.threads")));
  const int rank = opts.dist.rank, world = opts.dist.world;
  const bool lead = rank == 0;  // the only rank that writes the store and checkpoints
  const torch::Device device = device_of(cfg, opts.dist.local_rank);
  const int64_t seed = cfg.i("run.seed");
  torch::manual_seed(static_cast<uint64_t>(seed));
  auto generator = [](uint64_t s) { return at::make_generator<at::CPUGeneratorImpl>(s); };
  Rngs rng;
  rng.model = generator(dist::stream_seed(seed, rank));
  // The data stream has its own generator (the reference's Python `random`), so a router that
  // draws (SSR's coin, noise) does not change which segments the other routers' runs see.
  rng.data = generator(dist::stream_seed(seed, dist::kDataStream));
  torch::Generator& gen = rng.model;

  // Everything that can reject the job happens before the run row exists.
  data::Corpus corpus = data::load_corpus(cfg);
  const int64_t B = cfg.i("train.batch_size"), M = cfg.i("train.seq_len");
  const int64_t steps = cfg.i("train.steps"), split = cfg.i("train.batch_split");
  if (cfg.i("run.nproc") != world)
    throw config::ConfigError(
        fmt::format("run.nproc: {} ranks asked, but this process is one of {}; `ssr train` "
                    "starts the ranks (or srun/torchrun with RANK and WORLD_SIZE)",
                    cfg.i("run.nproc"), world));
  dist::check_ranks(cfg);
  const auto [row0, rows] = dist::share(B, rank, world, "train.batch_size");
  const auto [eval_row0, eval_rows] = dist::share(cfg.i("eval.batch_size"), rank, world, "eval.batch_size");
  for (const auto& name : cfg.strings("eval.splits"))
    if (!corpus.splits.count(name))
      throw config::ConfigError(fmt::format("eval.splits: no split '{}' in {}", name, cfg.s("data.dir")));
  for (const auto& mode : cfg.strings("eval.router_modes")) routers::eval_mode_named(mode);  // rejects unknown modes
  models::SwitchLM model(cfg, corpus.vocab_size());
  model->to(device);
  auto optimizer_ptr = make_optimizer(cfg, model->parameters(), model->no_decay_parameters());
  torch::optim::Optimizer& optimizer = *optimizer_ptr;
  // Every split is batched here, so that one too short for its streams stops the job before the
  // run row exists instead of after training.
  auto walk = [&](const std::string& split, int64_t streams, bool every_token, const std::string& why) {
    try {
      return data::StreamBatcher(corpus.splits.at(split), streams, M, every_token);
    } catch (const config::ConfigError& e) {
      throw config::ConfigError(fmt::format("{} split of {} ({}): {}", split, cfg.s("data.dir"), why, e.what()));
    }
  };
  data::StreamBatcher batcher = walk("train", B, false, "train.batch_size streams");
  const int64_t eval_every = cfg.i("train.eval_every");
  std::optional<data::StreamBatcher> valid_walk;
  if (eval_every > 0) {
    if (!corpus.splits.count("valid"))
      throw config::ConfigError(
          "train.eval_every: partial validation needs a valid split (set data.valid or data.holdout, or "
          "train.eval_every=0)");
    valid_walk.emplace(
        walk("valid", B, false, "partial validation every train.eval_every steps reads train.batch_size streams"));
  }
  // The reference validates on a tenth of an iteration's steps, at most one pass of the stream.
  const int64_t valid_segments =
      cfg.i("train.eval_segments") > 0 || !valid_walk
          ? cfg.i("train.eval_segments")
          : std::min(std::max<int64_t>(1, eval_every / 10), (valid_walk->stream_length() + M - 1) / M);
  const int64_t EB = cfg.i("eval.batch_size");
  std::map<std::string, data::StreamBatcher> eval_walks;
  for (const auto& name : cfg.strings("eval.splits"))
    eval_walks.emplace(name, walk(name, EB, cfg.b("data.eval_every_token"), "eval.batch_size streams"));
  auto groups = row_groups(rows, split);  // this rank's micro-batches, as rows of the global batch
  for (auto& g : groups) g.first += row0;
  std::vector<models::LMState> states;
  for (const auto& [lo, n] : groups) states.push_back(model->initial_state(n));
  models::LMState valid_state = model->initial_state(rows);
  for (auto& s : states) to_device(s, device);
  to_device(valid_state, device);

  // Routers draw from their own stream, so that one router's coin or noise changes neither the
  // dropout masks nor the data of a run (SSR that never fires trains vanilla's model). Routing the
  // gathered global batch, every rank must decide alike: one stream for all ranks.
  const bool global_routing = world > 1 && cfg.b("router.global_batch");
  rng.router = generator(dist::stream_seed(seed, global_routing ? dist::kSharedStream : dist::kRouterStream + rank));
  model->use_router_generator(rng.router);
  std::unique_ptr<dist::Group> group;
  if (world > 1) {
    group = std::make_unique<dist::Group>(opts.dist, dist::backend_for(cfg), device, cfg.f("run.dist_timeout_s"));
    dist::broadcast_module(*group, *model);
    if (global_routing)
      model->route_globally([g = group.get()](const torch::Tensor& t) { return g->gather_rows(t); }, rank, rng.router);
  }
  const Layout lay{group.get(), rank, world, split, row0, rows};

  store::RunInfo info = store::this_machine(cfg.s("run.device"));
  info.world_size = world;
  if (group) info.backend = group->backend();
  Snapshot snap;
  if (opts.run) {
    // Rank 0 decides, so that every rank takes the same path even without a shared file system.
    const fs::path last = run_dir(cfg.s("run.out_dir"), store, *opts.run) / "last.pt";
    bool resume = lead && fs::exists(last);
    if (group) resume = group->sum({resume ? 1.0 : 0.0})[0] > 0;
    if (resume) {
      snap = load_checkpoint(last, model, &optimizer, &rng, &states, &valid_state, device, lay);
      batcher.set_position(snap.train_pos);
      if (valid_walk) valid_walk->set_position(snap.valid_pos);
    }
  }
  RunLog log(store, cfg, lead);
  const int64_t run_id = log.open(info, opts.run, snap.step, group.get());
  if (lead) dist::announce_run(run_id);
  const fs::path ckpt_dir = run_dir(cfg.s("run.out_dir"), store, run_id);

  Progress progress(steps, cfg.i("run.log_every"), opts.quiet || !lead);
  progress.message(fmt::format("run {}: {} steps of {} x {} tokens, {} parameters, config {}{}", run_id, steps, B, M,
                               parameter_total(model), cfg.hash(),
                               snap.step > 0 ? fmt::format(", resumed at step {}", snap.step) : ""));

  const int64_t log_every = cfg.i("run.log_every"), ckpt_every = cfg.i("train.checkpoint_every");
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  auto snapshot = [&](int64_t step) {
    snap.step = step;
    snap.train_pos = batcher.position();
    if (valid_walk) snap.valid_pos = valid_walk->position();
    return snap;
  };

  const bool time_router = cfg.b("train.time_router");
  const bool bf16 = cfg.s("train.precision") == "bf16";
  model->time_routers(time_router);
  try {
    model->train();
    for (int64_t step = snap.step + 1; step <= steps; ++step) {
      if (const int sig = log.interrupted()) {
        log.flush(step - 1);
        log.finish("failed", fmt::format("interrupted by signal {} at step {}", sig, step - 1));
        progress.finish();
        return {run_id, "failed"};
      }
      const bool log_step = step % log_every == 0 || step == steps;
      model->collect_router_stats(log_step);
      // The reference steps its LambdaLR before the optimizer: update s uses lr * min(1, s / warmup).
      const double lr = learning_rate(cfg, step);
      set_learning_rate(optimizer, lr);

      auto batch = batcher.next(rng.data);
      if (batch.reset)
        for (auto& s : states)
          for (auto& c : s.cache) c.zero_();
      optimizer.zero_grad();
      model->take_router_seconds();  // drop router time of evaluations since the last step
      double nll_sum = 0, aux_sum = 0, t_fwd = 0, t_bwd = 0;
      for (size_t j = 0; j < groups.size(); ++j) {
        const auto [lo, rows] = groups[j];
        auto tokens = batch.tokens.narrow(0, lo, rows).to(device);    // (rows, seq_len)
        auto targets = batch.targets.narrow(0, lo, rows).to(device);  // (rows, seq_len)
        auto t0 = Clock::now();
        models::LMOutput out;
        {
          models::AutocastGuard autocast(device, bf16);  // the forward only: backward follows the forward's dtypes
          out = model->forward(tokens, targets, states[j], gen);
        }
        auto loss = (out.nll + out.aux) / static_cast<double>(groups.size());
        sync();
        t_fwd += seconds_since(t0);
        t0 = Clock::now();
        loss.backward();
        sync();
        t_bwd += seconds_since(t0);
        nll_sum += out.nll.item<double>();
        aux_sum += out.aux.item<double>();
      }
      auto t0 = Clock::now();
      if (group) {
        // The global batch's loss (every rank then takes the same nan decision) and gradient.
        const auto sums = group->sum({nll_sum, aux_sum});
        nll_sum = sums[0] / world;
        aux_sum = sums[1] / world;
      }
      const double nll = nll_sum / static_cast<double>(groups.size());
      if (!std::isfinite(nll) || !std::isfinite(aux_sum)) {
        log.metric(step, "train", "loss", nll);
        log.flush(step);
        log.finish("nan", fmt::format("loss became {} at step {}", nll, step));
        progress.message(fmt::format("run {}: loss became {} at step {}; recorded as nan", run_id, nll, step));
        return {run_id, "nan"};
      }
      if (group) group->average_gradients(model->parameters());
      const double t_sync = seconds_since(t0);
      t0 = Clock::now();
      if (cfg.f("train.clip") > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), cfg.f("train.clip"));
      optimizer.step();
      sync();
      const double t_opt = seconds_since(t0);
      log.timing(step, "forward", t_fwd);
      log.timing(step, "backward", t_bwd);
      log.timing(step, "optimizer", t_opt);
      log.timing(step, "step", t_fwd + t_bwd + t_sync + t_opt);
      if (time_router) log.timing(step, "router", model->take_router_seconds());     // part of forward
      if (group) log.timing(step, "allreduce", t_sync);                              // loss and gradients
      if (global_routing) log.timing(step, "gather", group->take_gather_seconds());  // in forward and backward
      progress.update(step, nll, B * M);

      if (log_step) {
        log.metric(step, "train", "loss", nll);
        log.metric(step, "train", "aux", aux_sum / groups.size());
        log.metric(step, "train", "lr", lr);
        log.metric(step, "train", "tokens_per_s", B * M / (t_fwd + t_bwd + t_sync + t_opt));
        log.router_stats(step, model->take_router_stats());
      }
      if (valid_walk && (step % eval_every == 0 || step == steps)) {
        // Partial validation: the next valid_segments segments of the validation stream, walked
        // as the training stream is (the reference's train_iteration with eval_only).
        const double v = evaluate(
            model, [&](int64_t) { return valid_walk->next(rng.data); }, valid_segments, valid_state, device, gen, bf16,
            row0, rows, group.get());
        const auto [name, value] = headline(cfg, v);
        log.metric(step, "valid", "loss", v);
        log.metric(step, "valid", name, value);
        progress.message(fmt::format("run {}: step {} partial valid {} {:.3f}", run_id, step, name, value));
        if (v < snap.best_valid) {
          snap.best_valid = v;
          snap.best_step = step;
          save_checkpoint(ckpt_dir / "best.pt", model, optimizer, rng, states, valid_state, snapshot(step), lay);
        }
      }
      if ((ckpt_every > 0 && step % ckpt_every == 0) || step == steps)
        save_checkpoint(ckpt_dir / "last.pt", model, optimizer, rng, states, valid_state, snapshot(step), lay);
      if (log_step)
        log.flush(step);
      else
        log.flush_if_due(step);
    }
    log.flush(steps);
    progress.finish();

    // Final evaluation: the best partial-validation checkpoint, like the reference's
    // --resume --full-eval-mode, unless eval.checkpoint=last.
    // Rank 0 reads it and broadcasts the weights: the ranks need not share a file system here.
    bool use_best = lead && cfg.s("eval.checkpoint") == "best" && fs::exists(ckpt_dir / "best.pt");
    if (group) use_best = group->sum({use_best ? 1.0 : 0.0})[0] > 0;
    if (use_best) {
      if (lead) load_checkpoint(ckpt_dir / "best.pt", model, nullptr, nullptr, nullptr, nullptr, device, lay);
      if (group) dist::broadcast_module(*group, *model);
      log.result("train", "best_step", static_cast<double>(snap.best_step));
    }
    // The reference's final evaluation splits eval.batch_size streams over its ranks with
    // batch_split 1, so each router call saw more tokens than in training and validation.
    if (cfg.i("router.eval_group_tokens") > 0) model->set_router_group_tokens(cfg.i("router.eval_group_tokens"));
    const int64_t max_seg = cfg.i("eval.max_segments");
    // Evaluates one split and stores its results under `stored_as`; returns the mean NLL.
    auto final_eval = [&](const std::string& split_name, const std::string& stored_as, bool reset_each = false) {
      const data::StreamBatcher& walk = eval_walks.at(split_name);
      const int64_t n = max_seg > 0 ? std::min(max_seg, walk.eval_segments()) : walk.eval_segments();
      auto state = model->initial_state(eval_rows);
      to_device(state, device);
      const bool norms = stored_as == "valid";    // paper Fig. 2: MoE output norm per layer
      if (norms) model->take_moe_output_norms();  // drop what training steps accumulated
      model->collect_router_stats(norms);
      const double loss = evaluate(
          model, [&](int64_t i) { return walk.segment(i); }, n, state, device, gen, bf16, eval_row0, eval_rows,
          group.get(), reset_each);
      model->collect_router_stats(false);
      const auto [metric, value] = headline(cfg, loss);
      log.result(stored_as, "loss", loss);
      log.result(stored_as, metric, value);
      log.result(stored_as, "segments", static_cast<double>(n));
      if (norms) {
        model->take_router_stats();
        const auto out_norms = model->take_moe_output_norms();
        for (size_t l = 0; l < out_norms.size(); ++l)
          log.metric(steps, "valid", fmt::format("layer{}/output_norm", l), out_norms[l]);
        log.flush(steps);
      }
      progress.message(fmt::format("run {}: {} {} {:.3f}", run_id, stored_as, metric, value));
      return loss;
    };
    for (const auto& split_name : cfg.strings("eval.splits")) {
      const double loss = final_eval(split_name, split_name);
      if (!std::isfinite(loss)) {
        log.finish("nan", fmt::format("{} loss is {}", split_name, loss));
        return {run_id, "nan"};
      }
    }
    // The same model without the context its caches carry across segments: how much of its loss
    // is the evaluation protocol (nanoGPT scores independent blocks).
    if (cfg.b("eval.reset_cache"))
      for (const auto& split_name : cfg.strings("eval.splits"))
        final_eval(split_name, split_name + "@reset_cache", true);
    // The same model under SSR's other inference modes (paper Table 3): SPLIT@MODE.
    for (const auto& mode : cfg.strings("eval.router_modes")) {
      model->set_router_eval_mode(mode);
      for (const auto& split_name : cfg.strings("eval.splits")) final_eval(split_name, split_name + "@" + mode);
    }
    if (valid_walk) log.result("train", "valid_segments", static_cast<double>(valid_segments));
    log.result("train", "seconds", log.wall());
    log.finish("finished");
    return {run_id, "finished"};
  } catch (const std::exception& e) {
    progress.finish();
    log.finish("failed", e.what());
    throw;
  }
}

}  // namespace ssr::train
