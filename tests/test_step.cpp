// The training step: `ssr train` and `ssr bench step` run one train::Step, and its compute paths
// against today's (the fused optimizer against torch::optim), each within a stated float tolerance.
#include <catch2/catch.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "harness/bench/trace.hpp"
#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/train/lm_task.hpp"
#include "harness/train/schedule.hpp"
#include "harness/train/step.hpp"
#include "models/switch_lm.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace {

const std::string kDemo = std::string(SSR_SOURCE_DIR) + "/experiments/demo.yaml";

// Two parameters (a weight that AdamW decays, a bias it does not) after `steps` updates of a
// least-squares loss on seeded data; `resume` hands the state of the first half to a fresh
// optimizer of `resume_impl`, as a checkpoint written by one implementation and read by the other.
std::vector<torch::Tensor> train_weights(const std::string& optimizer, const std::string& impl, int steps,
                                         const std::string& resume_impl = "") {
  auto cfg = ssr::config::resolve(kDemo, {"train.optimizer=" + optimizer, "train.optimizer_impl=" + impl,
                                          "train.weight_decay=0.1", "train.beta2=0.99", "train.lr=0.01"});
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  auto w = torch::randn({16, 8}, gen).requires_grad_();  // (out, in)
  auto b = torch::randn({16}, gen).requires_grad_();     // (out)
  auto opt = ssr::train::make_optimizer(cfg, {w, b}, {b});
  for (int s = 1; s <= steps; ++s) {
    if (!resume_impl.empty() && s == steps / 2 + 1) {
      std::stringstream buf;
      torch::serialize::OutputArchive out;
      opt->save(out);
      out.save_to(buf);
      cfg.set("train.optimizer_impl", resume_impl, "test");
      opt = ssr::train::make_optimizer(cfg, {w, b}, {b});
      torch::serialize::InputArchive in;
      in.load_from(buf);
      opt->load(in);
    }
    auto x = torch::randn({32, 8}, gen), y = torch::randn({32, 16}, gen);  // (rows, in), (rows, out)
    opt->zero_grad();
    (torch::addmm(b, x, w.t()) - y).pow(2).mean().backward();
    opt->step();
  }
  return {w.detach(), b.detach()};
}

}  // namespace

TEST_CASE("train.optimizer_impl=fused: torch::optim's Adam and AdamW updates over 50 steps, and checkpoints across",
          "[train][step]") {
  // Tolerance: float32 rounding of the same update, 50 steps; relative to the largest weight.
  for (const char* optimizer : {"adam", "adamw"}) {
    INFO(optimizer);
    const auto loop = train_weights(optimizer, "loop", 50), fused = train_weights(optimizer, "fused", 50);
    const auto handed = train_weights(optimizer, "loop", 50, "fused");
    const auto moved = (loop[0] - train_weights(optimizer, "loop", 0)[0]).abs().max().item<double>();
    CHECK(moved > 0.1);  // 50 steps at lr 0.01 move the weights: the comparison is not of two starts
    for (size_t i = 0; i < loop.size(); ++i) {
      const double scale = loop[i].abs().max().item<double>();
      CHECK((loop[i] - fused[i]).abs().max().item<double>() <= 1e-5 * scale);
      CHECK((loop[i] - handed[i]).abs().max().item<double>() <= 1e-5 * scale);
    }
  }
  // Decoupled decay differs from L2 decay: the two optimizers are really told apart.
  CHECK((train_weights("adam", "fused", 50)[0] - train_weights("adamw", "fused", 50)[0]).abs().max().item<double>() >
        1e-3);
}

TEST_CASE("train::Step over the LM task repeats the losses `ssr train` stored, step by step", "[train][step]") {
  // The benchmark builds exactly this (task, optimizer, Step) per case: what it times is the loop's step.
  const auto db = ssr::testing::temp_db("step", "step.db");
  const std::vector<std::string> small = {"train.steps=6",
                                          "train.batch_size=4",
                                          "train.seq_len=16",
                                          "train.warmup=2",
                                          "run.log_every=1",
                                          "run.threads=1",
                                          "eval.max_segments=1",
                                          "train.eval_every=0",
                                          "train.checkpoint_every=0",
                                          "eval.batch_size=4",
                                          "router=ssr_l",
                                          "router.p=0.5",
                                          "run.out_dir=" + (std::filesystem::path(db).parent_path() / "ckpt").string()};
  std::string args;
  for (const auto& o : small) args += " " + o;
  const auto r = ssr::testing::run(fmt::format("train {}{} --db {} --quiet", kDemo, args, db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  ssr::store::Store store(db);
  const auto stored = ssr::testing::series(store, store.runs().front().id, "train", "loss");
  REQUIRE(stored.size() == 6);

  const auto cfg = ssr::config::resolve(kDemo, small);
  auto task = ssr::train::make_lm_task(cfg, ssr::train::Options{});
  auto opt = ssr::train::make_optimizer(cfg, task->model().parameters(), task->no_decay_parameters());
  ssr::train::Step step(cfg, *task, *opt);
  task->model().train();
  for (int64_t s = 1; s <= 6; ++s) {
    const auto o = step.run(s, true);
    CHECK(o.updated);
    CHECK(o.loss == stored[static_cast<size_t>(s - 1)]);  // the same function, so the same bits
  }
}

TEST_CASE("ssr bench step --trace: a Chrome trace per case and the time per phase of the loop's step",
          "[bench][step]") {
  const auto dir = std::filesystem::path(ssr::testing::temp_db("step", "trace.db")).parent_path();
  const auto r = ssr::testing::run(fmt::format(
      "bench step {}/experiments/shakespeare-char.yaml model=baby-moe16 run.log_every=2 --routers vanilla,ssr_l "
      "--threads 1 --warmup 0 --repeats 2 --trace {}/t.json --trace-steps 2 --no-store",
      SSR_SOURCE_DIR, dir.string()));
  INFO(r.out);
  REQUIRE(r.code == 0);
  for (const char* file : {"t-1.json", "t-2.json"}) {
    std::ifstream in(dir / file);
    const auto trace = nlohmann::json::parse(in);
    std::set<std::string> scopes;
    for (const auto& e : trace["traceEvents"])
      if (e.contains("name") && e["name"].get<std::string>().rfind("ssr::", 0) == 0) scopes.insert(e["name"]);
    CHECK(scopes.count("ssr::forward") == 1);
    CHECK(scopes.count("ssr::backward") == 1);
    CHECK(scopes.count("ssr::optimizer") == 1);
    CHECK(scopes.count("ssr::routing_stats") == 1);  // run.log_every=2: the second profiled step logs
  }
  for (const char* row :
       {"| forward |", "|   attention |", "|   router |", "|   experts |", "|   output_layer |", "| backward |",
        "| optimizer |", "TFLOP/s by count", "attention: reference", "machine load: "})
    CHECK(r.out.find(row) != std::string::npos);
  // A phase is a part of the step: forward, backward and optimizer add up to less than the step.
  std::istringstream lines(r.out);
  std::map<std::string, double> ms;
  for (std::string line; std::getline(lines, line);)
    for (const char* name : {"| forward |", "| backward |", "| optimizer |", "| step (wall, profiler on) |"})
      if (line.rfind(name, 0) == 0) ms[name] = std::stod(line.substr(std::string(name).size()));
  REQUIRE(ms.size() == 4);
  CHECK(ms["| forward |"] > 0);
  CHECK(ms["| forward |"] + ms["| backward |"] + ms["| optimizer |"] <= ms["| step (wall, profiler on) |"]);

  const auto bad = ssr::testing::run(fmt::format("bench step {} --trace-steps 0 --no-store", kDemo));
  CHECK(bad.code == 2);
  CHECK(bad.out.find("--trace-steps") != std::string::npos);
}

TEST_CASE("step FLOPs by count match a hand count", "[bench][step]") {
  // B 2, M 3, d 8, V 5, L 6, n 1, k 2, f 8, E 3: T = 6 tokens.
  const auto cfg = ssr::config::resolve(
      kDemo, {"train.batch_size=2", "train.seq_len=3", "model.d_model=8", "model.n_heads=1", "model.attn_span=6",
              "model.n_layers=1", "model.top_k=2", "model.d_inner=8", "model.n_experts=3"});
  const auto f = ssr::models::step_flops(cfg, 5);
  std::map<std::string, double> by(f.begin(), f.end());
  CHECK(by["output_layer"] == 1440);  // 6 T d V
  // 3 (4 T d^2 + 4 B (L+M) d^2 + 2 T (L+M) d + 2 T L d + 2 T (L+M) d) = 3 (1536 + 4608 + 864 + 576 + 864)
  CHECK(by["attention"] == 25344);
  CHECK(by["experts"] == 9216);  // 3 k 4 T d f
  CHECK(by["gates"] == 864);     // 3 2 T d E
  CHECK(by["total"] == 1440 + 25344 + 9216 + 864);
}

#ifdef SSR_WITH_CUDA
TEST_CASE("cuda: the host-sync counter counts a device-to-host read and not a device reduction", "[step][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device here: the sync counter was compiled, not run");
    return;
  }
  const torch::Device cuda(torch::kCUDA);
  auto x = torch::randn({1000}, torch::TensorOptions().device(cuda));
  ssr::bench::SyncCounter counter(cuda);
  auto s = x.sum();  // stays on the device
  CHECK(counter.count() == 0);
  (void)s.item<float>();  // waits for the device
  CHECK(counter.count() == 1);
}
#endif
