#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

enum class LbForm {
  Reference,  // the authors' gate: importance divided by N*k (half the Switch value at k = 2)
  Switch,     // Switch/GShard: importance = mean router probability (divided by N)
};

LbForm lb_form(const std::string& name);

// E * sum_e f_e * P_e with f_e = share of the N*k top-k slots taken by e (not differentiable) and
// P_e = summed softmax(S)[:, e] over tokens / (N*k) (Reference) or / N (Switch): differentiable in S.
// logits: (tokens, experts), experts: (tokens, k). Returns ().
torch::Tensor load_balance_loss(const torch::Tensor& logits, const torch::Tensor& experts, LbForm form);

// Vanilla routing plus coef * load_balance_loss (paper baseline "SMoE w/ lb loss").
class LbRouter : public RouterImpl {
 public:
  LbRouter(int64_t top_k, double coef, LbForm form);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 public:
 private:
  int64_t k_;
  double coef_;
  LbForm form_;
};

// router.lb_coef and router.lb_form, shared by the routers that add this loss.
config::Key lb_coef_key();
config::Key lb_form_key();

}  // namespace ssr::routers
