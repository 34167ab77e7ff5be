// Expert Choice routing (Zhou et al. 2022, arXiv 2202.09368): each expert takes the tokens it
// scores highest, so every expert is full and a token gets any number of experts, possibly none.
#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

// Tokens each expert takes from a call of `tokens`: round(factor * tokens * k / experts), at least 1.
int64_t expert_choice_capacity(int64_t tokens, int64_t experts, int64_t k, double factor);

class ExpertChoiceRouter : public RouterImpl {
 public:
  ExpertChoiceRouter(int64_t top_k, double factor);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_;
  double factor_;
};

}  // namespace ssr::routers
