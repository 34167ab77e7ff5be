// Classification and out-of-distribution metrics of the vision evaluation (reference eval_OOD.py
// and calibration_tools.py), in percent where the paper reports percent.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace ssr::train {

// Logits restricted to a class subset: entries outside `classes` become -inf (ImageNet-A/R/O's
// 200 wnids). logits (N, C) -> (N, C); an empty subset returns logits unchanged.
torch::Tensor mask_logits(const torch::Tensor& logits, const std::vector<int64_t>& classes);

// Count of rows whose label is among the k largest logits. logits (N, C), labels (N) int64.
int64_t top_k_correct(const torch::Tensor& logits, const torch::Tensor& labels, int64_t k);

// Out-of-distribution detection with OOD as the positive class; score (N) higher = more OOD
// (the reference: -max softmax probability), positive (N) bool. All in percent.
// AUPR = sklearn.metrics.average_precision_score (sum over thresholds of (R_n - R_{n-1}) P_n,
// tied scores as one threshold); AUROC = P(score_pos > score_neg) + P(tie) / 2; FPR95 = the
// fraction of negatives flagged at the largest threshold whose recall of positives is >= 95 %.
struct OodMetrics {
  double aupr = 0, auroc = 0, fpr95 = 0;
};
OodMetrics ood_metrics(const torch::Tensor& score, const torch::Tensor& positive);

}  // namespace ssr::train
