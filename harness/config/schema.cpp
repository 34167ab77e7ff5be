// The one place where every configuration key is declared: type, default, range, documentation.
// Defaults are the reference setup of the paper's WikiText-103 "medium" runs
// (../shared/spec/reference-setup.md); presets in experiments/ scale them down.
#include <algorithm>
#include <map>

#include "harness/config/config.hpp"
#include "harness/config/declare.hpp"
#include "routers/registry.hpp"

namespace ssr::config {
namespace {

using namespace keys;

std::vector<std::string> router_names() {
  std::vector<std::string> names;
  for (const auto& r : routers::registry()) names.push_back(r.name);
  return names;
}

std::vector<Key> build() {
  return {
      // ---- run.*: identity and bookkeeping of one run
      I("run.seed", 1, 0, 2147483647, "seed of every RNG (init, data offsets, routers): same seed, same losses"),
      C("run.device", "cpu", {"cpu", "cuda"}, "device the run computes on"),
      S("run.name", "", "free label shown by `ssr runs`", false),
      S("run.db", "results/runs.db", "SQLite run store (also --db)", false),
      S("run.out_dir", "",
        "folder for checkpoints: OUT_DIR/STORE_ID/RUN_ID (STORE_ID: the run store's random id, as run ids are per "
        "store); '' = checkpoints/ beside the run store",
        false),
      C("run.keep_checkpoints", "all", {"all", "best", "last", "none"},
        "checkpoints left on disk once the run finished (written while it trains, for --resume and the best one's "
        "evaluation): all = last.pt and best.pt",
        false),
      timed(I("run.threads", 0, 0, 1024, "intra-op CPU threads (0 = LibTorch default)")),
      I("run.log_every", 10, 1, 1000000, "steps between metric rows in the store and progress lines", false),
      F("run.heartbeat_s", 10, 0.1, 3600, "seconds between heartbeats of a running run", false),
      // Ranks change results (each rank's routers see batch_size / nproc streams, each rank draws
      // its own dropout and router noise), so nproc > 1 is hashed; 1 is not, and old hashes hold.
      unhashed_at_default(I("run.nproc", 1, 1, 65536,
                            "data-parallel ranks (also --nproc; set from WORLD_SIZE or SLURM_NTASKS when srun/torchrun "
                            "start the ranks); each reads train.batch_size / nproc contiguous streams")),
      timed(C("run.backend", "auto", {"auto", "gloo", "nccl"},
              "process-group backend with nproc > 1: auto = nccl for run.device=cuda in CUDA builds, else gloo")),
      F("run.dist_timeout_s", 300, 1, 86400,
        "seconds a rank waits for the others (rendezvous, each collective) before the run fails; a rank that dies "
        "fails it at once",
        false),

      // ---- data.*: corpus and splits
      C("data.format", "word", {"word", "byte", "char", "idx", "imagefolder"},
        "word: whitespace tokens + <eos> per line (WikiText); byte: one token per byte (enwik8); char: one token per "
        "character, sorted vocabulary (nanoGPT's shakespeare_char); idx: IDX image/label files (Fashion-MNIST; split = "
        "file prefix, e.g. t10k); imagefolder: <split>/<class>/* JPEGs (ImageNet)"),
      S("data.dir", "../shared/data/wikitext-103",
        "folder holding the split files (relative paths are from the working directory)"),
      S("data.train", "train.txt", "training split file in data.dir"),
      S("data.valid", "valid.txt", "validation split file in data.dir ('' with data.holdout > 0)"),
      S("data.test", "test.txt",
        "test split file in data.dir ('' with data.holdout > 0: carved after the validation split; none: no test "
        "split)"),
      F("data.holdout", 0, 0, 0.5,
        "if > 0 and data.valid is '': validation = this final fraction of the training file (lines; bytes for format "
        "byte; characters for char, nanoGPT's int(n x (1 - holdout)) split); if data.test is also '' the test split is "
        "carved the same way after it (enwik8: 0.05 gives 90M/5M/5M)"),
      S("data.cache_dir", "",
        "folder for encoded-corpus caches, keyed by the source files' paths, sizes and mtimes; '' = cache/ beside "
        "the run store (run.db)",
        false),
      B("data.eval_every_token", false,
        "evaluation also scores each stream's tail after the last full segment (reference: false, the tail is "
        "skipped)"),
      FL("data.mean", {0.485, 0.456, 0.406}, 0, 1,
         "images: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's)"),
      FL("data.std", {0.229, 0.224, 0.225}, 1e-6, kInf, "images: per-channel std divided by after the mean"),
      B("data.hflip", true, "images: random horizontal flip of training images (p 0.5)"),
      unhashed_at_default(
          I("data.randaug_n", 0, 0, 16,
            "images: RandAugment ops per training image (timm's increasing set; 0 = off; Swin recipe 2)")),
      unhashed_at_default(F("data.randaug_m", 9, 0, 10, "images: RandAugment magnitude (Swin recipe rand-m9)")),
      unhashed_at_default(F("data.randaug_mstd", 0.5, 0, 10,
                            "images: RandAugment magnitude noise std per op (Swin recipe mstd0.5; 0 = fixed)")),
      unhashed_at_default(
          F("data.random_erase", 0, 0, 1,
            "images: probability of timm's random erasing (one box of N(0,1) pixels) per training image")),
      unhashed_at_default(
          F("data.mixup", 0, 0, 100,
            "images: mixup Beta(alpha, alpha) of each training batch with its reverse (0 = off; Swin recipe 0.8)")),
      unhashed_at_default(
          F("data.cutmix", 0, 0, 100,
            "images: cutmix Beta(alpha, alpha) box from the reversed batch (0 = off; Swin recipe 1.0)")),
      unhashed_at_default(F("data.mix_prob", 1, 0, 1,
                            "images: probability that a training batch is mixed when data.mixup or data.cutmix is on")),
      unhashed_at_default(F("data.mix_switch_prob", 0.5, 0, 1,
                            "images: with both on, probability of cutmix rather than mixup for a batch")),
      F("data.crop_scale", 0.08, 0.01, 1,
        "imagefolder: smallest area fraction of the training random resized crop (upper bound 1, ratio 3/4..4/3)"),
      I("data.eval_resize", 256, 1, 1 << 16,
        "imagefolder: eval images are resized to this shorter side, then centre-cropped to model.image_size"),
      S("data.imagenet_a", "",
        "imagefolder: ImageNet-A folder (<wnid>/*), eval split imagenet-a: top-1 over its 200 classes ('' = none)"),
      S("data.imagenet_r", "",
        "imagefolder: ImageNet-R folder (<wnid>/*), eval split imagenet-r: top-1 over its 200 classes ('' = none)"),
      S("data.imagenet_o", "",
        "imagefolder: ImageNet-O folder (<wnid>/*), eval split imagenet-o: OOD detection against the valid images of "
        "its 200 classes ('' = none)"),
      timed(I("data.workers", 2, 1, 256, "imagefolder: background threads decoding images")),
      S("data.attack_dir", "results/attacked/wikitext-103",
        "folder of the attacked valid/test files (written by `ssr data attack`, read as splits "
        "valid-attacked/test-attacked)",
        false),
      F("data.attack_rate", 0.025, 0, 1,
        "attack: fraction of each line's words swapped (at least one per line with a swappable word)"),
      I("data.attack_seed", 1, 0, 2147483647, "attack: seed of the word choice"),
      S("data.attack_word", "AAA", "attack: the word that replaces the chosen words"),

      // ---- model.*: the Switch-style LM (reference "medium" of WikiText-103)
      C("model.arch", "switch_lm", {"switch_lm", "swin_moe"},
        "model family: the Switch-style LM, or the Swin(-MoE) image classifier (model.embed_dim etc.)"),
      I("model.n_layers", 6, 1, 128, "layers, each attention + SMoE block"),
      I("model.d_model", 352, 8, 65536, "hidden size"),
      I("model.n_heads", 8, 1, 256, "attention heads (d_model must be divisible)"),
      I("model.d_inner", 352, 1, 1 << 20, "inner size of each expert FFN"),
      I("model.n_experts", 16, 1, 4096, "experts per SMoE block"),
      I("model.top_k", 2, 1, 64, "experts per token"),
      F("model.dropout", 0.1, 0, 1,
        "dropout on attention probabilities, inside experts, on the SMoE output (swin_moe: inside experts only, "
        "Tutel's MOE_DROP)"),
      I("model.attn_span", 1024, 1, 1 << 20, "tokens each query attends to (previous positions, via cache)"),
      timed(
          C("model.attn_impl", "reference", {"reference", "sdpa"},
            "attention compute: the reference's unskewed band, or one scaled_dot_product_attention with the band and "
            "position term as its mask (fused on CUDA; same function, dropout drawn from torch's default generator)")),
      timed(I("model.attn_head_multiple", 8, 1, 256,
              "attn_impl=sdpa: zero-pad each head to a multiple of this (same attention; CUDA's memory-efficient and "
              "cuDNN kernels need multiples of 8, and the paper's head size is 44); 1 = no padding")),
      C("model.block", "vanilla", {"vanilla", "momentum"},
        "SMoE block: vanilla residual or heavy-ball momentum (MomentumSMoE)"),
      F("model.mu", 0.7, 0, 1, "momentum coefficient of the heavy-ball block"),
      F("model.gamma", 1.0, 0, 10, "step size of the heavy-ball block"),
      C("model.expert_init", "reference", {"reference", "linear"},
        "expert weights: reference U(+-1/sqrt(out*in)), zero biases (fastmoe quirk); linear: nn.Linear default per "
        "expert"),
      B("model.unused_norm", true,
        "register the reference's never-applied third LayerNorm per layer (parameter count 215,679,863)"),
      timed(C("model.expert_impl", "loop", {"loop", "grouped"},
              "expert FFN compute: loop of per-expert matmuls, or one grouped GEMM (at::_grouped_mm; no host sync; "
              "dims multiple of 8)")),
      timed(I("model.vocab_multiple", 1, 1, 4096,
              "pad the output layer's vocabulary to a multiple of this in the matmuls (masked, same loss; 64 suits "
              "cuBLAS)")),
      I("model.image_size", 224, 1, 1 << 16, "swin_moe: input images are image_size x image_size"),
      I("model.in_chans", 3, 1, 64, "swin_moe: image channels"),
      I("model.patch_size", 4, 1, 64, "swin_moe: patch embedding stride and kernel"),
      I("model.embed_dim", 96, 1, 1 << 16, "swin_moe: channels of stage 1 (doubled by each patch merging)"),
      IL("model.depths", {2, 2, 18, 2}, 1, 1024, "swin_moe: blocks per stage"),
      IL("model.swin_heads", {3, 6, 12, 24}, 1, 1024, "swin_moe: attention heads per stage"),
      I("model.window", 7, 1, 1024, "swin_moe: attention window side (shrunk to the resolution where that is smaller)"),
      F("model.mlp_ratio", 4.0, 0.01, 1024, "swin_moe: MLP and expert hidden size / channels"),
      F("model.drop_path", 0.2, 0, 1,
        "swin_moe: stochastic depth rate of the last block (linear from 0 over all blocks)"),
      IL("model.moe_every", {0, 0, 2, 2}, 0, 1024,
         "swin_moe: per stage, block b is MoE when m > 0 and b % m == m - 1 (0 = dense stage; Swin-MoE: [0,0,2,2] = "
         "blocks 1,3,.. of stage 3, block 1 of stage 4)"),
      I("model.num_classes", 1000, 2, 1 << 20, "swin_moe: classes of the classifier head"),
      F("model.init_std", 0.005, 0, 1,
        "swin_moe: truncated-normal std of every Linear and expert weight (Swin-MoE INIT_STD; biases 0, MLP fc2 "
        "without bias, expert fc2 bias frozen at 0)"),
      timed(I("model.loss_chunk", 2048, 1, 1 << 30,
              "tokens per output-layer + cross-entropy chunk (bounds the logits memory)")),

      unhashed_at_default(F("model.capacity_factor", 0, 0, kInf,
                            "expert capacity ceil(factor * tokens * k / experts) per router call, first choices "
                            "first (Switch/GShard); the overflow is dropped and counted (drop_rate); 0 = none")),
      unhashed_at_default(C("model.drop_policy", "choice", {"choice", "position", "probs"},
                            "which slots an expert over capacity keeps: first choices first (GShard), its earliest "
                            "tokens or its highest weights (Megatron-Core's position, probs)")),

      // ---- router.*: token-to-expert routing (routers/)
      C("router.name", "vanilla", router_names(), "routing method (routers/registry.cpp lists them)"),
      I("router.group_tokens", 0, 0, 1LL << 40,
        "tokens per router call: the micro-batch is routed in consecutive groups of this many (the reference: 6,144, "
        "one GPU's micro-batch); 0 = the whole micro-batch"),
      unhashed_at_default(I("router.group_images", 0, 0, 1LL << 40,
                            "swin_moe: images per router call in every MoE block (the reference: 48, one GPU's batch, "
                            "so Tutel's capacity, dropping and loss are per GPU); 0 = the whole batch")),
      unhashed_at_default(I("router.eval_group_tokens", 0, 0, 1LL << 40,
                            "tokens per router call in the final evaluation (the reference: 12,288, one GPU's 24 of "
                            "the 48 eval streams, batch_split 1); 0 = router.group_tokens")),
      unhashed_at_default(B("router.global_batch", false,
                            "with run.nproc > 1: all-gather the gate logits so routers (Sinkhorn marginals, balance "
                            "losses, SSR's draw) see the global micro-batch, not one rank's (timing phase 'gather')")),

      // ---- train.*: optimisation (reference: Adam 7e-4, warm-up 4000, constant, no clipping)
      I("train.steps", 80000, 0, 1LL << 40, "optimizer steps"),
      I("train.batch_size", 48, 1, 1 << 20, "streams per step (B); a step sees batch_size * seq_len target tokens"),
      I("train.seq_len", 512, 1, 1 << 20, "segment length M"),
      I("train.batch_split", 2, 1, 1 << 20,
        "micro-batches per step (gradient accumulation); routers see one micro-batch"),
      F("train.lr", 7e-4, 0, kInf, "Adam learning rate after warm-up"),
      I("train.warmup", 4000, 0, 1LL << 40, "linear warm-up steps (lr * min(1, step / warmup))"),
      below_max(F("train.beta1", 0.9, 0, 1, "Adam beta1")),
      below_max(F("train.beta2", 0.999, 0, 1, "Adam beta2")),
      F("train.weight_decay", 0, 0, kInf,
        "weight decay: L2 with adam, decoupled with adamw (not on biases, norms, position tables)"),
      C("train.optimizer", "adam", {"adam", "adamw"},
        "adam (L2 weight decay on every parameter, the reference LM's) or adamw (decoupled decay, none on biases and "
        "norms, nor on Swin's position tables)"),
      timed(C("train.optimizer_impl", "loop", {"loop", "fused"},
              "Adam/AdamW update: torch::optim's ops per parameter, or one fused ATen kernel per parameter group "
              "(at::_fused_adam(w)_, PyTorch's fused=True; same update and checkpoints, float rounding differs)")),
      C("train.schedule", "constant", {"constant", "cosine"},
        "after the warm-up, constant lr (the reference LM's) or cosine decay to train.min_lr at train.steps (Swin's, "
        "nanoGPT's)"),
      F("train.min_lr", 0, 0, kInf, "final lr of the cosine schedule"),
      F("train.warmup_lr", 0, 0, kInf, "lr at step 0 of the linear warm-up (the reference LM's: 0)"),
      F("train.label_smoothing", 0, 0, 1, "vision trainer: label smoothing of the cross-entropy"),
      F("train.clip", 0, 0, kInf, "gradient-norm clipping (0 = off, like the reference)"),
      I("train.eval_every", 1000, 0, 1LL << 40,
        "steps between partial validations (0 = none); the best one's checkpoint is kept"),
      I("train.eval_segments", 0, 0, 1LL << 40,
        "segments of the validation stream per partial validation, walked like the training stream (own cache, "
        "position, random restart); 0 = the reference's min(eval_every / 10, one pass of a stream)"),
      C("train.precision", "fp32", {"fp32", "bf16"},
        "fp32 (the paper's) or bf16 autocast of the forward (matmuls in bfloat16; parameters, loss reductions and Adam "
        "in float32)"),
      timed(B("train.time_router", true,
              "time the router calls of every step (timings phase 'router'; on CUDA each MoE layer then syncs once)")),
      I("train.checkpoint_every", 1000, -1, 1LL << 40,
        "steps between resumable checkpoints (0 = only at the end; -1 = none written: no --resume, and the best "
        "partial validation's weights wait in memory for the final evaluation)",
        false),

      // ---- eval.*: evaluation
      I("eval.batch_size", 48, 1, 1 << 20, "streams in evaluation (reference: the training batch)"),
      SL("eval.splits", {"valid", "test"},
         "splits evaluated at the end of the run (valid-attacked, test-attacked after `ssr data attack`)"),
      I("eval.max_segments", 0, 0, 1LL << 40,
        "segments evaluated per split at the end (0 = the whole split, as the reference)"),
      unhashed_at_default(
          B("eval.reset_cache", false,
            "LM: also evaluate every split with the attention caches zeroed before each segment, so a token sees only "
            "the earlier tokens of its own seq_len segment (nanoGPT's protocol); stored as SPLIT@reset_cache")),
      SL("eval.router_modes", {},
         "SSR only: evaluate every split again with these inference modes (none, sinkhorn, noise, both); results "
         "stored as SPLIT@MODE (paper Table 3)"),
      C("eval.checkpoint", "best", {"best", "last"},
        "final evaluation of the best partial-validation checkpoint (reference) or the last step"),
  };
}

// Where each key is used (Key::when): one condition, then the keys it gates. A key that no
// row names is used by every run.
struct Scope {
  std::string other;
  std::vector<std::string> values;
  std::vector<std::string> keys;
};
const std::vector<Scope>& scopes() {
  // A row per condition, its keys packed (clang-format would put one key on each line).
  // clang-format off
  static const std::vector<Scope> s = {
      {"model.arch", {"switch_lm"},
       {"data.eval_every_token", "data.cache_dir", "data.attack_dir", "data.attack_rate", "data.attack_seed",
        "data.attack_word", "model.n_layers", "model.d_model", "model.n_heads", "model.d_inner", "model.attn_span",
        "model.attn_impl", "model.block", "model.unused_norm", "model.vocab_multiple", "model.loss_chunk",
        "router.eval_group_tokens", "router.global_batch", "train.seq_len", "train.batch_split", "train.eval_segments",
        "eval.max_segments", "eval.reset_cache"}},
      {"model.arch", {"swin_moe"},
       {"data.mean", "data.std", "data.hflip", "data.randaug_n", "data.randaug_m", "data.randaug_mstd",
        "data.random_erase", "data.mixup", "data.cutmix", "data.mix_prob", "data.mix_switch_prob", "model.image_size",
        "model.in_chans", "model.patch_size", "model.embed_dim", "model.depths", "model.swin_heads", "model.window",
        "model.mlp_ratio", "model.drop_path", "model.moe_every", "model.num_classes", "model.init_std",
        "router.group_images", "train.label_smoothing"}},
      {"data.format", {"imagefolder"},
       {"data.crop_scale", "data.eval_resize", "data.imagenet_a", "data.imagenet_r", "data.imagenet_o", "data.workers"}},
      {"model.block", {"momentum"}, {"model.mu", "model.gamma"}},
      {"train.schedule", {"cosine"}, {"train.min_lr"}},
  };
  // clang-format on
  return s;
}

// The registry's router.* keys, inserted after router.name, each used only by the routers that
// declare it; eval.router_modes only by routers with inference modes, model.capacity_factor only
// by routers without a capacity of their own.
std::vector<Key> with_router_keys(std::vector<Key> keys) {
  std::vector<Key> declared;
  std::map<std::string, std::vector<std::string>> users;  // key -> routers
  for (const auto& r : routers::registry())
    for (const auto& k : r.keys) {
      auto it = std::find_if(declared.begin(), declared.end(), [&](const Key& d) { return d.name == k.name; });
      if (it == declared.end())
        declared.push_back(k);
      else if (it->def != k.def || it->type != k.type || it->doc != k.doc)
        throw std::logic_error("router key declared twice, differently: " + k.name);
      users[k.name].push_back(r.name);
    }
  // The router comes first: a key of another router is refused for that, before any key of its own scopes it.
  for (auto& k : declared) k.when.insert(k.when.begin(), {"router.name", users.at(k.name)});
  auto at = std::find_if(keys.begin(), keys.end(), [](const Key& k) { return k.name == "router.name"; });
  keys.insert(at + 1, declared.begin(), declared.end());
  std::vector<std::string> with_modes;
  for (const auto& r : routers::registry())
    if (r.caps.eval_modes) with_modes.push_back(r.name);
  std::vector<std::string> without_capacity;
  for (const auto& r : routers::registry())
    if (!r.caps.own_capacity) without_capacity.push_back(r.name);
  for (auto& k : keys) {
    if (k.name == "eval.router_modes") k.when.emplace_back("router.name", with_modes);
    if (k.name == "model.capacity_factor" || k.name == "model.drop_policy")
      k.when.emplace_back("router.name", without_capacity);
  }
  return keys;
}

std::vector<Key> scoped(std::vector<Key> keys) {
  for (const auto& sc : scopes())
    for (const auto& name : sc.keys) {
      auto it = std::find_if(keys.begin(), keys.end(), [&](const Key& k) { return k.name == name; });
      if (it == keys.end()) throw std::logic_error("schema scope names an undeclared key: " + name);
      it->when.emplace_back(sc.other, sc.values);
    }
  return keys;
}

}  // namespace

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = scoped(with_router_keys(build()));
  return keys;
}

const std::vector<std::string>& groups() {
  static const std::vector<std::string> g = {"model", "router", "data"};
  return g;
}

const std::vector<ChoiceScope>& choice_scopes() {
  static const std::vector<ChoiceScope> s = {
      {"data.format", "model.arch", {{"switch_lm", {"word", "byte", "char"}}, {"swin_moe", {"idx", "imagefolder"}}}},
  };
  return s;
}

bool is_open_namespace(const std::string& name) { return name.rfind("tags.", 0) == 0; }

}  // namespace ssr::config
