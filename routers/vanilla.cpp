// Vanilla top-k softmax routing (paper section 3.1; reference CustomNaiveGate_Balance_SMoE):
// experts = top-k of S, weights = softmax over the k selected logits only. No auxiliary loss.
// Differentiated: the weights, in S (hence W_g), through the softmax of the selected logits.
// Not differentiated: the choice of experts (a discrete top-k). Identical in training and eval.
#include "routers/vanilla.hpp"

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {

torch::Tensor softmax_at(const torch::Tensor& logits, const torch::Tensor& experts) {
  return logits.gather(1, experts).softmax(-1);  // (tokens, k)
}

Routing top_k_softmax(const torch::Tensor& logits, int64_t k) {
  // The reference takes torch.topk; a stable sort gives the same set with ties to the lower id.
  auto [top, idx] = stable_top_k(logits, k);  // (tokens, k)
  Routing r;
  r.experts = idx;              // (tokens, k)
  r.weights = top.softmax(-1);  // (tokens, k)
  r.aux_loss = torch::zeros({}, logits.options());
  return r;
}

VanillaRouter::VanillaRouter(int64_t top_k) : k_(top_k) {}

Routing VanillaRouter::decide(const RouteInput& in, Mode, torch::Generator&) {
  const auto& logits = in.logits;  // (tokens, experts)
  return top_k_softmax(logits, k_);
}

RouterSpec vanilla_spec() {
  RouterSpec s;
  s.name = "vanilla";
  s.summary = "top-k of the gate logits, weights softmax over the k selected";
  s.source = "paper Sec. 3.1; reference CustomNaiveGate_Balance_SMoE";
  s.make = [](const config::Config&, const RouterShape& sh) -> Router {
    return std::make_shared<VanillaRouter>(sh.top_k);
  };
  s.bench = {{"vanilla", {}}};
  return s;
}

}  // namespace ssr::routers
