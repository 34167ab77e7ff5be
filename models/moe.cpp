#include "models/moe.hpp"

#include "harness/config/choice.hpp"

#include <ATen/record_function.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "models/precision.hpp"
#include "routers/registry.hpp"

namespace ssr::models {
namespace {

// Ends the `ssr bench step --trace` phase `scope` holds and starts `name` (free unless profiling).
void phase(std::optional<at::RecordFunction>& scope, std::string_view name) {
  scope.emplace(at::RecordScope::USER_SCOPE);
  if (scope->isActive()) scope->before(name, c10::ArrayRef<const c10::IValue>{});
}

}  // namespace

torch::Tensor dropout(const torch::Tensor& x, double p, bool training, torch::Generator& gen) {
  if (!training || p == 0) return x;
  if (p >= 1) return torch::zeros_like(x);
  std::optional<torch::Generator> g;
  if (gen.defined() && gen.device().type() == x.device().type()) g = gen;
  auto keep = torch::empty_like(x).bernoulli_(1 - p, g);  // same shape as x, 1 = kept
  return x * keep.div_(1 - p);
}

void trunc_normal_(torch::Tensor t, double std, double a, double b) {
  torch::NoGradGuard no_grad;
  // Inverse-CDF sampling between Phi(a / std) and Phi(b / std), as timm's trunc_normal_ does.
  // Unlike timm, the draw stays inside (-1, 1): uniform_ can return -1, whose erfinv is -inf, and
  // a weight of a = -2 at std 0.005 is an outlier, not a sample.
  auto cdf = [](double x) { return 0.5 * (1 + std::erf(x / std::sqrt(2.0))); };
  const double edge = 1 - std::numeric_limits<float>::epsilon();
  t.uniform_(2 * cdf(a / std) - 1, 2 * cdf(b / std) - 1)
      .clamp_(-edge, edge)
      .erfinv_()
      .mul_(std * std::sqrt(2.0))
      .clamp_(a, b);
}

torch::Tensor grouped_linear(const torch::Tensor& x_sorted, const std::vector<int64_t>& group_sizes,
                             const torch::Tensor& weight, const torch::Tensor& bias) {
  std::vector<torch::Tensor> outs;  // one (rows_e, out) block per non-empty expert, in expert order
  int64_t offset = 0;
  for (size_t e = 0; e < group_sizes.size(); ++e) {
    const int64_t n = group_sizes[e];
    if (n == 0) continue;
    outs.push_back(torch::addmm(bias[e], x_sorted.narrow(0, offset, n), weight[e].t()));
    offset += n;
  }
  if (outs.empty()) return x_sorted.new_zeros({0, weight.size(1)});  // (0, out)
  return torch::cat(outs);                                           // (rows, out)
}

torch::Tensor grouped_linear_gemm(const torch::Tensor& x_sorted, const torch::Tensor& offsets,
                                  const torch::Tensor& row_expert, const torch::Tensor& weight,
                                  const torch::Tensor& bias) {
  // _grouped_mm is not on autocast's list: cast its operands as autocast casts a matmul's, so
  // bf16 runs take the grouped kernel (float32 operands fall back to one mm per group on CUDA,
  // after copying the offsets to the host).
  const auto dtype = matmul_dtype(x_sorted);
  auto y = at::_grouped_mm(x_sorted.to(dtype), weight.to(dtype).transpose(1, 2), offsets);  // (rows, out)
  return y + bias.index_select(0, row_expert);                                              // (rows, out)
}

MoEImpl::MoEImpl(const config::Config& cfg) : MoEImpl(cfg, MoEShape{cfg.i("model.d_model"), cfg.i("model.d_inner")}) {}

MoEImpl::MoEImpl(const config::Config& cfg, const MoEShape& shape)
    : n_experts_(cfg.i("model.n_experts")),
      activation_(shape.activation),
      dropout_(cfg.f("model.dropout")),
      grouped_gemm_(cfg.s("model.expert_impl") == "grouped"),
      group_tokens_(cfg.i("router.group_tokens")),
      reads_hidden_(routers::router_spec(cfg.s("router.name")).caps.hidden),
      reads_gate_(routers::router_spec(cfg.s("router.name")).caps.gate_weight),
      reads_tokens_(routers::router_spec(cfg.s("router.name")).caps.token_ids),
      capacity_factor_(routers::router_spec(cfg.s("router.name")).caps.own_capacity ? 0.0
                                                                                    : cfg.f("model.capacity_factor")),
      drop_policy_(config::choice<routers::DropPolicy>(cfg, "model.drop_policy",
                                                       {{"choice", routers::DropPolicy::Choice},
                                                        {"position", routers::DropPolicy::Position},
                                                        {"probs", routers::DropPolicy::Probs}})) {
  const int64_t d = shape.d_model, inner = shape.d_inner, e = n_experts_;
  if (!shape.token_ids && reads_tokens_)
    throw config::ConfigError(
        fmt::format("router.name: {} routes by input token id, which this model ({}) does not "
                    "have; pick another router",
                    cfg.s("router.name"), cfg.s("model.arch")));
  if (grouped_gemm_ && (d % 8 != 0 || inner % 8 != 0))
    throw config::ConfigError(
        fmt::format("model.expert_impl: grouped needs model.d_model and model.d_inner to be multiples of 8 (got {} and "
                    "{}); use loop",
                    d, inner));
  gate = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(d, e).bias(shape.gate_bias)));
  w1 = register_parameter("w1", torch::empty({e, inner, d}));
  b1 = register_parameter("b1", torch::zeros({e, inner}));
  w2 = register_parameter("w2", torch::empty({e, d, inner}));
  b2 = register_parameter("b2", torch::zeros({e, d}));
  torch::NoGradGuard no_grad;
  if (shape.init_std > 0) {
    const double s = shape.init_std;
    trunc_normal_(w1, s);
    trunc_normal_(w2, s);
    b2.requires_grad_(false);
  } else if (cfg.s("model.expert_init") == "reference") {
    // fastmoe's kaiming_uniform_(a=sqrt(5)) on the 3-D (E, out, in) tensor takes fan_in = out*in,
    // so the bound is 1/sqrt(out*in) (1/352 for the medium model), biases stay zero (spec 1.5).
    const double bound = 1.0 / std::sqrt(static_cast<double>(inner * d));
    w1.uniform_(-bound, bound);
    w2.uniform_(-bound, bound);
  } else {
    // What an nn.Linear per expert would get: U(+-1/sqrt(in)) for weight and bias.
    const double bound1 = 1.0 / std::sqrt(static_cast<double>(d));
    const double bound2 = 1.0 / std::sqrt(static_cast<double>(inner));
    w1.uniform_(-bound1, bound1);
    b1.uniform_(-bound1, bound1);
    w2.uniform_(-bound2, bound2);
    b2.uniform_(-bound2, bound2);
  }
  router = routers::make_router(cfg, d, e, cfg.i("model.top_k"));
  register_module("router", router);
  acc_.tokens_per_expert.assign(e, 0);
}

routers::Routing MoEImpl::route(const torch::Tensor& x, torch::Generator& gen, const torch::Tensor& token_ids) {
  return gate_and_route(x, token_ids, gen).second;
}

std::pair<torch::Tensor, routers::Routing> MoEImpl::gate_and_route(const torch::Tensor& x,
                                                                   const torch::Tensor& token_ids,
                                                                   torch::Generator& gen) {
  // Under train.precision=bf16 the gate and its router stay float32, as the reference's fp32
  // gate: bfloat16 logits (8-bit mantissas) tie and reorder the top-k choices.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto xf = x.to(torch::kFloat);  // (tokens, d_model)
  auto logits = gate->forward(xf);      // (tokens, experts)
  routers::RouteInput in;
  in.logits = logits;
  // Routers that do not read the hidden states get a zero-width stand-in of the right row count.
  in.hidden = reads_hidden_ ? xf : xf.new_empty({xf.size(0), 0});  // (tokens, d_model or 0)
  if (reads_tokens_) in.token_ids = token_ids;                     // (tokens)
  if (reads_gate_) in.gate_weight = gate->weight;                  // (experts, d_model)
  auto routing = route_logits(in, gen);
  return {logits, std::move(routing)};
}

void MoEImpl::route_globally(Gather gather, int64_t rank, torch::Generator gen) {
  gather_ = std::move(gather);
  rank_ = rank;
  router_gen_ = std::move(gen);
}

routers::Routing MoEImpl::route_logits(const routers::RouteInput& in, torch::Generator& forward_gen) {
  torch::Generator& gen = router_gen_.defined() ? router_gen_ : forward_gen;
  if (!gather_) return route_rows(in, gen);
  const int64_t n = in.logits.size(0);
  routers::RouteInput all = in;
  all.logits = gather_(in.logits);  // (ranks * tokens, experts)
  // The hidden states only when the router reads them, not a d_model-wide all-gather for all.
  all.hidden = reads_hidden_ ? gather_(in.hidden) : in.hidden.new_empty({all.logits.size(0), 0});
  // A router that reads token ids decides each token alone; the LM task refuses global_batch for it.
  if (in.token_ids.defined()) throw std::logic_error("router.global_batch: this router reads token ids");
  auto r = route_rows(all, gen);
  r.experts = r.experts.narrow(0, rank_ * n, n);                                       // (tokens, k)
  r.weights = r.weights.narrow(0, rank_ * n, n);                                       // (tokens, k)
  if (r.kept.defined()) r.kept = r.kept.narrow(0, rank_ * n, n);                       // (tokens, k)
  if (r.scores.defined()) r.scores = r.scores.narrow(0, rank_ * n, n);                 // (tokens, experts)
  if (r.input_shift.defined()) r.input_shift = r.input_shift.narrow(0, rank_ * n, n);  // (tokens, d_model)
  return r;
}

routers::Routing MoEImpl::route_rows(const routers::RouteInput& in, torch::Generator& gen) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto& logits = in.logits;  // (tokens, experts)
  const auto mode = is_training() ? routers::Mode::Train : routers::Mode::Eval;
  const int64_t n = logits.size(0);
  routers::Routing r;
  // Expert capacity per router call, when the router has none of its own (model.capacity_factor).
  auto call = [&](const routers::RouteInput& part) {
    return routers::route_with_capacity(*router, part, mode, gen, n_experts_, capacity_factor_, drop_policy_);
  };
  if (group_tokens_ <= 0 || n <= group_tokens_) {
    r = call(in);
  } else {
    // Consecutive groups routed by separate calls, as the reference's routers each saw one GPU's
    // micro-batch: Sinkhorn marginals, balance losses and SSR's draw are per group.
    std::vector<torch::Tensor> experts, weights, kept, scores, shifts;
    torch::Tensor aux = torch::zeros({}, logits.options());
    int64_t groups = 0;
    for (int64_t start = 0; start < n; start += group_tokens_, ++groups) {
      const int64_t len = std::min(group_tokens_, n - start);
      routers::RouteInput part = in;
      part.logits = in.logits.narrow(0, start, len);                                    // (len, experts)
      part.hidden = in.hidden.narrow(0, start, len);                                    // (len, d_model or 0)
      if (in.token_ids.defined()) part.token_ids = in.token_ids.narrow(0, start, len);  // (len)
      auto g = call(part);
      experts.push_back(g.experts);                                  // (len, k)
      weights.push_back(g.weights);                                  // (len, k)
      if (g.kept.defined()) kept.push_back(g.kept);                  // (len, k)
      if (g.scores.defined()) scores.push_back(g.scores);            // (len, experts)
      if (g.input_shift.defined()) shifts.push_back(g.input_shift);  // (len, d_model)
      aux = aux + g.aux_loss;
      r.used_sinkhorn = r.used_sinkhorn || g.used_sinkhorn;
      r.sinkhorn_iters = std::max(r.sinkhorn_iters, g.sinkhorn_iters);
      r.sinkhorn_error = std::max(r.sinkhorn_error, g.sinkhorn_error);
      r.sinkhorn_finite = r.sinkhorn_finite && g.sinkhorn_finite;
      r.sinkhorn_converged = r.sinkhorn_converged && g.sinkhorn_converged;
      r.sinkhorn_fallback = r.sinkhorn_fallback || g.sinkhorn_fallback;
    }
    for (const auto* part : {&kept, &scores, &shifts})
      if (!part->empty() && part->size() != experts.size())
        throw std::logic_error("router: some calls returned kept slots, scores or input shifts and some did not");
    // Expert Choice gives each group as many slots as its busiest token needs: pad to the widest.
    int64_t width = 0;
    for (const auto& e : experts) width = std::max(width, e.size(1));
    for (size_t i = 0; i < experts.size(); ++i) {
      const int64_t pad = width - experts[i].size(1);
      if (pad == 0) continue;
      if (kept.empty()) throw std::logic_error("router: calls of different widths without kept slots");
      experts[i] = torch::nn::functional::pad(experts[i], torch::nn::functional::PadFuncOptions({0, pad}));
      weights[i] = torch::nn::functional::pad(weights[i], torch::nn::functional::PadFuncOptions({0, pad}));
      kept[i] = torch::nn::functional::pad(kept[i], torch::nn::functional::PadFuncOptions({0, pad}));
    }
    r.experts = torch::cat(experts);                          // (tokens, k)
    r.weights = torch::cat(weights);                          // (tokens, k)
    if (!kept.empty()) r.kept = torch::cat(kept);             // (tokens, k)
    if (!scores.empty()) r.scores = torch::cat(scores);       // (tokens, experts)
    if (!shifts.empty()) r.input_shift = torch::cat(shifts);  // (tokens, d_model)
    r.aux_loss = aux / static_cast<double>(groups);           // like averaging over data-parallel ranks
  }
  if (time_router_) {
    if (logits.is_cuda()) torch::cuda::synchronize();
    router_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return r;
}

torch::Tensor MoEImpl::activate(const torch::Tensor& h) const {
  return activation_ == Activation::Gelu ? torch::gelu(h) : h.relu();
}

double MoEImpl::take_router_seconds() {
  const double s = router_seconds_;
  router_seconds_ = 0;
  return s;
}

torch::Tensor MoEImpl::experts_sorted(const torch::Tensor& x_sorted, const std::vector<int64_t>& group_sizes,
                                      torch::Generator& gen) {
  auto h = activate(grouped_linear(x_sorted, group_sizes, w1, b1));  // (rows, d_inner)
  h = dropout(h, dropout_, is_training(), gen);
  return grouped_linear(h, group_sizes, w2, b2);  // (rows, d_model)
}

torch::Tensor MoEImpl::forward(const torch::Tensor& x, torch::Tensor& aux, torch::Generator& gen,
                               const torch::Tensor& token_ids) {
  const int64_t n = x.size(0), d = x.size(1);
  std::optional<at::RecordFunction> scope;  // the phases of `ssr bench step --trace`, one at a time
  phase(scope, "ssr::router");
  auto [logits, routing] = gate_and_route(x, token_ids, gen);  // (tokens, experts), the router's decision
  phase(scope, "ssr::experts");
  aux = aux + routing.aux_loss;
  const int64_t k = routing.experts.size(1);

  // Slot t*k + j is token t's j-th choice. Sorting slots by expert makes each expert's rows
  // contiguous; the stable sort keeps token order inside an expert (deterministic layout).
  // Slots that are not kept sort last, behind a sentinel expert id, and are not computed.
  auto slot_expert = routing.experts.reshape({-1});  // (tokens*k)
  if (routing.kept.defined()) slot_expert = slot_expert.masked_fill(~routing.kept.reshape({-1}), n_experts_);
  auto order = torch::argsort(slot_expert, /*stable=*/true);  // (tokens*k) sorted -> slot
  auto inverse =
      torch::empty_like(order).scatter_(0, order, torch::arange(n * k, order.options()));  // (tokens*k) slot -> sorted
  // scatter_add rather than bincount, which reads its input's maximum on the host (a sync on CUDA).
  auto counts_all = torch::zeros({n_experts_ + 1}, slot_expert.options())
                        .scatter_add_(0, slot_expert, torch::ones_like(slot_expert));  // (experts + 1)
  auto counts = counts_all.narrow(0, 0, n_experts_);                                   // (experts)
  // One host sync, only for routings that drop: how many sorted rows the experts compute.
  const int64_t rows = routing.kept.defined() ? n * k - counts_all[n_experts_].item<int64_t>() : n * k;

  // Gathering through a permutation of the expanded slots (rather than index_select with repeated
  // token ids) keeps the backward free of colliding atomic adds, so CUDA runs stay bitwise
  // reproducible.
  const auto x_in =
      routing.input_shift.defined() ? x + routing.input_shift.to(x.scalar_type()) : x;  // (tokens, d_model)
  auto x_slots = x_in.unsqueeze(1).expand({n, k, d}).reshape({n * k, d});               // (tokens*k, d_model)
  auto kept_order = rows < n * k ? order.narrow(0, 0, rows) : order;                    // (rows) sorted -> slot
  auto x_sorted = x_slots.index_select(0, kept_order);                                  // (rows, d_model)
  torch::Tensor y_sorted;                                                               // (rows, d_model)
  if (grouped_gemm_) {
    auto offsets = counts.cumsum(0).to(torch::kInt32);          // (experts) group ends, on the device
    auto row_expert = slot_expert.index_select(0, kept_order);  // (rows)
    auto h = activate(grouped_linear_gemm(x_sorted, offsets, row_expert, w1, b1));  // (tokens*k, d_inner)
    h = dropout(h, dropout_, is_training(), gen);
    y_sorted = grouped_linear_gemm(h, offsets, row_expert, w2, b2);
  } else {
    counts = counts.cpu();  // one host sync: the loop needs the group sizes
    std::vector<int64_t> sizes(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + n_experts_);
    y_sorted = experts_sorted(x_sorted, sizes, gen);
  }
  if (rows < n * k) y_sorted = torch::cat({y_sorted, y_sorted.new_zeros({n * k - rows, d})});  // (tokens*k, d_model)
  auto y = y_sorted.index_select(0, inverse).view({n, k, d});                                  // (tokens, k, d_model)
  auto out = (routing.weights.unsqueeze(-1).to(y.scalar_type()) * y).sum(1);                   // (tokens, d_model)

  if (collect_) {
    phase(scope, "ssr::routing_stats");
    torch::NoGradGuard no_grad;
    auto s = routers::routing_stats(routing.scores.defined() ? routing.scores : logits, routing, n_experts_);
    for (int64_t e = 0; e < n_experts_; ++e) acc_.tokens_per_expert[e] += s.tokens_per_expert[e];
    acc_.dropped_slots += s.drop_rate * static_cast<double>(n * k);
    acc_.unrouted_tokens += s.unrouted * static_cast<double>(n);
    acc_.slots += n * k;
    acc_.entropy_sum += s.entropy * static_cast<double>(n);
    acc_.tokens += n;
    acc_.output_norm_sum += out.norm(2, -1).sum().item<double>();
    acc_.norm_tokens += n;
    if (token_ids.defined()) acc_.token_expert.add(token_ids, routing);
  }
  return out;
}

torch::Tensor MoEImpl::dense_reference(const torch::Tensor& x_layer, const routers::Routing& routing) {
  const auto x = routing.input_shift.defined() ? x_layer + routing.input_shift : x_layer;  // (tokens, d_model)
  auto h = torch::matmul(x.unsqueeze(0), w1.transpose(1, 2)) + b1.unsqueeze(1);            // (experts, tokens, d_inner)
  auto y = torch::matmul(activate(h), w2.transpose(1, 2)) + b2.unsqueeze(1);               // (experts, tokens, d_model)
  auto dense_w = torch::zeros({x.size(0), n_experts_}, routing.weights.options())
                     .scatter_add(1, routing.experts, routing.weights);  // (tokens, experts)
  return torch::einsum("te,etd->td", {dense_w.to(y.scalar_type()), y});  // (tokens, d_model)
}

routers::RouterStats MoEImpl::take_stats() {
  routers::RouterStats s;
  routers::set_load(s, acc_.tokens_per_expert);
  if (acc_.tokens > 0) s.entropy = acc_.entropy_sum / static_cast<double>(acc_.tokens);
  if (acc_.slots > 0) s.drop_rate = acc_.dropped_slots / static_cast<double>(acc_.slots);
  if (acc_.tokens > 0) s.unrouted = acc_.unrouted_tokens / static_cast<double>(acc_.tokens);
  if (!acc_.token_expert.empty()) s.token_mi = acc_.token_expert.mutual_information();
  // Sinkhorn use is rare (SSR's p ~ 1e-3), so it is counted over every call since the last
  // logging step (the router's tally), not only over the calls that collected statistics.
  routers::set_sinkhorn(s, router->sinkhorn_tally());
  router->reset_sinkhorn_tally();
  drop_stats();
  return s;
}

void MoEImpl::drop_stats() {
  const double norm_sum = acc_.output_norm_sum;
  const int64_t norm_tokens = acc_.norm_tokens;
  acc_ = MoEStatsAccumulator{};
  acc_.tokens_per_expert.assign(n_experts_, 0);
  acc_.output_norm_sum = norm_sum;
  acc_.norm_tokens = norm_tokens;
}

double MoEImpl::expert_similarity() const {
  torch::NoGradGuard no_grad;
  const int64_t e = n_experts_;
  if (e < 2) return 0;
  auto flat = torch::cat({w1.reshape({e, -1}), b1.reshape({e, -1}), w2.reshape({e, -1}), b2.reshape({e, -1})}, 1)
                  .to(torch::kDouble);                                    // (experts, parameters)
  auto unit = flat / flat.norm(2, 1, /*keepdim=*/true).clamp_min(1e-30);  // (experts, parameters)
  auto cos = unit.matmul(unit.t());                                       // (experts, experts)
  return ((cos.sum() - cos.diagonal().sum()) / static_cast<double>(e * (e - 1))).item<double>();
}

double MoEImpl::take_output_norm() {
  const double mean = acc_.norm_tokens > 0 ? acc_.output_norm_sum / static_cast<double>(acc_.norm_tokens) : 0.0;
  acc_.output_norm_sum = 0;
  acc_.norm_tokens = 0;
  return mean;
}

}  // namespace ssr::models
