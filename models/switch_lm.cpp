#include "models/switch_lm.hpp"

#include "models/precision.hpp"
#include "routers/registry.hpp"

#include <ATen/record_function.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace ssr::models {

namespace {

// a @ b of bfloat16 operands with a float32 result: cuBLAS writes its float32 accumulator
// (mm.dtype), so logits and gradients are never rounded to bfloat16 in between; where that
// kernel does not exist (CPU) the float32 product of the same bfloat16 values, outside autocast,
// which would cast the float32 operands back to bfloat16. addmm_f32_: `acc` += a @ b in place in
// float32 (a weight gradient summed over chunks).
torch::Tensor mm_f32(const torch::Tensor& a, const torch::Tensor& b) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return a.is_cuda() ? at::mm(a, b, at::kFloat) : torch::mm(a.to(torch::kFloat), b.to(torch::kFloat));
}
void addmm_f32_(torch::Tensor& acc, const torch::Tensor& a, const torch::Tensor& b) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  if (a.is_cuda())
    at::addmm_out(acc, acc, a, b, at::kFloat);
  else
    acc.addmm_(a.to(torch::kFloat), b.to(torch::kFloat));
}

// Output layer + cross-entropy, chunk by chunk. Autograd through each chunk would keep every
// chunk's (rows, vocab) softmax alive until backward, i.e. the full logits again; instead the
// gradient of the summed loss is accumulated in the forward pass (the same three matmuls as the
// unchunked version) and backward only scales it by the incoming gradient.
struct ChunkedNLL : torch::autograd::Function<ChunkedNLL> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& h,
                               const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& targets,
                               int64_t chunk, bool need_grad, int64_t multiple) {
    const int64_t rows = h.size(0), vocab = weight.size(0);
    // Padded vocabulary rows are zero weights with a -inf bias: their logits are -inf, so they
    // add nothing to the logsumexp and get zero gradient, and the GEMM sees a friendly width.
    const int64_t pad = multiple > 1 ? (multiple - vocab % multiple) % multiple : 0;
    torch::Tensor w = weight, b = bias;  // (vocab + pad, d), (vocab + pad)
    if (pad > 0) {
      w = torch::cat({weight, weight.new_zeros({pad, weight.size(1)})});
      b = torch::cat({bias, torch::full({pad}, -INFINITY, bias.options())});
    }
    // Under autocast the three GEMMs take operands in its dtype (they are ~86 % of a step's FLOPs
    // at 267,735 words) and give float32 results; logsumexp, softmax and the accumulated
    // gradients stay float32.
    const auto mm_dtype = matmul_dtype(h);
    const bool cast = mm_dtype != h.scalar_type();
    auto wm = cast ? w.to(mm_dtype) : w;         // (vocab + pad, d)
    auto total = torch::zeros({}, h.options());  // ()
    torch::Tensor grad_h, grad_w, grad_b;
    if (need_grad) {
      grad_h = torch::empty_like(h);  // (rows, d)
      grad_w = torch::zeros_like(w);  // (vocab + pad, d)
      grad_b = torch::zeros_like(b);  // (vocab + pad)
    }
    for (int64_t start = 0; start < rows; start += chunk) {
      const int64_t n = std::min(chunk, rows - start);
      auto hc = h.narrow(0, start, n);                     // (n, d)
      auto hm = cast ? hc.to(mm_dtype) : hc;               // (n, d)
      auto tc = targets.narrow(0, start, n).unsqueeze(1);  // (n, 1)
      auto logits = cast ? mm_f32(hm, wm.t()).add_(b)      // (n, vocab + pad) float32
                         : torch::addmm(b, hc, w.t());
      auto lse = logits.logsumexp(-1, /*keepdim=*/true);  // (n, 1)
      total += (lse - logits.gather(1, tc)).sum();
      if (!need_grad) continue;
      // d(sum nll)/d logits = softmax - onehot(target), built in place in the logits buffer.
      auto g = logits.sub_(lse).exp_();  // (n, vocab + pad)
      g.scatter_add_(1, tc, torch::full({n, 1}, -1.0, g.options()));
      grad_b += g.sum(0);                         // (vocab + pad)
      auto grad_hc = grad_h.narrow(0, start, n);  // (n, d)
      if (cast) {
        auto gm = g.to(mm_dtype);  // (n, vocab + pad)
        grad_hc.copy_(mm_f32(gm, wm));
        addmm_f32_(grad_w, gm.t(), hm);  // (vocab + pad, d)
      } else {
        torch::mm_out(grad_hc, g, w);
        grad_w.addmm_(g.t(), hc);  // (vocab + pad, d)
      }
    }
    if (need_grad) {
      ctx->saved_data["grad_h"] = grad_h;
      ctx->saved_data["grad_w"] = grad_w.narrow(0, 0, vocab);
      ctx->saved_data["grad_b"] = grad_b.narrow(0, 0, vocab);
    }
    return total;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto& g = grad_out[0];  // ()
    return {ctx->saved_data["grad_h"].toTensor() * g,
            ctx->saved_data["grad_w"].toTensor() * g,
            ctx->saved_data["grad_b"].toTensor() * g,
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor chunked_nll_sum(const torch::Tensor& h, const torch::Tensor& weight, const torch::Tensor& bias,
                              const torch::Tensor& targets, int64_t chunk, int64_t vocab_multiple) {
  const bool need_grad =
      torch::GradMode::is_enabled() && (h.requires_grad() || weight.requires_grad() || bias.requires_grad());
  // Under autocast h may arrive in bfloat16; the loss works in the parameters' dtype.
  auto hw = h.scalar_type() == weight.scalar_type() ? h : h.to(weight.scalar_type());  // (rows, d)
  return ChunkedNLL::apply(hw, weight, bias, targets, chunk, need_grad, vocab_multiple);
}

torch::Tensor unskew(const torch::Tensor& x, int64_t span) {
  const int64_t m = x.size(-2), total = x.size(-1);  // total = L + M
  auto lead = x.sizes().slice(0, x.dim() - 2).vec();
  auto flat_shape = lead;
  flat_shape.push_back(m * total);
  // Padding each flattened row block by M makes row i start i positions further along, so the
  // view's column j of row i is the original column i + j.
  auto padded = torch::constant_pad_nd(x.reshape(flat_shape), {0, m});  // (..., M*(L+M+1))
  auto shape = lead;
  shape.push_back(m);
  shape.push_back(total + 1);
  return padded.view(shape).narrow(-1, 0, span);  // (..., M, L)
}

torch::Tensor skew(const torch::Tensor& p, double fill) {
  const int64_t m = p.size(-2), span = p.size(-1), total = span + m;
  auto lead = p.sizes().slice(0, p.dim() - 2).vec();
  auto padded = torch::constant_pad_nd(p, {0, m + 1}, fill);  // (..., M, L+M+1)
  auto flat_shape = lead;
  flat_shape.push_back(m * (total + 1));
  auto shape = lead;
  shape.push_back(m);
  shape.push_back(total);
  return padded.reshape(flat_shape).narrow(-1, 0, m * total).view(shape);  // (..., M, L+M)
}

SeqAttentionImpl::SeqAttentionImpl(int64_t d_model, int64_t n_heads, int64_t span, double dropout, bool sdpa,
                                   int64_t head_multiple)
    : n_heads_(n_heads),
      head_dim_(d_model / n_heads),
      span_(span),
      dropout_(dropout),
      sdpa_(sdpa),
      head_pad_(head_multiple > 1 ? (head_multiple - head_dim_ % head_multiple) % head_multiple : 0) {
  auto lin = [&](const char* name) {
    return register_module(name, torch::nn::Linear(torch::nn::LinearOptions(d_model, d_model).bias(false)));
  };
  q = lin("q");
  k = lin("k");
  v = lin("v");
  o = lin("o");
}

torch::Tensor SeqAttentionImpl::forward(const torch::Tensor& h, const torch::Tensor& cache, const torch::Tensor& key_pe,
                                        torch::Generator& gen) {
  RECORD_USER_SCOPE("ssr::attention");  // a phase of `ssr bench step --trace`
  const int64_t b = h.size(0), m = h.size(1), d = h.size(2), total = span_ + m;
  auto heads = [&](const torch::Tensor& x, int64_t len) {  // (streams, len, d) -> (streams, H, len, dh)
    return x.view({b, len, n_heads_, head_dim_}).transpose(1, 2);
  };
  auto full = torch::cat({cache, h}, 1);  // (streams, L+M, d_model)
  // Scaling the queries instead of the (M, L) scores saves one score-sized tensor per layer.
  auto qh = heads(q->forward(h), m) / std::sqrt(static_cast<double>(head_dim_));  // (streams, H, M, dh)
  auto kh = heads(k->forward(full), total);                                       // (streams, H, L+M, dh)
  auto vh = heads(v->forward(full), total);                                       // (streams, H, L+M, dh)

  if (sdpa_) {
    // Outside the band the mask is -inf, so the softmax over the L+M keys is the one over the L.
    auto mask = skew(torch::matmul(qh, key_pe), -std::numeric_limits<double>::infinity());  // (streams, H, M, L+M)
    // Zero columns add nothing to q.k and give zero output columns, dropped after the kernel; the
    // scale is explicit (the queries carry it), so padding does not change it.
    auto pad = [&](const torch::Tensor& t) { return head_pad_ > 0 ? torch::constant_pad_nd(t, {0, head_pad_}) : t; };
    auto ctx = at::scaled_dot_product_attention(pad(qh), pad(kh), pad(vh), mask, is_training() ? dropout_ : 0.0, false,
                                                1.0);           // (streams, H, M, dh + pad)
    if (head_pad_ > 0) ctx = ctx.narrow(-1, 0, head_dim_);      // (streams, H, M, dh)
    return o->forward(ctx.transpose(1, 2).reshape({b, m, d}));  // (streams, M, d_model)
  }
  auto content = unskew(torch::matmul(qh, kh.transpose(-1, -2)), span_);  // (streams, H, M, L)
  auto probs = (content + torch::matmul(qh, key_pe)).softmax(-1);         // (streams, H, M, L)
  probs = dropout(probs, dropout_, is_training(), gen);
  auto ctx = torch::matmul(skew(probs), vh);                  // (streams, H, M, dh)
  return o->forward(ctx.transpose(1, 2).reshape({b, m, d}));  // (streams, M, d_model)
}

LayerImpl::LayerImpl(const config::Config& cfg)
    : momentum_block_(cfg.s("model.block") == "momentum"),
      mu_(cfg.f("model.mu")),
      gamma_(cfg.f("model.gamma")),
      dropout_(cfg.f("model.dropout")) {
  const int64_t d = cfg.i("model.d_model");
  attn = register_module("attn", SeqAttention(d, cfg.i("model.n_heads"), cfg.i("model.attn_span"), dropout_,
                                              cfg.s("model.attn_impl") == "sdpa", cfg.i("model.attn_head_multiple")));
  auto ln = [&](const char* name) {
    return register_module(name, torch::nn::LayerNorm(torch::nn::LayerNormOptions({d}).eps(1e-5)));
  };
  norm1 = ln("norm1");
  norm2 = ln("norm2");
  if (cfg.b("model.unused_norm")) norm3 = ln("norm3");
  moe = register_module("moe", MoE(cfg));
  moe_norm = ln("moe_norm");
}

torch::Tensor LayerImpl::forward(const torch::Tensor& h_in, const torch::Tensor& cache, const torch::Tensor& key_pe,
                                 torch::Tensor& momentum, torch::Tensor& aux, torch::Generator& gen,
                                 const torch::Tensor& tokens) {
  auto h = norm1->forward(h_in + attn->forward(h_in, cache, key_pe, gen));  // (streams, M, d_model)
  auto smoe = dropout(moe->forward(h.reshape({-1, h.size(2)}), aux, gen, tokens.reshape(-1)).view_as(h), dropout_,
                      is_training(), gen);  // (streams, M, d_model)
  torch::Tensor s;                          // (streams, M, d_model)
  if (momentum_block_) {
    momentum = mu_ * momentum + gamma_ * smoe;
    s = moe_norm->forward(h - momentum);
  } else {
    s = moe_norm->forward(h + smoe);
  }
  return norm2->forward(h + s);
}

SwitchLMImpl::SwitchLMImpl(const config::Config& cfg, int64_t vocab_size)
    : d_model_(cfg.i("model.d_model")),
      span_(cfg.i("model.attn_span")),
      loss_chunk_(cfg.i("model.loss_chunk")),
      vocab_multiple_(cfg.i("model.vocab_multiple")),
      momentum_block_(cfg.s("model.block") == "momentum") {
  const int64_t heads = cfg.i("model.n_heads");
  if (d_model_ % heads != 0)
    throw config::ConfigError(
        fmt::format("model.n_heads: {} does not divide model.d_model {}; pick a divisor", heads, d_model_));
  if (vocab_size < 1) throw config::ConfigError("model: the vocabulary is empty; check data.* files");
  embed = register_module("embed", torch::nn::Embedding(vocab_size, d_model_));  // default init N(0, 1)
  key_pe = register_parameter("key_pe", torch::randn({1, d_model_ / heads, span_}));
  auto list = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < cfg.i("model.n_layers"); ++l) {
    layers.push_back(Layer(cfg));
    list->push_back(layers.back());
    moe_layers.push_back(layers.back()->moe);
  }
  out = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(d_model_, vocab_size).bias(true)));
}

std::vector<torch::Tensor> SwitchLMImpl::no_decay_parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& p : parameters())
    if (p.dim() < 2) out.push_back(p);
  return out;
}

LMState SwitchLMImpl::initial_state(int64_t streams) const {
  LMState s;
  for (size_t l = 0; l < layers.size(); ++l)
    s.cache.push_back(torch::zeros({streams, span_, d_model_}, key_pe.options().requires_grad(false)));
  return s;
}

torch::Tensor SwitchLMImpl::hidden(const torch::Tensor& tokens, LMState& state, torch::Tensor& aux,
                                   torch::Generator& gen) {
  if (state.cache.size() != layers.size())
    throw std::invalid_argument(fmt::format("SwitchLM: state has {} caches for {} layers; use initial_state()",
                                            state.cache.size(), layers.size()));
  auto h = embed->forward(tokens);  // (streams, M, d_model)
  torch::Tensor momentum;           // (streams, M, d_model), zero at every forward (spec 1.7)
  if (momentum_block_) momentum = torch::zeros_like(h);
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& cache = state.cache[l];                                                // (streams, L, d_model)
    auto next = torch::cat({cache, h.detach()}, 1).narrow(1, h.size(1), span_);  // (streams, L, d_model)
    h = layers[l]->forward(h, cache, key_pe, momentum, aux, gen, tokens);
    cache = next;
  }
  return h;
}

LMOutput SwitchLMImpl::forward(const torch::Tensor& tokens, const torch::Tensor& targets, LMState& state,
                               torch::Generator& gen) {
  auto aux = torch::zeros({}, key_pe.options().requires_grad(false));  // ()
  auto h = hidden(tokens, state, aux, gen);                            // (streams, M, d_model)
  auto flat = h.reshape({-1, d_model_});                               // (streams*M, d_model)
  RECORD_USER_SCOPE("ssr::output_layer");  // its gradient too: ChunkedNLL computes it in the forward
  auto nll = chunked_nll_sum(flat, out->weight, out->bias, targets.reshape({-1}), loss_chunk_, vocab_multiple_) /
             static_cast<double>(flat.size(0));
  return LMOutput{nll, aux};
}

std::vector<ParamCount> SwitchLMImpl::parameter_count() const {
  std::vector<ParamCount> rows = {{"embedding"}, {"output"},  {"attention"},   {"experts"},
                                  {"gates"},     {"routers"}, {"layer_norms"}, {"key_pe"}};
  auto add = [&](const std::string& component, int64_t n) {
    for (auto& r : rows)
      if (r.component == component) r.count += n;
  };
  int64_t total = 0;
  for (const auto& p : named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    const int64_t n = p.value().numel();
    total += n;
    auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
    if (name.rfind("embed.", 0) == 0)
      add("embedding", n);
    else if (name.rfind("out.", 0) == 0)
      add("output", n);
    else if (name == "key_pe")
      add("key_pe", n);
    else if (has(".attn."))
      add("attention", n);
    else if (has(".moe.gate."))
      add("gates", n);
    else if (has(".moe.router."))
      add("routers", n);
    else if (has(".moe."))
      add("experts", n);
    else if (has("norm"))
      add("layer_norms", n);
    else
      throw std::logic_error("parameter_count: unclassified parameter " + name);
  }
  rows.push_back({"total", total});
  return rows;
}

std::vector<ParamCount> parameter_count(const config::Config& cfg, int64_t vocab_size) {
  return SwitchLM(cfg, vocab_size)->parameter_count();
}

std::vector<std::pair<std::string, double>> step_flops(const config::Config& cfg, int64_t vocab_size) {
  const auto f = [&](const char* key) { return static_cast<double>(cfg.i(key)); };
  const double streams = f("train.batch_size"), m = f("train.seq_len"), tokens = streams * m;
  const double d = f("model.d_model"), span = f("model.attn_span"), layers = f("model.n_layers");
  const double v = static_cast<double>(vocab_size);
  // Output layer: ChunkedNLL's three GEMMs (logits, grad h, grad W), all in the forward.
  const double output = 3 * 2 * tokens * d * v;
  // Attention per layer, forward: q and o projections of the segment, k and v of cache + segment,
  // content scores over span + M keys (the reference computes the whole band, then unskews), the
  // position term over span, probabilities times values over span + M.
  const double attention_fwd = 2 * 2 * tokens * d * d + 2 * 2 * streams * (span + m) * d * d +
                               2 * tokens * (span + m) * d + 2 * tokens * span * d + 2 * tokens * (span + m) * d;
  const double attention = 3 * layers * attention_fwd;
  // Experts: two matmuls per active expert per token; gates: one (tokens, d) x (d, experts).
  const double experts = 3 * layers * f("model.top_k") * 2 * 2 * tokens * d * f("model.d_inner");
  const double gates = 3 * layers * 2 * tokens * d * f("model.n_experts");
  return {{"output_layer", output},
          {"attention", attention},
          {"experts", experts},
          {"gates", gates},
          {"total", output + attention + experts + gates}};
}

std::optional<SinkhornExpectation> sinkhorn_expectation(const config::Config& cfg) {
  const auto& solves = routers::router_spec(cfg.s("router.name")).sinkhorn_p;
  if (cfg.s("model.arch") != "switch_lm" || !solves) return std::nullopt;
  const int64_t world = cfg.i("run.nproc"), split = cfg.i("train.batch_split");
  const int64_t rows = cfg.i("train.batch_size") / world;  // this rank's streams per step
  const bool global = world > 1 && cfg.b("router.global_batch");
  const int64_t tokens =
      (global ? cfg.i("train.batch_size") : rows) / split * cfg.i("train.seq_len");  // per router call site
  const int64_t group = cfg.i("router.group_tokens");
  const int64_t groups = group > 0 ? (tokens + group - 1) / group : 1;
  SinkhornExpectation e;
  e.router_calls = cfg.i("model.n_layers") * cfg.i("train.steps") * split * groups;
  e.p = solves(cfg);
  return e;
}

}  // namespace ssr::models
