// OSR, Orthogonal Sinkhorn Routing (SPECTRA): Sinkhorn routing on cosine scores with a repulsive
// cost between correlated experts.
#pragma once
#include "routers/router.hpp"
#include "routers/sinkhorn.hpp"
#include "routers/sinkhorn_router.hpp"

namespace ssr::routers {

// The OSR score (the negated cost) of hidden states x (tokens, d) against gate rows w (experts, d):
//   sim = cos(x_t, w_e); G = w_hat w_hat^T with its diagonal zeroed;
//   score = sim - repulsion * |sim| (G o G)       -> (tokens, experts)
torch::Tensor osr_score(const torch::Tensor& x, const torch::Tensor& w, double repulsion);

class OsrRouter : public RouterImpl {
 public:
  OsrRouter(int64_t top_k, double repulsion, Cost cost, SinkhornOptions opt);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_;
  double repulsion_;
  Cost cost_;
  SinkhornOptions opt_;
};

}  // namespace ssr::routers
