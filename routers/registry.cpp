#include "routers/registry.hpp"

#include <fmt/format.h>

namespace ssr::routers {

// Each router's spec, defined in its own file. Adding a router: one line here and one in the list.
RouterSpec vanilla_spec();
RouterSpec lb_spec();
RouterSpec zloss_spec();
RouterSpec noisy_spec();
RouterSpec sinkhorn_spec();
RouterSpec ssr_spec();
RouterSpec swin_moe_spec();
RouterSpec sigmoid_spec();
RouterSpec aux_free_spec();
RouterSpec expert_choice_spec();
RouterSpec hash_spec();
RouterSpec osr_spec();
RouterSpec ortho_spec();
RouterSpec entropy_spec();
RouterSpec quantile_spec();
RouterSpec base_spec();
RouterSpec lpr_spec();
RouterSpec emoe_spec();

const std::vector<RouterSpec>& registry() {
  static const std::vector<RouterSpec> specs = {
      vanilla_spec(),  lb_spec(),      zloss_spec(),    noisy_spec(),         sinkhorn_spec(), ssr_spec(),
      swin_moe_spec(), sigmoid_spec(), aux_free_spec(), expert_choice_spec(), hash_spec(),     osr_spec(),
      ortho_spec(),    entropy_spec(), quantile_spec(), base_spec(),          lpr_spec(),      emoe_spec(),
  };
  return specs;
}

const RouterSpec& router_spec(const std::string& name) {
  std::string known;
  for (const auto& s : registry()) {
    if (s.name == name) return s;
    known += (known.empty() ? "" : ", ") + s.name;
  }
  throw config::ConfigError(fmt::format("router.name '{}': expected one of {}", name, known));
}

}  // namespace ssr::routers
