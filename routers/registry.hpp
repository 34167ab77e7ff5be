// The router registry: every router's name, source, capabilities, config keys and constructor,
// declared once in the router's own file (its NAME_spec() function) and listed in registry.cpp.
// The schema (router.name's values, the router.* keys and which router uses each), make_router,
// the MoE layer, `ssr bench routers` and the tests read this list instead of router names.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "harness/config/config.hpp"
#include "routers/router.hpp"

namespace ssr::routers {

// What a router does besides mapping gate logits to a routing.
struct Capabilities {
  bool aux_loss = false;    // adds an auxiliary loss to the training loss
  bool draws = false;       // draws random numbers (noise, a coin) from the router generator
  bool hidden = false;      // reads the gate's input (hidden states), so router.global_batch gathers them too
  bool eval_modes = false;  // has inference modes (router.eval_mode; eval.router_modes evaluates each)
  bool stateful =
      false;  // changes after every optimizer step (end_step()): a buffer saved with the weights, or a retraction
  bool own_capacity = false;  // limits the tokens per expert itself, so model.capacity_factor does not apply
  bool token_ids = false;     // reads the input token ids (RouteInput::token_ids): language models only
  bool gate_weight = false;   // reads the gate's rows (RouteInput::gate_weight)
};

// The sizes a router is built for.
struct RouterShape {
  int64_t d_model = 0, n_experts = 0, top_k = 0;
};

struct RouterSpec {
  std::string name;     // the value of router.name
  std::string summary;  // one line: what it does (`ssr config --doc`)
  std::string source;   // paper and equation; docs/routers.md has the details and interpretations
  Capabilities caps;
  // The router.* keys it reads, each with default and documentation. A key several routers read
  // is declared once in a group (sinkhorn_keys(), lb_keys()) that each of them lists.
  std::vector<config::Key> keys;
  std::function<Router(const config::Config&, const RouterShape&)> make;
  // Probability that one training call solves Sinkhorn (expected Sinkhorn forwards); empty: never.
  std::function<double(const config::Config&)> sinkhorn_p;
  // `ssr bench routers` rows: a label and router.* overrides besides name.
  std::vector<std::pair<std::string, std::vector<std::string>>> bench;
};

// Every router, in registration order.
const std::vector<RouterSpec>& registry();
// The spec of router.name `name`; a ConfigError listing the routers when there is none.
const RouterSpec& router_spec(const std::string& name);

}  // namespace ssr::routers
