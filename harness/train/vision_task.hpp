// The image-classification task (model.arch=swin_moe) with the Swin-MoE recipe (reference-setup
// 5: AdamW, warm-up + cosine, label smoothing, mixup/cutmix, clipping). Results: valid/test top1,
// top5 (percent), imagenet-a/-r top1, imagenet-o aupr, auroc, fpr95 (percent).
#pragma once
#include <memory>

#include "harness/config/config.hpp"
#include "harness/train/task.hpp"
#include "harness/train/trainer.hpp"

namespace ssr::train {

// Loads the image splits and builds the model; input errors throw here, before the run row exists.
std::unique_ptr<Task> make_vision_task(const config::Config& cfg, const Options& opts);

}  // namespace ssr::train
