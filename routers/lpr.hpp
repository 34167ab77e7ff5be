// Latent Prototype Routing (LPR): tokens are encoded into a small latent space and go to the
// experts whose learned prototypes are most cosine-similar. Registered as `lpr`.
#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

// The mean of (X_hat X_hat^T - I)^2 over all entries, X_hat the rows of x (rows, dim) scaled to
// unit norm: LPR's "orthogonal" diversity term. Differentiable in x. Returns ().
torch::Tensor lpr_diversity(const torch::Tensor& x);

class LprRouter : public RouterImpl {
 public:
  struct Weights {
    double coef = 0.01;  // on the whole regulariser
    double div = 1.0;    // diversity of the token means and of the prototypes
    double kl = 0.01;    // KL(q(z|x) || N(0, I))
    double align = 0.1;  // prototypes towards the latents routed to them
  };
  // The parameters draw from a generator forked off torch's default one without advancing it, so
  // the layers built after this router start from the same weights as with any other router.
  LprRouter(int64_t d_model, int64_t n_experts, int64_t top_k, int64_t latent, Weights w);

  torch::Tensor ln_w, ln_b;    // (d_model) each: the encoder's LayerNorm
  torch::Tensor enc_w, enc_b;  // (2 latent, d_model), (2 latent): mean and log-variance of z
  torch::Tensor out_w, out_b;  // (d_model, latent), (d_model): the aligner, latent -> d_model
  torch::Tensor keys;          // (experts, latent) the prototypes

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_, latent_;
  Weights w_;
};

}  // namespace ssr::routers
