#include "harness/train/loop.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "harness/dist/launch.hpp"
#include "harness/errors.hpp"
#include "harness/train/checkpoint.hpp"
#include "harness/train/schedule.hpp"
#include "harness/train/step.hpp"

namespace fs = std::filesystem;

namespace ssr::train {
namespace {

// The loop's part of a checkpoint; the task adds its generators, data position and carried state.
struct LoopState {
  int64_t step = 0, best_step = 0;
  double best_score = INFINITY;  // the lowest Validation::score so far
};

int64_t parameter_total(torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

// Whose checkpoint a file is: a store's run of one config. A copied file, a copied store or
// another run's folder must not be continued from (it would overwrite this run's rows).
nlohmann::json identity(const store::Store& store, int64_t run, const config::Config& cfg) {
  nlohmann::json keys = nlohmann::json::object();  // flat: "run.seed" -> 2
  for (const auto& [name, value] : cfg.values()) keys[name] = value;
  return {{"store", store.id()}, {"run", run}, {"config_hash", cfg.hash()}, {"config", keys}};
}

// Refuses a checkpoint written for another store, run or config, naming the file, both owners and
// the config keys that differ. Checkpoints written before identities were stored carry none.
void check_identity(const fs::path& path, torch::serialize::InputArchive& ar, const nlohmann::json& want) {
  c10::IValue v;
  if (!ar.try_read("identity", v)) return;
  const auto got = nlohmann::json::parse(v.toStringRef());
  if (got["store"] == want["store"] && got["run"] == want["run"] && got["config_hash"] == want["config_hash"]) return;
  std::string keys;
  const auto& a = got["config"];
  const auto& b = want["config"];
  for (const auto& [k, x] : b.items())
    if (!a.contains(k) || a[k] != x) keys += (keys.empty() ? "" : ", ") + k;
  throw config::ConfigError(fmt::format(
      "{}: this checkpoint belongs to run {} of store {} (config {}), not to run {} of store {} (config {}){}; "
      "refusing to continue from it: move it away (or `ssr train --resume {} --restart` to train the run again)",
      path.string(), got["run"].get<int64_t>(), got["store"].get<std::string>(), got["config_hash"].get<std::string>(),
      want["run"].get<int64_t>(), want["store"].get<std::string>(), want["config_hash"].get<std::string>(),
      keys.empty() ? "" : "; config keys that differ: " + keys, want["run"].get<int64_t>()));
}

// What a run's checkpoint folder holds, for a refusal: "folder X does not exist", "X holds: a, b".
std::string folder_contents(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return fmt::format("the folder {} does not exist", dir.string());
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_symlink(ec) && !fs::exists(e.path(), ec))
      name += " (a dangling link to " + fs::read_symlink(e.path(), ec).string() + ")";
    else if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp")
      name += " (an unfinished write)";
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  return names.empty() ? fmt::format("{} is empty", dir.string()) : fmt::format("{} holds {}", dir.string(), list);
}

// Called by every rank; only rank 0 writes.
void save(const fs::path& path, Task& task, torch::optim::Optimizer& opt, const LoopState& s,
          const nlohmann::json& owner) {
  torch::serialize::OutputArchive ar;
  task.save(ar, s.step);
  if (task.rank() != 0) return;
  ar.write("identity", c10::IValue(owner.dump()));
  torch::serialize::OutputArchive m, o;
  task.model().save(m);
  opt.save(o);
  ar.write("model", m);
  ar.write("optimizer", o);
  ar.write("default_gen_state", at::detail::getDefaultCPUGenerator().get_state());
  ar.write("loop_counters", torch::tensor({s.step, s.best_step}));
  ar.write("best_score", torch::tensor(s.best_score, torch::kDouble));
  write_checkpoint(ar, path);
}

// Weights only without `opt` (the final evaluation of best.pt). `owner`: refuse a checkpoint of
// another store, run or config.
LoopState load(const fs::path& path, Task& task, torch::optim::Optimizer* opt, const nlohmann::json& owner) {
  torch::serialize::InputArchive ar, m;
  read_checkpoint(ar, path, task.device());
  check_identity(path, ar, owner);
  ar.read("model", m);
  task.model().load(m);
  LoopState s;
  if (!opt) return s;
  torch::serialize::InputArchive o;
  ar.read("optimizer", o);
  opt->load(o);
  torch::Tensor counters, best, d;
  ar.read("loop_counters", counters);
  ar.read("best_score", best);
  s.step = counters[0].item<int64_t>();
  s.best_step = counters[1].item<int64_t>();
  s.best_score = best.item<double>();
  ar.read("default_gen_state", d);
  at::Generator default_gen = at::detail::getDefaultCPUGenerator();  // shares the global state
  default_gen.set_state(d.cpu());
  task.load(ar, s.step);
  return s;
}

// Rank 0 decides, so that every rank takes the same path even without a shared file system.
bool on_lead(Task& task, bool lead_says) {
  bool yes = task.rank() == 0 && lead_says;
  if (auto* g = task.group()) yes = g->sum({yes ? 1.0 : 0.0})[0] > 0;
  return yes;
}

// The router's inference mode (paper Table 3 for SSR) in every layer.
void set_eval_mode(std::vector<models::MoE>& layers, const std::string& mode) {
  for (auto& layer : layers) layer->router->set_eval_mode(mode);
}

}  // namespace

Outcome run_training(const config::Config& cfg, store::Store& store, const Options& opts, Task& task) {
  const bool lead = task.rank() == 0;
  dist::Group* group = task.group();
  torch::nn::Module& model = task.model();
  std::vector<models::MoE> layers = task.moe_layers();
  auto optimizer = make_optimizer(cfg, model.parameters(), task.no_decay_parameters());
  const int64_t steps = cfg.i("train.steps");

  LoopState state;
  std::string restart_note;  // why a resumed run starts from step 0
  if (opts.run) {
    // Before its files are touched: a live run's temporary is its checkpoint being written.
    if (lead) store.refuse_if_held(*opts.run, stale_after(cfg));
    const fs::path dir = run_dir(cfg.s("run.out_dir"), store, *opts.run), last = dir / "last.pt";
    const fs::path tmp = last.string() + ".tmp";
    // fs::exists follows links: a dangling last.pt is no checkpoint either.
    if (on_lead(task, !opts.restart && opts.require_checkpoint && !fs::exists(last)))
      throw config::ConfigError(fmt::format(
          "--resume {}: no checkpoint to continue from ({}: {}); nothing was changed. `ssr train --resume {} "
          "--restart` trains the run again from step 0",
          *opts.run, last.string(), folder_contents(dir), *opts.run));
    // A kill during the first write leaves only the temporary, which is never a whole checkpoint.
    if (lead && !fs::exists(last) && fs::exists(tmp)) {
      fs::remove(tmp);
      restart_note = fmt::format(" (only an unfinished write, {}, was there: removed)", tmp.string());
    }
    if (!opts.restart && on_lead(task, fs::exists(last)))
      state = load(last, task, optimizer.get(), identity(store, *opts.run, cfg));
  }
  if (lead) check_out_dir(cfg.s("run.out_dir"), store);
  RunLog log(store, cfg, lead);
  const int64_t run_id = log.open(task.run_info(), opts.run, state.step, group);
  if (lead) dist::announce_run(run_id);
  const fs::path ckpt_dir = run_dir(cfg.s("run.out_dir"), store, run_id);
  const nlohmann::json owner = identity(store, run_id, cfg);

  Progress progress(steps, cfg.i("run.log_every"), opts.quiet || !lead, task.unit());
  bool warned_unconverged = false;  // the Sinkhorn iteration-limit warning is given once per run
  progress.message(fmt::format("run {}: {}, {} parameters, config {}{}", run_id, task.describe(),
                               parameter_total(model), cfg.hash(),
                               state.step > 0         ? fmt::format(", resumed at step {}", state.step)
                               : restart_note.empty() ? ""
                                                      : ", from step 0" + restart_note));

  const int64_t log_every = cfg.i("run.log_every"), ckpt_every = cfg.i("train.checkpoint_every");
  const int64_t eval_every = cfg.i("train.eval_every");
  const bool bf16 = cfg.s("train.precision") == "bf16";
  const bool time_router = cfg.b("train.time_router");
  Step update(cfg, task, *optimizer);
  // train.checkpoint_every=-1 writes no file: the best partial validation's weights are copied in
  // memory instead (every rank holds the same weights, so each keeps its own copy).
  const bool no_files = ckpt_every < 0;
  std::vector<torch::Tensor> best_weights;  // parameters, then buffers, as model.parameters()/buffers() list them
  auto checkpoint = [&](const char* name, int64_t step) {
    state.step = step;
    if (!no_files) {
      save(ckpt_dir / name, task, *optimizer, state, owner);
    } else if (std::string(name) == "best.pt") {
      torch::NoGradGuard no_grad;
      best_weights.clear();
      for (const auto& t : model.parameters()) best_weights.push_back(t.detach().clone());
      for (const auto& t : model.buffers()) best_weights.push_back(t.detach().clone());
    }
  };
  try {
    model.train();
    for (int64_t step = state.step + 1; step <= steps; ++step) {
      if (const int sig = log.interrupted()) {
        // SIGUSR1 asks for a checkpoint to requeue from (Slurm's lead time); one rank alone cannot
        // write one (the others would wait in its collectives), so data-parallel runs keep their last.
        const bool save = sig == SIGUSR1 && !no_files && !group && step - 1 > state.step;
        if (save) checkpoint("last.pt", step - 1);
        log.flush(step - 1);
        log.finish("interrupted", fmt::format("interrupted by signal {} at step {}{}", sig, step - 1,
                                              save ? " (checkpoint written there)" : ""));
        progress.finish();
        return {run_id, "interrupted", sig};
      }
      const bool log_step = step % log_every == 0 || step == steps;
      const StepOutcome o = update.run(step, log_step);
      const StepResult& r = o.task;
      if (r.units > 0) {
        const double loss = o.loss, aux = o.aux, lr = o.lr;
        if (!o.updated) {
          log.metric(step, "train", "loss", loss);
          log.flush(step);
          log.finish("nan", fmt::format("loss became {} at step {}", loss, step));
          progress.message(fmt::format("run {}: loss became {} at step {}; recorded as nan", run_id, loss, step));
          return {run_id, "nan"};
        }
        const double t_step = o.seconds();
        log.timing(step, "data", r.t_data);
        log.timing(step, "forward", r.t_forward);
        log.timing(step, "backward", r.t_backward);
        log.timing(step, "optimizer", o.t_opt);
        log.timing(step, "step", t_step);
        if (time_router) log.timing(step, "router", o.router_seconds);  // part of forward
        if (group) log.timing(step, "allreduce", o.t_sync);             // loss and gradients
        task.log_timings(step, log);
        progress.update(step, loss, r.units);
        if (log_step) {
          log.metric(step, "train", "loss", loss);
          log.metric(step, "train", "aux", aux);
          log.metric(step, "train", "lr", lr);
          log.metric(step, "train", task.rate_metric(), static_cast<double>(r.units) / t_step);
          // Beside the step times: a report flags overheads timed on an oversubscribed machine.
          if (const auto load = store::machine_load()) log.metric(step, "train", "machine_load", *load);
          std::vector<routers::RouterStats> stats;
          for (auto& layer : layers) stats.push_back(layer->take_stats());
          log.router_stats(step, stats);
          int64_t unconverged = 0;
          for (const auto& s : stats) unconverged += s.sinkhorn_unconverged;
          if (lead && unconverged > 0 && !warned_unconverged) {
            warned_unconverged = true;
            progress.warning(fmt::format(
                "run {}: warning: {} Sinkhorn solve(s) stopped at router.max_iter above router.delta by step {} (the "
                "paper's protocol keeps them; the run's results count them as sinkhorn_unconverged)",
                run_id, unconverged, step));
          }
        }
      }
      if (log_step) task.log_metrics(step, log);
      if (eval_every > 0 && (step % eval_every == 0 || step == steps)) {
        const Validation v = task.validate(step, bf16);
        for (const auto& [name, value] : v.metrics) log.metric(step, "valid", name, value);
        progress.message(fmt::format("run {}: step {} {}", run_id, step, v.summary));
        if (v.score < state.best_score) {
          state.best_score = v.score;
          state.best_step = step;
          checkpoint("best.pt", step);
        }
      }
      if ((ckpt_every > 0 && step % ckpt_every == 0) || step == steps) checkpoint("last.pt", step);
      if (log_step)
        log.flush(step);
      else
        log.flush_if_due(step);
    }
    log.flush(steps);
    progress.finish();

    // Final evaluation: the best partial-validation checkpoint, like the reference's
    // --resume --full-eval-mode, unless eval.checkpoint=last. Rank 0 reads it and broadcasts the
    // weights: the ranks need not share a file system here.
    if (no_files && cfg.s("eval.checkpoint") == "best" && !best_weights.empty()) {
      torch::NoGradGuard no_grad;
      size_t i = 0;
      for (auto& t : model.parameters()) t.copy_(best_weights[i++]);
      for (auto& t : model.buffers()) t.copy_(best_weights[i++]);
      log.result("train", "best_step", static_cast<double>(state.best_step));
    } else if (on_lead(task, cfg.s("eval.checkpoint") == "best" && fs::exists(ckpt_dir / "best.pt"))) {
      if (lead) load(ckpt_dir / "best.pt", task, nullptr, owner);
      if (group) dist::broadcast_module(*group, model);
      log.result("train", "best_step", static_cast<double>(state.best_step));
    }
    task.begin_final_evaluation();
    const auto splits = cfg.strings("eval.splits");
    for (const auto& split : splits) {
      log.poll(steps);
      const double loss = task.evaluate(split, split, bf16, log, progress);
      if (!std::isfinite(loss)) {
        log.finish("nan", fmt::format("{} evaluation is not finite (loss {}): diverged", split, loss));
        return {run_id, "nan"};
      }
    }
    task.extra_evaluations(bf16, log, progress);
    // The same model under SSR's other inference modes (paper Table 3): SPLIT@MODE.
    for (const auto& mode : cfg.strings("eval.router_modes")) {
      set_eval_mode(layers, mode);
      for (const auto& split : splits) {
        log.poll(steps);
        task.evaluate(split, split + "@" + mode, bf16, log, progress);
      }
    }
    task.final_results(log);
    if (!layers.empty()) {  // the related work's question: does balance come with specialised experts?
      double similarity = 0;
      for (auto& layer : layers) similarity += layer->expert_similarity();
      log.result("train", "expert_similarity", similarity / static_cast<double>(layers.size()));
    }
    log.result("train", "seconds", log.wall());
    log.finish("finished");
    // Only now: until the run finished, last.pt is what --resume continues from.
    if (lead) {
      const std::string keep = cfg.s("run.keep_checkpoints");
      for (const char* file : {"last.pt", "best.pt"})
        if (keep != "all" && keep + ".pt" != file) fs::remove(ckpt_dir / file);
      if (keep == "none") {
        std::error_code ec;
        fs::remove(ckpt_dir, ec);  // only when empty
      }
    }
    return {run_id, "finished"};
  } catch (const Interrupted& e) {
    progress.finish();
    log.finish("interrupted", fmt::format("interrupted by signal {} during the final evaluation", e.signal));
    return {run_id, "interrupted", e.signal};
  } catch (const std::exception& e) {
    progress.finish();
    try {
      log.finish("failed", e.what());
    } catch (const std::exception&) {
      // On a full disk under the store this write fails too: the row stays `running` with the
      // pid of a process that is about to be gone, which every listing shows as stale.
      if (dynamic_cast<const EnvironmentError*>(&e))
        throw EnvironmentError(
            fmt::format("{}; run {} stays `running` in the store (ssr runs shows it stale): "
                        "`ssr train --resume {}` continues it from its last checkpoint",
                        e.what(), run_id, run_id));
    }
    throw;
  }
}

}  // namespace ssr::train
