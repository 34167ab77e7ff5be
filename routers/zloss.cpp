// Router z-loss (ST-MoE, Zoph et al. 2022) on top of the lb loss: aux = lb_coef * lb + z_coef *
// mean_i logsumexp_j(S_ij)^2. Not in any public reference code; written from the ST-MoE paper.
// Differentiated: the weights (as vanilla), the lb importance term and the whole z-loss, in S.
// Not differentiated: the choice of experts and the lb counts.
#include "routers/zloss.hpp"

#include "routers/util.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

torch::Tensor z_loss(const torch::Tensor& logits) {
  return torch::logsumexp(at_least_float(logits), -1).square().mean();  // ()
}

ZLossRouter::ZLossRouter(int64_t top_k, double lb_coef, LbForm form, double z_coef)
    : k_(top_k), lb_coef_(lb_coef), z_coef_(z_coef), form_(form) {}

Routing ZLossRouter::route(const torch::Tensor& logits, const torch::Tensor&, Mode, torch::Generator&) {
  auto r = top_k_softmax(logits, k_);
  r.aux_loss = lb_coef_ * load_balance_loss(logits, r.experts, form_) + z_coef_ * z_loss(logits);
  count(r);
  return r;
}

}  // namespace ssr::routers
