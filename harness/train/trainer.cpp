#include "harness/train/trainer.hpp"

#include "harness/train/lm_task.hpp"
#include "harness/train/loop.hpp"
#include "harness/train/vision_task.hpp"
#include "routers/ssr.hpp"

namespace ssr::train {

Outcome train(const config::Config& cfg, store::Store& store, const Options& opts) {
  for (const auto& mode : cfg.strings("eval.router_modes")) routers::eval_mode_named(mode);  // rejects unknown modes
  const auto task = cfg.s("model.arch") == "swin_moe" ? make_vision_task(cfg, opts) : make_lm_task(cfg, opts);
  return run_training(cfg, store, opts, *task);
}

}  // namespace ssr::train
