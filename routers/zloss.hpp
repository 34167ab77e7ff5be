#pragma once
#include "routers/lb.hpp"

namespace ssr::routers {

// ST-MoE router z-loss: mean over tokens of logsumexp_j(S_ij)^2. logits: (tokens, experts); ().
torch::Tensor z_loss(const torch::Tensor& logits);

// lb routing plus z_coef * z_loss (paper baseline "SMoE w/ z-loss").
class ZLossRouter : public RouterImpl {
 public:
  ZLossRouter(int64_t top_k, double lb_coef, LbForm form, double z_coef);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 public:
 private:
  int64_t k_;
  double lb_coef_, z_coef_;
  LbForm form_;
};

}  // namespace ssr::routers
