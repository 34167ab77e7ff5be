// Swin-MoE: window geometry and the shifted-window mask by hand, module shapes, parameter counts
// of the presets against the published Swin-S count, the Tutel gate's capacity, dropping and
// balance loss by hand, the OOD metrics on hand fixtures, the IDX reader on the real
// Fashion-MNIST files, the JPEG class-folder path, and a short seeded training run.
#include <ATen/CPUGeneratorImpl.h>
#include <catch2/catch.hpp>
#include <turbojpeg.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "harness/data/images.hpp"
#include "harness/store/store.hpp"
#include "harness/train/memory.hpp"
#include "harness/train/metrics.hpp"
#include "harness/train/schedule.hpp"
#include "harness/train/trainer.hpp"
#include "models/swin_moe.hpp"
#include "routers/router.hpp"
#include "routers/swin_moe_gate.hpp"
#include "tests/helpers.hpp"

using namespace ssr;
namespace fs = std::filesystem;

namespace {

using ssr::testing::resolve_experiment;
using ssr::testing::temp_dir;

using ssr::testing::cpu_gen;
using ssr::testing::normal_cdf;

// The Debian package's files (make deps), or their copy unpacked by `make offline-build`.
std::string fmnist_dir() {
  for (const std::string& d : {std::string("/usr/share/datasets/fashion-mnist"),
                               std::string(SSR_SOURCE_DIR) + "/.offline/root/usr/share/datasets/fashion-mnist"})
    if (fs::exists(d + "/t10k-labels-idx1-ubyte.gz")) return d;
  FAIL("Fashion-MNIST not found: apt-get install dataset-fashion-mnist (make deps)");
  return "";
}

// A w x h JPEG of one RGB colour, written with TurboJPEG (a fixture of the decoder).
void write_jpeg(const fs::path& p, int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w * h * 3));
  for (size_t i = 0; i < rgb.size(); i += 3) rgb[i] = r, rgb[i + 1] = g, rgb[i + 2] = b;
  tjhandle tj = tjInitCompress();
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  REQUIRE(tjCompress2(tj, rgb.data(), w, 0, h, TJPF_RGB, &jpeg, &size, TJSAMP_444, 95, 0) == 0);
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(jpeg), static_cast<std::streamsize>(size));
  tjFree(jpeg);
  tjDestroy(tj);
}

}  // namespace

TEST_CASE("window partition and reverse round-trip, windows in row-major order", "[swin]") {
  struct Row {
    int64_t B, H, W, C, ws;
  };
  for (const auto& r : std::vector<Row>{{1, 4, 4, 1, 2}, {2, 14, 14, 3, 7}, {3, 6, 9, 2, 3}}) {
    auto x = torch::randn({r.B, r.H, r.W, r.C}, cpu_gen(1));  // (B, H, W, C)
    auto w = models::window_partition(x, r.ws);
    CHECK(w.sizes() == torch::IntArrayRef({r.B * (r.H / r.ws) * (r.W / r.ws), r.ws * r.ws, r.C}));
    CHECK(models::window_reverse(w, r.ws, r.H, r.W).equal(x));
  }
  // Window 1 of a 4x4 map with ws 2 holds rows 0-1, columns 2-3.
  auto x = torch::arange(16, torch::kFloat).view({1, 4, 4, 1});
  CHECK(models::window_partition(x, 2)[1].flatten().equal(torch::tensor({2.f, 3.f, 6.f, 7.f})));
}

TEST_CASE("shifted-window mask: only positions from the same region of the unrolled map attend", "[swin]") {
  struct Row {
    int64_t H, W, ws, shift;
  };
  for (const auto& r : std::vector<Row>{{4, 4, 2, 1}, {14, 14, 7, 3}, {6, 6, 3, 1}}) {
    auto mask = models::shifted_window_mask(r.H, r.W, r.ws, r.shift);  // (nW, ws*ws, ws*ws)
    REQUIRE(mask.sizes() == torch::IntArrayRef({(r.H / r.ws) * (r.W / r.ws), r.ws * r.ws, r.ws * r.ws}));
    // Independent rule: after the roll by -shift, a position wrapped around in a dimension iff
    // its rolled index is >= size - shift; two positions may attend iff they wrapped alike.
    auto a = mask.accessor<float, 3>();
    const int64_t per_row = r.W / r.ws;
    for (int64_t w = 0; w < mask.size(0); ++w)
      for (int64_t p = 0; p < r.ws * r.ws; ++p)
        for (int64_t q = 0; q < r.ws * r.ws; ++q) {
          auto pos = [&](int64_t t) {
            return std::pair{(w / per_row) * r.ws + t / r.ws, (w % per_row) * r.ws + t % r.ws};
          };
          auto [pi, pj] = pos(p);
          auto [qi, qj] = pos(q);
          const bool same =
              (pi >= r.H - r.shift) == (qi >= r.H - r.shift) && (pj >= r.W - r.shift) == (qj >= r.W - r.shift);
          CHECK(a[w][p][q] == (same ? 0.f : -100.f));
        }
  }
  // By hand, 4x4 / ws 2 / shift 1: the top-left window is one region; in the bottom-right
  // window all four positions come from different regions.
  auto m = models::shifted_window_mask(4, 4, 2, 1);
  CHECK(m[0].eq(0).all().item<bool>());
  CHECK(m[3].eq(0).equal(torch::eye(4, torch::kBool)));
  CHECK_FALSE(models::shifted_window_mask(4, 4, 2, 0).defined());
}

TEST_CASE("relative position index by hand for a 2x2 window", "[swin]") {
  // (drow + 1) * 3 + (dcol + 1) with positions (0,0), (0,1), (1,0), (1,1).
  auto idx = models::relative_position_index(2);
  CHECK(idx.equal(torch::tensor({4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4}, torch::kInt64).view({4, 4})));
  CHECK(models::relative_position_index(7).max().item<int64_t>() == 13 * 13 - 1);
}

TEST_CASE("continuous position bias inputs by hand for a 2x2 window", "[swin]") {
  // Offsets -1, 0, 1 scaled by 8 / (ws - 1), then sign(x) log2(|x| + 1) / log2(8): +-log2(9) / 3.
  const float c = static_cast<float>(std::log2(9.0) / 3.0);
  auto expect = torch::tensor({-c, -c, -c, 0.f, -c, c, 0.f, -c, 0.f, 0.f, 0.f, c, c, -c, c, 0.f, c, c}).view({9, 2});
  CHECK(torch::allclose(models::log_relative_coords(2), expect));
  // Row i of the table is offset i of relative_position_index: the zero offset sits at 4.
  CHECK(models::log_relative_coords(2)[4].abs().sum().item<float>() == 0);
  CHECK(models::log_relative_coords(7).abs().max().item<float>() == Approx(std::log2(9.0) / 3.0));
  CHECK(models::log_relative_coords(1).equal(torch::zeros({1, 2})));  // one position: no offsets
}

TEST_CASE("truncated normal init as timm draws it: absolute bounds", "[swin][model]") {
  struct Case {
    double std, a, b, want_std, tol;
  };
  // N(0, 1) cut at +-2 has std sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)) = 0.8796; at std 0.005 the
  // bounds +-2 are 400 std away and change nothing.
  for (const Case& c :
       {Case{1, -2, 2, 0.8796, 0.01}, Case{0.005, -2, 2, 0.005, 0.0001}, Case{0.02, -2, 2, 0.02, 0.0004}}) {
    INFO("std " << c.std);
    torch::manual_seed(11);
    auto t = torch::empty({200000});
    models::trunc_normal_(t, c.std, c.a, c.b);
    CHECK(t.std().item<double>() == Approx(c.want_std).margin(c.tol));
    CHECK(t.abs().max().item<double>() <= c.b);
    CHECK(torch::isfinite(t).all().item<bool>());
  }
}

TEST_CASE("router.group_images routes each group of images alone, capacity included", "[swin][routers]") {
  // With the Tutel gate the capacity and the dropping depend on the tokens of a call: two images
  // in one call differ from each image alone, and router.group_images=1 makes them equal.
  // A small capacity factor makes sure slots are dropped.
  auto cfg = resolve_experiment("fmnist-demo.yaml",
                                {"router=swin_moe", "router.capacity_factor=0.3", "router.group_images=1"});
  auto whole = resolve_experiment("fmnist-demo.yaml", {"router=swin_moe", "router.capacity_factor=0.3"});
  torch::manual_seed(4);
  models::SwinBlock grouped(cfg, 16, 4, 2, 2, 0, 0.0, true);
  torch::manual_seed(4);
  models::SwinBlock together(whole, 16, 4, 2, 2, 0, 0.0, true);
  grouped->eval();
  together->eval();
  auto gen = cpu_gen(1);
  auto aux = torch::zeros({});
  auto x = torch::randn({2, 16, 16});  // (images, tokens, channels)
  auto y = grouped->forward(x, aux, gen);
  auto alone =
      torch::cat({together->forward(x.narrow(0, 0, 1), aux, gen), together->forward(x.narrow(0, 1, 1), aux, gen)});
  CHECK(torch::allclose(y, alone, 1e-5, 1e-6));
  CHECK_FALSE(torch::allclose(together->forward(x, aux, gen), alone, 1e-5, 1e-6));
  CHECK_THROWS_WITH(
      models::SwinMoE(resolve_experiment("fmnist-demo.yaml", {"router.group_images=2", "router.group_tokens=8"})),
      Catch::Contains("router.group_images"));
}

TEST_CASE("a router that reads token ids is refused for Swin-MoE, naming the router", "[swin][routers]") {
  auto cfg = resolve_experiment("fmnist-demo.yaml", {"router.name=hash"});
  CHECK_THROWS_WITH(models::SwinBlock(cfg, 16, 4, 2, 2, 1, 0.1, /*moe=*/true),
                    Catch::Contains("router.name: hash routes by input token id"));
}

TEST_CASE("Swin modules: shapes, drop path, a tiny model's logits", "[swin]") {
  auto cfg = resolve_experiment("fmnist-demo.yaml", {});
  auto gen = cpu_gen(3);
  auto aux = torch::zeros({});
  SECTION("window attention and patch merging") {
    models::WindowAttention attn(16, 2, 4, 0.02);
    CHECK(attn->forward(torch::randn({8, 4, 16}), {}).sizes() == torch::IntArrayRef({8, 4, 16}));
    CHECK(attn->forward(torch::randn({8, 4, 16}), models::shifted_window_mask(4, 4, 2, 1)).sizes() ==
          torch::IntArrayRef({8, 4, 16}));
    CHECK(attn->coords.sizes() == torch::IntArrayRef({9, 2}));
    CHECK(attn->cpb_fc2->weight.sizes() == torch::IntArrayRef({4, 512}));
    CHECK_FALSE(attn->cpb_fc2->bias.defined());
    models::PatchMerging merge(8, 4, 0.02);
    CHECK(merge->forward(torch::randn({2, 16, 8})).sizes() == torch::IntArrayRef({2, 4, 16}));
  }
  SECTION("dense and MoE blocks keep (B, L, C)") {
    for (bool moe : {false, true}) {
      models::SwinBlock block(cfg, 16, 4, 2, 2, 1, 0.1, moe);
      CHECK(block->forward(torch::randn({3, 16, 16}), aux, gen).sizes() == torch::IntArrayRef({3, 16, 16}));
      CHECK(static_cast<bool>(block->moe) == moe);
    }
  }
  SECTION("drop path zeroes whole samples in training and is the identity in eval") {
    auto x = torch::ones({400, 3, 2});
    auto y = models::drop_path(x, 0.25, true, gen);
    auto per_sample = y.flatten(1);  // (400, 6)
    CHECK((per_sample.eq(0).all(1) | per_sample.eq(1 / 0.75f).all(1)).all().item<bool>());
    CHECK(per_sample.eq(0).all(1).to(torch::kFloat).mean().item<double>() == Approx(0.25).margin(0.07));
    CHECK(models::drop_path(x, 0.25, false, gen).equal(x));
  }
  SECTION("the tiny preset classifies 28x28 grayscale images") {
    models::SwinMoE model(cfg);
    CHECK(model->moe_layers.size() == 2);
    auto logits = model->forward(torch::randn({3, 1, 28, 28}), aux, gen);
    CHECK(logits.sizes() == torch::IntArrayRef({3, 10}));
    CHECK(torch::isfinite(logits).all().item<bool>());
  }
  SECTION("bad geometry is one ConfigError naming the key") {
    CHECK_THROWS_WITH(models::SwinMoE(resolve_experiment("fmnist-demo.yaml", {"model.window=4"})),
                      Catch::Contains("model.window"));
    CHECK_THROWS_WITH(models::SwinMoE(resolve_experiment("fmnist-demo.yaml", {"model.patch_size=3"})),
                      Catch::Contains("model.patch_size"));
    CHECK_THROWS_WITH(models::SwinMoE(resolve_experiment("fmnist-demo.yaml", {"model.swin_heads=[3,4]"})),
                      Catch::Contains("model.swin_heads"));
  }
}

TEST_CASE("parameter counts: Swin-S matches the published 49,606,258, MoE blocks by hand", "[swin]") {
  auto count = [](const config::Config& cfg) {
    std::map<std::string, int64_t> m;
    for (const auto& r : models::swin_parameter_count(cfg)) m[r.component] = r.count;
    return m;
  };
  // An expert of width d: 2 * d * 4d weights + 4d + d biases (the fc2 one frozen); a dense MLP
  // has no fc2 bias; an MoE layer: E experts + a d x E gate.
  auto ffn = [](int64_t d) { return 8 * d * d + 5 * d; };
  auto mlp = [](int64_t d) { return 8 * d * d + 4 * d; };
  // timm's swin_small_patch4_window7_224 (Swin v1) has 49,606,258. Swin-MoE differs per block:
  // a (13 * 13, heads) bias table becomes the 2 -> 512 -> heads position-bias MLP, and the MLP's
  // fc2 loses its bias.
  const int64_t swin_s_v1 = 49606258;
  const std::vector<int64_t> depths = {2, 2, 18, 2}, heads = {3, 6, 12, 24}, dims = {96, 192, 384, 768};
  int64_t swin_s = swin_s_v1;
  for (size_t st = 0; st < depths.size(); ++st)
    swin_s += depths[st] * (-169 * heads[st] + (2 * 512 + 512 + 512 * heads[st]) - dims[st]);
  CHECK(count(resolve_experiment("fmnist-demo.yaml", {"model=swin-moe-s", "model.moe_every=[0,0,0,0]"}))["total"] ==
        swin_s);
  const int64_t E = 2;  // the preset's 32 experts take 2 GB; the arithmetic is the same
  const auto moe = count(resolve_experiment("fmnist-demo.yaml", {"model=swin-moe-s", "model.n_experts=2"}));
  CHECK(moe.at("experts") == E * (9 * ffn(384) + ffn(768)));
  CHECK(moe.at("gates") == E * (9 * 384 + 768));
  CHECK(moe.at("total") == swin_s - 9 * mlp(384) - mlp(768) + E * (9 * ffn(384) + ffn(768)) + E * (9 * 384 + 768));
  // The tiny preset: MoE blocks of width 32 and 64 with hidden 2d and 4 experts.
  const auto tiny = count(resolve_experiment("fmnist-demo.yaml", {}));
  CHECK(tiny.at("experts") == 4 * ((2 * 32 * 64 + 64 + 32) + (2 * 64 * 128 + 128 + 64)));
  CHECK(tiny.at("gates") == 4 * (32 + 64));
  int64_t sum = 0;
  for (const auto& [k, v] : tiny)
    if (k != "total") sum += v;
  CHECK(sum == tiny.at("total"));
}

TEST_CASE("the memory check's Swin parameter bound never exceeds the built model's count", "[swin][params]") {
  // A lower bound: within 2 % of the count (biases, norms and position-bias MLPs left out), never above.
  for (const auto& overrides : std::vector<std::vector<std::string>>{
           {}, {"model=swin-moe-s", "model.n_experts=2"}, {"model=swin-moe-s", "model.moe_every=[0,0,0,0]"}}) {
    const auto cfg = resolve_experiment("fmnist-demo.yaml", overrides);
    const double bound = train::swin_params_lower_bound(cfg);
    const auto built = static_cast<double>(models::swin_parameter_count(cfg).back().count);
    INFO(overrides.size() << " overrides: bound " << bound << ", built " << built);
    CHECK(bound <= built);
    CHECK(bound >= (overrides.empty() ? 0.8 : 0.98) * built);
  }
  CHECK_THROWS_WITH(
      train::check_vision_memory(resolve_experiment("fmnist-demo.yaml", {"model.embed_dim=65536"}), torch::kCPU),
      Catch::Contains("model.embed_dim=65536") && Catch::Contains("GiB"));
  CHECK_NOTHROW(train::check_vision_memory(resolve_experiment("fmnist-demo.yaml", {}), torch::kCPU));
}

TEST_CASE("swin-moe gate: capacity, batch-prioritised dropping, raw softmax weights", "[swin][routers]") {
  struct Row {
    std::vector<std::vector<double>> logits;
    int64_t k;
    std::vector<std::vector<int64_t>> experts;
    std::vector<std::vector<int>> kept;  // 1 = within capacity
  };
  const std::vector<Row> table = {
      // cap = 1 * int(1.25 * 2) = 2: three tokens want expert 0; the least confident (token 1) drops.
      {{{3, 0}, {1, 0}, {2, 0}, {0, 5}}, 1, {{0}, {0}, {0}, {1}}, {{1}, {0}, {1}, {1}}},
      // cap = 2 * int(1.25 * 1) = 2 per expert: first choices by priority (tokens 2, 0 keep e0),
      // then second choices in the same order (tokens 2, 0 keep e1).
      {{{4, 3, 0, 0}, {3, 2, 0, 0}, {5, 1, 0, 0}, {2, 1.5, 0, 0}},
       2,
       {{0, 1}, {0, 1}, {0, 1}, {0, 1}},
       {{1, 1}, {0, 0}, {1, 1}, {0, 0}}},
      // cap = 2 * int(1.25 * 2) = 4 >= every load: nothing drops.
      {{{1, 0}, {0, 1}, {2, 1}}, 2, {{0, 1}, {1, 0}, {0, 1}}, {{1, 1}, {1, 1}, {1, 1}}},
  };
  auto gen = cpu_gen(1);
  for (const auto& row : table) {
    const int64_t n = static_cast<int64_t>(row.logits.size()), e = static_cast<int64_t>(row.logits[0].size());
    auto logits = torch::empty({n, e}, torch::kFloat64);  // (tokens, experts)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < e; ++j) logits[t][j] = row.logits[t][j];
    routers::SwinMoeGate gate(row.k, 1.0, 1.25, 0.0);
    auto r = gate.route(logits, logits, routers::Mode::Eval, gen);
    auto probs = logits.softmax(-1);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < row.k; ++j) {
        const int64_t ex = row.experts[t][j];
        CHECK(r.experts[t][j].item<int64_t>() == ex);
        const double want = row.kept[t][j] ? probs[t][ex].item<double>() : 0.0;
        CHECK(r.weights[t][j].item<double>() == Approx(want).margin(1e-12));
      }
  }
  CHECK(routers::swin_moe_capacity(196 * 48, 32, 2, 1.25) == 2 * 367);  // ceil(9408/32) = 294
}

TEST_CASE("swin-moe gate: balance loss by hand, noise only in training", "[swin][routers]") {
  // probs [[.5, .5], [.75, .25]], top-1 thresholds = the clean logits 0 and ln 3, sigma = 1/2.
  auto logits = torch::tensor({0.0, 0.0, std::log(3.0), 0.0}, torch::kFloat64).view({2, 2});
  auto cv2 = [](std::vector<double> v) {
    const double m = (v[0] + v[1]) / 2, var = ((v[0] - m) * (v[0] - m) + (v[1] - m) * (v[1] - m)) / 1.0;
    return var / (m * m + 1e-10);
  };
  const double s = 0.5, t1 = std::log(3.0);
  const double imp = cv2({1.25, 0.75});
  const double load =
      cv2({normal_cdf(0.5 / s) + normal_cdf((0.75 - t1) / s), normal_cdf(0.5 / s) + normal_cdf((0.25 - t1) / s)});
  auto gen = cpu_gen(1);
  routers::SwinMoeGate gate(1, 1.0, 1.25, 0.1);
  auto r = gate.route(logits, logits, routers::Mode::Eval, gen);
  CHECK(r.aux_loss.item<double>() == Approx(0.1 * (imp + load) / 2).epsilon(1e-10));
  CHECK(imp == Approx(0.125).epsilon(1e-9));

  auto many = torch::randn({64, 8}, cpu_gen(5), torch::kFloat64);  // (tokens, experts)
  auto e1 = gate.route(many, many, routers::Mode::Eval, gen), e2 = gate.route(many, many, routers::Mode::Eval, gen);
  CHECK(e1.weights.equal(e2.weights));
  auto g1 = cpu_gen(9), g2 = cpu_gen(9);
  auto t1r = gate.route(many, many, routers::Mode::Train, g1), t2r = gate.route(many, many, routers::Mode::Train, g2);
  CHECK(t1r.weights.equal(t2r.weights));
  CHECK_FALSE(t1r.weights.equal(e1.weights));
  // Selected through the factory and the schema.
  config::Config cfg;
  cfg.set("router.name", "swin-moe", "test");
  CHECK(
      routers::make_router(cfg, 8, 4, 2)->route(many.narrow(1, 0, 4), many, routers::Mode::Eval, gen).weights.size(1) ==
      2);
}

TEST_CASE("MoE layer with GELU experts: dropped slots contribute nothing", "[swin][model]") {
  auto cfg =
      resolve_experiment("fmnist-demo.yaml", {"router=swin_moe", "router.capacity_factor=0.3", "model.n_experts=4"});
  torch::manual_seed(1);
  models::MoE moe(cfg, models::MoEShape{16, 32, models::Activation::Gelu, false, 0.005});
  moe->eval();
  auto gen = cpu_gen(2);
  auto x = torch::randn({40, 16}, cpu_gen(4));  // (tokens, d)
  auto routing = moe->route(x, gen);
  auto aux = torch::zeros({});
  auto out = moe->forward(x, aux, gen);
  CHECK(torch::allclose(out, moe->dense_reference(x, routing), 1e-5, 1e-6));
  auto dropped = routing.weights.eq(0).all(1);  // (tokens) every slot over capacity
  REQUIRE(dropped.any().item<bool>());
  CHECK(out.index({dropped}).abs().max().item<double>() == 0.0);
  CHECK_FALSE(moe->b2.requires_grad());
  CHECK(moe->gate->bias.defined() == false);
}

TEST_CASE("OOD metrics and accuracies against hand-computed fixtures", "[swin][metrics]") {
  struct Row {
    std::vector<double> score;
    std::vector<int> pos;
    double aupr, auroc, fpr95;
  };
  const std::vector<Row> table = {
      // AP = 1/3 + (1/3)(2/3) + (1/3)(3/4) = 29/36; AUROC = 7/9; 95 % recall at 0.6 flags 1 of 3 negatives.
      {{0.9, 0.8, 0.7, 0.6, 0.5, 0.4}, {1, 0, 1, 1, 0, 0}, 100.0 * 29 / 36, 100.0 * 7 / 9, 100.0 / 3},
      // Ties are one threshold: AP = 0.5 * 0.5 + 0.5 * 0.5, AUROC 1/2, FPR95 all negatives.
      {{1, 1, 0, 0}, {1, 0, 1, 0}, 50.0, 50.0, 100.0},
      // Perfect separation.
      {{3, 2, 1, 0}, {1, 1, 0, 0}, 100.0, 100.0, 0.0},
      // Reversed: AP = (1/2)(1/3) + (1/2)(1/2).
      {{3, 2, 1, 0}, {0, 0, 1, 1}, 100.0 * (1.0 / 6 + 1.0 / 4), 0.0, 100.0},
  };
  for (const auto& row : table) {
    auto m = train::ood_metrics(torch::tensor(row.score), torch::tensor(row.pos).to(torch::kBool));
    CHECK(m.aupr == Approx(row.aupr).margin(1e-9));
    CHECK(m.auroc == Approx(row.auroc).margin(1e-9));
    CHECK(m.fpr95 == Approx(row.fpr95).margin(1e-9));
  }
  auto logits = torch::tensor({{0.1, 0.5, 0.2, 0.9}, {2.0, 1.0, 0.0, -1.0}, {0.0, 0.3, 0.2, 0.1}});  // (3, 4)
  auto labels = torch::tensor({1, 0, 2}, torch::kInt64);
  CHECK(train::top_k_correct(logits, labels, 1) == 1);  // row 1
  CHECK(train::top_k_correct(logits, labels, 2) == 3);
  // Masked to classes {1, 2} (ImageNet-A/R style): row 0 now predicts 1, row 2 still 1.
  CHECK(train::top_k_correct(train::mask_logits(logits, {1, 2}), labels, 1) == 1);
  CHECK(train::top_k_correct(train::mask_logits(logits, {0, 1}), labels, 1) == 2);
}

TEST_CASE("IDX reader on the real Fashion-MNIST files", "[swin][data]") {
  const std::string dir = fmnist_dir();
  auto test = data::read_idx(dir + "/t10k-images-idx3-ubyte.gz", dir + "/t10k-labels-idx1-ubyte.gz");
  CHECK(test.pixels.sizes() == torch::IntArrayRef({10000, 1, 28, 28}));
  CHECK(test.labels.narrow(0, 0, 8).equal(torch::tensor({9, 2, 1, 1, 6, 1, 4, 6}, torch::kInt64)));
  CHECK(torch::bincount(test.labels).equal(torch::full({10}, 1000, torch::kInt64)));  // balanced test set
  CHECK(test.pixels.to(torch::kFloat).mean().item<double>() / 255 == Approx(0.2868).margin(0.002));

  auto cfg = resolve_experiment("fmnist-demo.yaml", {"data.dir=" + dir});
  auto d = data::load_images(cfg);
  CHECK(d.splits.at("train").size() == 55000);
  CHECK(d.splits.at("valid").size() == 5000);
  CHECK(d.splits.at("test").size() == 10000);
  data::ImageLoader loader(d.splits.at("test"), cfg, 4096, false, 0);
  data::ImageBatch b;
  int64_t seen = 0, batches = 0;
  while (loader.next(b)) seen += b.labels.size(0), ++batches;
  CHECK(seen == 10000);
  CHECK(batches == 3);
  CHECK(b.images.sizes() == torch::IntArrayRef({10000 - 2 * 4096, 1, 28, 28}));

  const auto tmp = temp_dir("swin", "idx");
  CHECK_THROWS_WITH(data::read_idx((tmp / "none-images").string(), (tmp / "none-labels").string()),
                    Catch::Contains("none-images"));
  std::ofstream((tmp / "cut-images").string(), std::ios::binary)
      << std::string("\0\0\x08\x03\0\0\0\x05\0\0\0\x1c\0\0\0\x1c", 16);
  std::ofstream((tmp / "cut-labels").string(), std::ios::binary) << std::string("\0\0\x08\x01\0\0\0\x05", 8);
  CHECK_THROWS_WITH(data::read_idx((tmp / "cut-images").string(), (tmp / "cut-labels").string()),
                    Catch::Contains("cut-images"));
  CHECK_THROWS_WITH(
      data::load_images(resolve_experiment("fmnist-demo.yaml", {"data.dir=" + dir, "model.num_classes=9"})),
      Catch::Contains("model.num_classes"));
}

TEST_CASE("JPEG class folders: decode, eval transform, a corrupt file is skipped and counted", "[swin][data]") {
  const auto root = temp_dir("swin", "jpeg");
  write_jpeg(root / "train/n01/a.JPEG", 40, 30, 255, 0, 0);
  write_jpeg(root / "train/n01/b.JPEG", 30, 40, 250, 0, 0);
  write_jpeg(root / "train/n02/c.JPEG", 32, 32, 0, 0, 255);
  write_jpeg(root / "val/n01/d.JPEG", 48, 24, 255, 0, 0);
  write_jpeg(root / "val/n02/e.JPEG", 24, 24, 0, 0, 255);
  std::ofstream(root / "val/n02/f.JPEG") << "not a jpeg";
  auto cfg = resolve_experiment(
      "fmnist-demo.yaml", {"data.format=imagefolder", "data.dir=" + root.string(), "data.train=train", "data.valid=val",
                           "data.test=\"\"", "model.image_size=16", "model.in_chans=3", "model.num_classes=2",
                           "data.eval_resize=20", "data.mean=[0,0,0]", "data.std=[1,1,1]"});
  auto d = data::load_images(cfg);
  CHECK(d.classes == std::vector<std::string>{"n01", "n02"});
  CHECK(d.splits.at("train").labels.equal(torch::tensor({0, 0, 1}, torch::kInt64)));
  auto img = data::decode_jpeg((root / "train/n01/a.JPEG").string());
  CHECK(img.sizes() == torch::IntArrayRef({3, 30, 40}));
  CHECK(img[0].to(torch::kFloat).mean().item<double>() == Approx(255).margin(3));
  CHECK_THROWS_AS(data::decode_jpeg((root / "val/n02/f.JPEG").string()), data::DecodeError);

  data::ImageLoader eval(d.splits.at("valid"), cfg, 8, false, 0);
  data::ImageBatch b;
  REQUIRE(eval.next(b));
  CHECK(b.images.sizes() == torch::IntArrayRef({2, 3, 16, 16}));  // 3 files, 1 unreadable
  CHECK(b.labels.equal(torch::tensor({0, 1}, torch::kInt64)));
  CHECK(b.images[1][2].mean().item<double>() == Approx(1.0).margin(0.02));  // blue stays blue
  CHECK(eval.skipped() == 1);
  CHECK_FALSE(eval.next(b));

  data::ImageLoader train(d.splits.at("train"), cfg, 2, true, 7), again(d.splits.at("train"), cfg, 2, true, 7);
  data::ImageBatch t1, t2;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(train.next(t1));
    REQUIRE(again.next(t2));
    CHECK(t1.images.sizes() == torch::IntArrayRef({2, 3, 16, 16}));
    CHECK(t1.images.equal(t2.images));  // a function of (seed, batch), whatever the threads did
  }
  write_jpeg(root / "val/n03/g.JPEG", 8, 8, 0, 255, 0);
  CHECK_THROWS_WITH(data::load_images(cfg), Catch::Contains("n03"));
  CHECK_THROWS_WITH(
      data::load_images(resolve_experiment(
          "fmnist-demo.yaml", {"data.format=imagefolder", "data.dir=" + root.string(), "data.train=nope"})),
      Catch::Contains("nope"));
}

TEST_CASE("image resizing antialiases as PIL does", "[swin][data]") {
  // A one-pixel checkerboard shrunk 5x: sampling without a low-pass filter lands on every fifth
  // pixel and returns a 0/1 checkerboard again; an antialiased resize averages it to grey.
  auto ij = torch::arange(80);
  auto board = ((ij.unsqueeze(1) + ij.unsqueeze(0)) % 2).to(torch::kFloat).unsqueeze(0);  // (1, 80, 80)
  auto small = data::resize_bicubic(board, 16, 16);                                       // (1, 16, 16)
  CHECK(small.sizes() == torch::IntArrayRef({1, 16, 16}));
  CHECK((small - 0.5).abs().max().item<double>() < 0.05);
  // Enlarging keeps a constant image constant.
  CHECK(torch::allclose(data::resize_bicubic(torch::full({3, 4, 4}, 0.25), 9, 7), torch::full({3, 9, 7}, 0.25)));
}

TEST_CASE("learning-rate schedule: warm-up from warmup_lr, cosine to min_lr", "[swin][train]") {
  auto cfg = resolve_experiment("fmnist-demo.yaml", {"train.lr=1", "train.warmup_lr=0.1", "train.min_lr=0.2",
                                                     "train.warmup=10", "train.steps=110"});
  struct Row {
    int64_t step;
    double lr;
  };
  for (const auto& r : std::vector<Row>{{0, 0.1}, {5, 0.55}, {10, 1.0}, {60, 0.6}, {110, 0.2}})
    CHECK(train::learning_rate(cfg, r.step) == Approx(r.lr).margin(1e-12));
  CHECK(train::learning_rate(resolve_experiment("fmnist-demo.yaml", {"train.schedule=constant", "train.min_lr=0",
                                                                     "train.lr=1", "train.warmup=10"}),
                             50) == 1.0);
}

TEST_CASE("a short seeded Fashion-MNIST run lowers the loss and repeats exactly", "[swin][train]") {
  const auto dir = temp_dir("swin", "train");
  const std::vector<std::string> small = {
      "data.dir=" + fmnist_dir(), "train.steps=40",      "train.batch_size=32",
      "train.warmup=4",           "run.log_every=1",     "run.threads=1",
      "data.holdout=0.01",        "eval.splits=[valid]", "run.out_dir=" + (dir / "ckpt").string(),
      "router=swin_moe"};
  auto cfg = resolve_experiment("fmnist-demo.yaml", small);
  store::Store db((dir / "runs.db").string());
  train::Options opts;
  opts.quiet = true;
  auto losses = [&](int64_t run) {
    std::vector<double> v;
    for (const auto& m : db.metrics(run))
      if (m.split == "train" && m.name == "loss") v.push_back(m.value);
    return v;
  };
  auto a = train::train(cfg, db, opts), b = train::train(cfg, db, opts);
  REQUIRE(a.status == "finished");
  const auto la = losses(a.run_id), lb = losses(b.run_id);
  REQUIRE(la.size() == 40);
  CHECK(la == lb);
  const double first = (la[0] + la[1] + la[2] + la[3] + la[4]) / 5,
               last = (la[35] + la[36] + la[37] + la[38] + la[39]) / 5;
  CHECK(last < first - 0.3);
  std::map<std::string, double> res;
  for (const auto& r : db.results(a.run_id)) res[r.split + "/" + r.name] = r.value;
  CHECK(res.at("valid/images") == 600);
  CHECK(res.at("valid/top1") > 20);  // 10 classes: chance is 10 %
  CHECK(res.at("valid/top5") >= res.at("valid/top1"));
}

TEST_CASE("an interrupted Fashion-MNIST run resumed from its checkpoint repeats the uninterrupted losses",
          "[swin][train]") {
  const auto dir = temp_dir("swin", "resume");
  // router=noisy: its noise draws from the run's generator, so that must be restored too.
  const std::vector<std::string> small = {"data.dir=" + fmnist_dir(),
                                          "train.steps=60",
                                          "train.batch_size=16",
                                          "train.warmup=4",
                                          "run.log_every=1",
                                          "run.threads=1",
                                          "data.holdout=0.01",
                                          "eval.splits=[valid]",
                                          "train.eval_every=8",
                                          "train.checkpoint_every=8",
                                          "eval.checkpoint=best",
                                          "run.out_dir=" + (dir / "ckpt").string(),
                                          "router=noisy"};
  const auto cfg = resolve_experiment("fmnist-demo.yaml", small);
  const auto db_a = (dir / "a.db").string(), db_b = (dir / "b.db").string();
  train::Options opts;
  opts.quiet = true;
  store::Store sa(db_a), sb(db_b);
  const auto a = train::train(cfg, sa, opts);
  REQUIRE(a.status == "finished");

  // SIGINT once step 12 is stored: the run stops at a step boundary, its last checkpoint at step 8.
  std::atomic<bool> stop{false};
  std::thread interrupter([&] {
    store::Store watch(db_b);
    while (!stop) {
      const auto runs = watch.runs();
      if (!runs.empty() && runs[0].step >= 12) {
        std::raise(SIGINT);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  const auto b = train::train(cfg, sb, opts);
  stop = true;
  interrupter.join();
  REQUIRE(b.status == "interrupted");
  REQUIRE(sb.run(b.run_id)->step < 60);

  opts.run = b.run_id;
  const auto c = train::train(cfg, sb, opts);
  REQUIRE(c.status == "finished");
  CHECK(c.run_id == b.run_id);
  CHECK(sb.runs().size() == 1);
  auto series = [](store::Store& s, int64_t run, const std::string& split, const std::string& name) {
    std::vector<double> v;
    for (const auto& m : s.metrics(run))
      if (m.split == split && m.name == name) v.push_back(m.value);
    return v;
  };
  const auto la = series(sa, a.run_id, "train", "loss");
  REQUIRE(la.size() == 60);
  CHECK(la == series(sb, c.run_id, "train", "loss"));
  CHECK(series(sa, a.run_id, "valid", "top1") == series(sb, c.run_id, "valid", "top1"));
  const auto ra = sa.results(a.run_id), rb = sb.results(c.run_id);
  REQUIRE(ra.size() == rb.size());
  for (size_t i = 0; i < ra.size(); ++i) {
    INFO(ra[i].split << " " << ra[i].name);
    if (ra[i].name != "seconds") CHECK(ra[i].value == rb[i].value);  // seconds: wall time
  }
}

TEST_CASE("the vision task trains in bf16, times its routers and evaluates SSR's inference modes", "[swin][train]") {
  // The training loop is the LM's: these keys work for every task.
  const auto dir = temp_dir("swin", "loop_keys");
  const std::vector<std::string> small = {"data.dir=" + fmnist_dir(),
                                          "train.steps=6",
                                          "run.log_every=1",
                                          "train.batch_size=16",
                                          "run.threads=1",
                                          "data.holdout=0.01",
                                          "eval.splits=[valid]",
                                          "run.out_dir=" + (dir / "ckpt").string(),
                                          "router=ssr_l",
                                          "router.p=1",
                                          "train.time_router=true",
                                          "eval.router_modes=[sinkhorn]"};
  store::Store db((dir / "runs.db").string());
  train::Options opts;
  opts.quiet = true;
  auto fp32 = small, bf16 = small;
  bf16.push_back("train.precision=bf16");
  const auto a = train::train(resolve_experiment("fmnist-demo.yaml", fp32), db, opts);
  const auto b = train::train(resolve_experiment("fmnist-demo.yaml", bf16), db, opts);
  REQUIRE(a.status == "finished");
  REQUIRE(b.status == "finished");
  auto results = [&](int64_t run) {
    std::map<std::string, double> res;
    for (const auto& r : db.results(run)) res[r.split + "/" + r.name] = r.value;
    return res;
  };
  for (const auto& run : {a.run_id, b.run_id}) {
    const auto res = results(run);
    CHECK(res.count("valid/top1"));
    CHECK(res.count("valid@sinkhorn/top1"));
    int64_t router_rows = 0;
    for (const auto& t : db.timings(run)) router_rows += t.phase == "router";
    CHECK(router_rows == 6);
  }
  double first_a = 0, first_b = 0;
  for (const auto& m : db.metrics(a.run_id))
    if (m.split == "train" && m.name == "loss" && m.step == 1) first_a = m.value;
  for (const auto& m : db.metrics(b.run_id))
    if (m.split == "train" && m.name == "loss" && m.step == 1) first_b = m.value;
  CHECK(std::isfinite(first_b));
  CHECK(first_b != first_a);                        // bfloat16 matmuls round differently
  CHECK(first_b == Approx(first_a).epsilon(0.05));  // but compute the same function
}

TEST_CASE("mixup, cutmix and random erasing as timm defines them", "[swin][data]") {
  // Sample i is the constant image i: every mixed pixel says which samples it came from.
  auto batch = [] { return torch::arange(4, torch::kFloat).view({4, 1, 1, 1}).expand({4, 3, 8, 8}).contiguous(); };
  const auto labels = torch::tensor({0, 1, 2, 3}, torch::kInt64);
  data::AugmentOptions opt;
  opt.classes = 5;
  struct Case {
    const char* name;
    double mixup, cutmix, mix_prob, smoothing;
  };
  for (const Case& c : {Case{"mixup", 0.8, 0, 1, 0}, Case{"cutmix", 0, 1.0, 1, 0},
                        Case{"both, smoothed", 0.8, 1.0, 1, 0.1}, Case{"never mixed, smoothed", 0.8, 1.0, 0, 0.1}}) {
    INFO(c.name);
    opt.mixup_alpha = c.mixup;
    opt.cutmix_alpha = c.cutmix;
    opt.mix_prob = c.mix_prob;
    opt.label_smoothing = c.smoothing;
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      std::mt19937_64 rng(seed);
      auto x = batch();
      const auto t = data::mix_batch(x, labels, opt, rng);  // (4, 5)
      REQUIRE(t.sizes() == torch::IntArrayRef({4, 5}));
      CHECK(t.sum(1).allclose(torch::ones({4}, torch::kDouble).to(t.dtype()), 1e-6));
      const double off = c.smoothing / 5, lam = (t[0][0].item<double>() - off) / (1 - c.smoothing);
      CHECK(t[0][3].item<double>() == Approx(off + (1 - lam) * (1 - c.smoothing)).margin(1e-6));
      CHECK(t[0][1].item<double>() == Approx(off).margin(1e-7));
      if (c.mix_prob == 0) CHECK(lam == Approx(1).margin(1e-6));
      // Sample 0 is mixed with sample 3: mixup blends every pixel, cutmix pastes 3s over 0s.
      const auto first = x[0];  // (3, 8, 8)
      const bool pasted = ((first == 0) | (first == 3)).all().item<bool>();
      if (pasted)
        CHECK((first == 0).to(torch::kDouble).mean().item<double>() == Approx(lam).margin(1e-6));
      else
        CHECK(first.allclose(torch::full_like(first, 3 * (1 - lam)), 1e-5));
      if (c.mixup > 0 && c.cutmix == 0) CHECK(!pasted);
      if (c.cutmix > 0 && c.mixup == 0) CHECK(pasted);
      std::mt19937_64 again(seed);
      auto y = batch();
      CHECK(data::mix_batch(y, labels, opt, again).equal(t));  // the batch's generator decides everything
      CHECK(y.equal(x));
    }
  }
  for (double p : {0.0, 1.0}) {
    INFO("random erasing p " << p);
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      std::mt19937_64 rng(seed);
      auto image = torch::full({3, 32, 32}, 100.0f);
      data::random_erase(image, p, rng);
      const double erased = (image != 100).to(torch::kDouble).mean().item<double>();
      if (p == 0)
        CHECK(erased == 0);
      else
        CHECK((erased >= 0.015 && erased <= 0.34));  // one box of 2 %..1/3 of the area (rounded)
    }
  }
}

TEST_CASE("a Fashion-MNIST training batch with mixup and cutmix carries soft targets", "[swin][data]") {
  auto cfg = resolve_experiment("fmnist-demo.yaml", {"data.dir=" + fmnist_dir(), "data.mixup=0.8", "data.cutmix=1.0",
                                                     "data.random_erase=0.25", "train.label_smoothing=0.1"});
  const auto data = data::load_images(cfg);
  data::ImageLoader loader(data.splits.at("train"), cfg, 32, /*train=*/true, 7);
  data::ImageBatch b;
  REQUIRE(loader.next(b));
  REQUIRE(b.targets.defined());
  CHECK(b.targets.sizes() == torch::IntArrayRef({32, 10}));
  CHECK(b.targets.sum(1).allclose(torch::ones({32}), 1e-5));
  CHECK((b.targets.argmax(1) == b.labels).any().item<bool>());
  data::ImageLoader eval(data.splits.at("test"), cfg, 32, /*train=*/false, 7);
  REQUIRE(eval.next(b));
  CHECK(!b.targets.defined());  // evaluation is never augmented

  // RandAugment changes the training images, and only them; the same seed repeats them.
  auto plain_cfg = resolve_experiment("fmnist-demo.yaml", {"data.dir=" + fmnist_dir(), "data.hflip=false"});
  auto ra_cfg =
      resolve_experiment("fmnist-demo.yaml", {"data.dir=" + fmnist_dir(), "data.hflip=false", "data.randaug_n=2"});
  data::ImageBatch p, r1, r2;
  data::ImageLoader plain(data.splits.at("train"), plain_cfg, 32, true, 7),
      ra1(data.splits.at("train"), ra_cfg, 32, true, 7), ra2(data.splits.at("train"), ra_cfg, 32, true, 7);
  REQUIRE((plain.next(p) && ra1.next(r1) && ra2.next(r2)));
  CHECK(p.labels.equal(r1.labels));
  CHECK(!p.images.equal(r1.images));
  CHECK(r1.images.equal(r2.images));
}

TEST_CASE("RandAugment ops against hand-computed levels", "[swin][data]") {
  using data::RandOp;
  // A 1 x 2 x 2 image at PIL levels {51, 153, 100, 200} (in [0, 1] as the loader holds it).
  const auto img = torch::tensor({51.f, 153.f, 100.f, 200.f}).view({1, 2, 2}) / 255;
  auto lv = [](const torch::Tensor& x) { return (x * 255).round().flatten(); };
  struct Case {
    const char* name;
    RandOp op;
    double m;
    bool negate;
    std::vector<float> expected;  // levels
  };
  const std::vector<Case> cases = {
      {"invert", RandOp::Invert, 5, false, {204, 102, 155, 55}},
      {"posterize m5: 2 bits", RandOp::Posterize, 5, false, {0, 128, 64, 192}},
      {"posterize m10: 0 bits", RandOp::Posterize, 10, false, {0, 0, 0, 0}},
      {"solarize m5: from 128", RandOp::Solarize, 5, false, {51, 102, 100, 55}},
      {"solarize-add m10: +110 below 128", RandOp::SolarizeAdd, 10, false, {161, 153, 210, 200}},
      {"brightness m10: x1.9", RandOp::Brightness, 10, false, {97, 255, 190, 255}},
      {"brightness m10 negated: x0.1", RandOp::Brightness, 10, true, {5, 15, 10, 20}},
      {"contrast m10 about mean 126: x1.9", RandOp::Contrast, 10, false, {0, 177, 77, 255}},
      {"autocontrast (PIL truncates: 174, 83)", RandOp::AutoContrast, 0, false, {0, 174, 83, 255}},
      {"colour of a grey image is itself", RandOp::Color, 10, false, {51, 153, 100, 200}},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    const auto got = lv(data::rand_op(img, c.op, c.m, c.negate));
    CHECK(got.allclose(torch::tensor(c.expected), 0, 1.01));  // within one level (rounding)
  }
  // PIL's equalize: 300 pixels at level 10, 300 at 20, 420 at 30 map to 0, 150, 255.
  auto eq =
      torch::cat({torch::full({300}, 10.f), torch::full({300}, 20.f), torch::full({420}, 30.f)}).view({1, 30, 34}) /
      255;
  const auto e = lv(data::rand_op(eq, RandOp::Equalize, 0, false));
  CHECK(e.narrow(0, 0, 300).eq(0).all().item<bool>());
  CHECK(e.narrow(0, 300, 300).eq(150).all().item<bool>());
  CHECK(e.narrow(0, 600, 420).eq(255).all().item<bool>());
  // Translation by 0.45 of a 20-pixel width is 9 pixels exactly: output column u is input u + 9.
  const auto ramp = torch::arange(20, torch::kFloat).div(20).view({1, 1, 20}).expand({1, 20, 20}).contiguous();
  const auto moved = data::rand_op(ramp, RandOp::TranslateX, 10, false);
  CHECK(moved.narrow(2, 0, 11).allclose(ramp.narrow(2, 9, 11), 0, 1e-5));
  CHECK(moved.narrow(2, 12, 8).allclose(torch::full({1, 20, 8}, 0.5f), 0, 1e-5));  // grey fill
  for (RandOp op : {RandOp::Rotate, RandOp::ShearX, RandOp::ShearY, RandOp::Sharpness, RandOp::Contrast}) {
    INFO("magnitude 0 is the identity for op " << static_cast<int>(op));
    CHECK(data::rand_op(ramp, op, 0, false).allclose(ramp, 0, 1e-5));
  }
  // The policy: n = 0 is the identity; a seed decides everything.
  std::mt19937_64 r0(3), r1(5), r2(5);
  CHECK(data::rand_augment(ramp, 0, 9, 0.5, r0).equal(ramp));
  CHECK(data::rand_augment(ramp, 2, 9, 0.5, r1).equal(data::rand_augment(ramp, 2, 9, 0.5, r2)));
}
