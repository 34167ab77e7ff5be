// The trainer of model.arch=swin_moe: image classification with the Swin-MoE recipe
// (reference-setup 5: AdamW, warm-up + cosine, label smoothing, clipping), stored like LM runs.
#pragma once
#include "harness/train/trainer.hpp"

namespace ssr::train {

// Same contract as train(): input errors throw before the run row exists, afterwards every
// failure is recorded on it. Results: valid/test top1, top5 (percent), imagenet-a/-r top1,
// imagenet-o aupr, auroc, fpr95 (percent).
Outcome train_vision(const config::Config& cfg, store::Store& store, const Options& opts);

}  // namespace ssr::train
