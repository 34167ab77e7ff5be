// Vanilla top-k softmax routing (paper section 3.1; reference CustomNaiveGate_Balance_SMoE):
// experts = top-k of S, weights = softmax over the k selected logits only. No auxiliary loss.
// Gradient: flows into S (hence W_g) through the softmax of the selected logits.
#include "routers/vanilla.hpp"

namespace ssr::routers {

Routing top_k_softmax(const torch::Tensor& logits, int64_t k) {
  // sorted=true: descending preference; ties resolve to the lower expert id (stable top-k).
  auto [top, idx] = logits.topk(k, /*dim=*/-1, /*largest=*/true, /*sorted=*/true);  // (tokens, k)
  Routing r;
  r.experts = idx;                  // (tokens, k)
  r.weights = top.softmax(-1);      // (tokens, k)
  r.aux_loss = torch::zeros({}, logits.options());
  return r;
}

VanillaRouter::VanillaRouter(int64_t top_k) : k_(top_k) {}

Routing VanillaRouter::route(const torch::Tensor& logits, const torch::Tensor&, Mode,
                             torch::Generator&) {
  return top_k_softmax(logits, k_);
}

}  // namespace ssr::routers
