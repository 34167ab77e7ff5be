#include <fmt/format.h>

#include "routers/registry.hpp"
#include "routers/router.hpp"

namespace ssr::routers {

Router make_router(const config::Config& cfg, int64_t d_model, int64_t n_experts, int64_t top_k) {
  if (top_k > n_experts)
    throw config::ConfigError(fmt::format("model.top_k: {} is more than model.n_experts {}", top_k, n_experts));
  return router_spec(cfg.s("router.name")).make(cfg, RouterShape{d_model, n_experts, top_k});
}

}  // namespace ssr::routers
