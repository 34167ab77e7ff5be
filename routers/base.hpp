// BASE layers (Lewis et al. 2021): in training, a balanced assignment of the call's tokens to
// experts that maximises their summed gate scores, solved by an auction; greedy at evaluation.
#pragma once
#include <vector>

#include "routers/router.hpp"

namespace ssr::routers {

// Each token's expert in an assignment that maximises sum_t scores[t, a(t)] with at most
// `capacity` tokens per expert (tokens <= capacity * experts), to within tokens * eps of the
// optimum: Bertsekas' forward auction with each expert's capacity as that many similar objects.
// Experts whose score is -inf are never given to that token. scores: (tokens, experts), CPU.
std::vector<int64_t> balanced_assignment(const torch::Tensor& scores, int64_t capacity, double eps);

class BaseRouter : public RouterImpl {
 public:
  explicit BaseRouter(int64_t top_k);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_;
};

}  // namespace ssr::routers
