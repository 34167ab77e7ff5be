#pragma once
#include "routers/router.hpp"
#include "routers/sinkhorn_router.hpp"

namespace ssr::routers {

// Where the SSR cost noise alpha * N(0, sigma^2) enters.
enum class NoiseScope {
  Sinkhorn,  // only the cost handed to Sinkhorn (paper Eq. 6 read literally)
  All,       // also the vanilla forwards: experts = top-k of the noisy cost (Prop. 4.3's reading)
};

// What SSR keeps on at inference (paper Table 3); None is the paper's choice.
enum class EvalMode { None, Sinkhorn, Noise, Both };

struct SsrOptions {
  double p = 0.001;  // probability that a training forward uses Sinkhorn
  Cost cost = Cost::Linear;
  double noise = 0;      // alpha_noise (0 = off)
  double noise_std = 1;  // sigma
  NoiseScope noise_scope = NoiseScope::Sinkhorn;
  EvalMode eval_mode = EvalMode::None;
  SinkhornOptions sinkhorn;
};

// Reads router.p, cost, noise, noise_std, noise_scope, eval_mode and the Sinkhorn keys.
SsrOptions ssr_options(const config::Config& cfg);
// "none" | "sinkhorn" | "noise" | "both" (router.eval_mode, eval.router_modes).
EvalMode eval_mode_named(const std::string& name);

// Selective Sinkhorn Routing (paper Algorithm 2).
class SsrRouter : public RouterImpl {
 public:
  SsrRouter(int64_t top_k, SsrOptions opt);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 public:
  // Switches what stays on at inference, so one trained model is evaluated several ways (Table 3).
  void set_eval_mode(const std::string& mode) override { opt_.eval_mode = eval_mode_named(mode); }

 private:
  int64_t k_;
  SsrOptions opt_;
};

}  // namespace ssr::routers
