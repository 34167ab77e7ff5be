// Hash routing (Roller et al. 2021): a fixed random map from input token id to experts.
#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

// The k experts of token `id` under `seed`: the first k of a random permutation of the experts
// that depends only on (seed, id), so it is one fixed random table over any vocabulary.
std::vector<int64_t> hashed_experts(uint64_t seed, int64_t id, int64_t n_experts, int64_t k);

class HashRouter : public RouterImpl {
 public:
  HashRouter(int64_t n_experts, int64_t top_k, uint64_t seed);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t n_experts_, k_;
  uint64_t seed_;
};

}  // namespace ssr::routers
