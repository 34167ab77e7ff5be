// The language-modelling task (model.arch=switch_lm): streams of tokens with per-stream caches
// carried across segments, micro-batches (train.batch_split), data parallelism over c10d ranks,
// partial validation on the valid stream and the reference's final evaluation of eval.splits.
#pragma once
#include <memory>
#include <optional>

#include "harness/config/config.hpp"
#include "harness/data/corpus.hpp"
#include "harness/train/task.hpp"
#include "harness/train/trainer.hpp"

namespace ssr::train {

// Loads the corpus (or takes `corpus`: `ssr bench step`'s token ids) and builds the model, its
// streams and (run.nproc > 1) the process group. Every input error throws here, before the run
// row exists.
std::unique_ptr<Task> make_lm_task(const config::Config& cfg, const Options& opts,
                                   std::optional<data::Corpus> corpus = std::nullopt);

}  // namespace ssr::train
