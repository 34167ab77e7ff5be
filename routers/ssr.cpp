// Selective Sinkhorn Routing (paper Algorithm 2, section 4.2). In a training forward this block
// draws tau ~ U(0,1) from the caller's generator; if tau < p it solves the OT plan Pi of the
// (optionally noisy) cost and routes to Pi's row top-k with weights Pi renormalised over those k
// (Prop. 4.1); otherwise it routes as vanilla (top-k of S, softmax over the k logits). At
// inference it is plain vanilla routing unless router.eval_mode keeps Sinkhorn and/or noise.
// Differentiated: only the vanilla forwards' weights, in S. Sinkhorn forwards give weights that
// are constants (Pi is solved on a detached cost), so W_g learns only through the softmax steps,
// as the paper states; the experts' parameters still get gradients through their outputs.
// Not differentiated: the choice of experts, the noise, tau.
#include "routers/ssr.hpp"

#include <fmt/format.h>

#include "harness/config/choice.hpp"
#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

SsrOptions ssr_options(const config::Config& cfg) {
  SsrOptions o;
  o.p = cfg.f("router.p");
  o.cost = cost_kind(cfg.s("router.cost"));
  o.noise = cfg.f("router.noise");
  o.noise_std = cfg.f("router.noise_std");
  o.noise_scope = config::choice<NoiseScope>(cfg, "router.noise_scope",
                                             {{"sinkhorn", NoiseScope::Sinkhorn}, {"all", NoiseScope::All}});
  o.eval_mode = eval_mode_named(cfg.s("router.eval_mode"));
  o.sinkhorn = sinkhorn_options(cfg);
  return o;
}

EvalMode eval_mode_named(const std::string& ev) {
  return config::choose<EvalMode>("inference mode", ev,
                                  {{"none", EvalMode::None},
                                   {"sinkhorn", EvalMode::Sinkhorn},
                                   {"noise", EvalMode::Noise},
                                   {"both", EvalMode::Both}});
}

SsrRouter::SsrRouter(int64_t top_k, SsrOptions opt) : k_(top_k), opt_(opt) {}

Routing SsrRouter::decide(const RouteInput& in, Mode mode, torch::Generator& gen) {
  const auto& logits = in.logits;  // (tokens, experts)
  const bool train = mode == Mode::Train;
  const bool sinkhorn_on = train || opt_.eval_mode == EvalMode::Sinkhorn || opt_.eval_mode == EvalMode::Both;
  const bool noise_on =
      opt_.noise > 0 && (train || opt_.eval_mode == EvalMode::Noise || opt_.eval_mode == EvalMode::Both);
  // p = 0 and p = 1 draw nothing, so p = 0 is exactly vanilla, generator included.
  const bool use_sinkhorn = sinkhorn_on && opt_.p > 0 && (opt_.p >= 1 || draw_uniform(gen) < opt_.p);
  // Inference "w/ noise" (Table 3) perturbs the selection itself, whatever the training scope.
  const bool noisy_cost = noise_on && (use_sinkhorn || opt_.noise_scope == NoiseScope::All || !train);

  if (!use_sinkhorn && !noisy_cost) {
    return top_k_softmax(logits, k_);
  }
  auto cost = transport_cost(logits, opt_.cost);  // (tokens, experts)
  if (noisy_cost) cost = cost + (opt_.noise * opt_.noise_std) * draw_normal(cost, gen);
  Routing r;
  r.aux_loss = torch::zeros({}, logits.options());
  if (!use_sinkhorn) {
    // noise_scope all, vanilla forward: select by the noisy cost, weigh by the clean logits.
    r.experts = stable_top_k(cost, k_).second;  // (tokens, k)
    r.weights = softmax_at(logits, r.experts);  // (tokens, k)
    return r;
  }
  auto res = sinkhorn(cost, opt_.sinkhorn);
  auto [top, idx] = stable_top_k(res.plan, k_);  // (tokens, k)
  r.experts = idx;
  r.weights = (top / top.sum(-1, /*keepdim=*/true)).to(logits.scalar_type());  // (tokens, k)
  fill_sinkhorn_fields(r, res);
  return r;
}

RouterSpec ssr_spec() {
  using namespace config::keys;
  RouterSpec s;
  s.name = "ssr";
  s.summary = "Selective Sinkhorn Routing: Sinkhorn with probability p in training, top-k otherwise";
  s.source = "paper Algorithm 2, Eq. 6 (cost noise)";
  s.caps.draws = s.caps.eval_modes = true;
  s.keys = {F("router.p", 0.001, 0, 1, "SSR: probability that a block uses Sinkhorn routing in a training forward"),
            cost_key(),
            F("router.noise", 0, 0, kInf, "SSR: alpha_noise, scale of Gaussian noise added to the cost (0 = off)"),
            F("router.noise_std", 1.0, 0, kInf, "SSR: sigma of the cost noise"),
            C("router.noise_scope", "sinkhorn", {"sinkhorn", "all"},
              "SSR: cost noise only in Sinkhorn forwards, or also selecting experts (top-k of the noisy cost) in "
              "vanilla forwards"),
            C("router.eval_mode", "none", {"none", "sinkhorn", "noise", "both"},
              "SSR at inference: none (vanilla), or keep Sinkhorn / noise / both (paper Table 3)")};
  for (auto& k : sinkhorn_keys()) s.keys.push_back(std::move(k));
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<SsrRouter>(sh.top_k, ssr_options(cfg));
  };
  s.sinkhorn_p = [](const config::Config& cfg) { return cfg.f("router.p"); };
  // p = 1: every timed forward is a Sinkhorn forward (at the paper's p = 0.001 one costs a vanilla one).
  s.bench = {{"ssr-l Sinkhorn fwd (xi .5, log)", {"p=1", "cost=linear", "xi=0.5"}},
             {"ssr-s Sinkhorn fwd (xi .5, log)", {"p=1", "cost=softmax", "xi=0.5"}},
             {"ssr-l Sinkhorn fwd (xi .5, SNS)", {"p=1", "cost=linear", "xi=0.5", "newton_steps=8"}}};
  return s;
}

}  // namespace ssr::routers
