#include "harness/train/metrics.hpp"

#include <limits>
#include <stdexcept>

namespace ssr::train {

torch::Tensor mask_logits(const torch::Tensor& logits, const std::vector<int64_t>& classes) {
  if (classes.empty()) return logits;
  auto keep = torch::zeros({logits.size(1)}, logits.options().dtype(torch::kBool));  // (C)
  keep.index_fill_(0, torch::tensor(classes, torch::kInt64).to(logits.device()), true);
  return logits.masked_fill(~keep, -std::numeric_limits<double>::infinity());  // (N, C)
}

int64_t top_k_correct(const torch::Tensor& logits, const torch::Tensor& labels, int64_t k) {
  auto top = std::get<1>(logits.topk(std::min<int64_t>(k, logits.size(1)), 1));  // (N, k)
  return top.eq(labels.unsqueeze(1)).any(1).sum().item<int64_t>();
}

OodMetrics ood_metrics(const torch::Tensor& score, const torch::Tensor& positive) {
  auto s = score.to(torch::kDouble).cpu().contiguous();
  auto pos = positive.to(torch::kBool).cpu().contiguous();
  const int64_t n = s.numel();
  const int64_t n_pos = pos.sum().item<int64_t>(), n_neg = n - n_pos;
  if (n_pos == 0 || n_neg == 0) throw std::invalid_argument("ood_metrics: needs positives and negatives");
  auto order = std::get<1>(s.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));  // (N)
  auto ss = s.index_select(0, order), pp = pos.index_select(0, order);
  const double* sv = ss.data_ptr<double>();
  const bool* pv = pp.data_ptr<bool>();
  // Walk thresholds from the highest score down; each group of tied scores is one threshold.
  double tp = 0, fp = 0, prev_recall = 0, ap = 0, auc = 0, fpr95 = 1;
  bool fpr95_set = false;
  for (int64_t i = 0; i < n;) {
    double gtp = 0, gfp = 0;
    int64_t j = i;
    for (; j < n && sv[j] == sv[i]; ++j) (pv[j] ? gtp : gfp) += 1;
    // Negatives in this group lie below the positives seen so far and tie with this group's.
    auc += gfp * (tp + 0.5 * gtp);
    tp += gtp;
    fp += gfp;
    const double recall = tp / static_cast<double>(n_pos);
    ap += (recall - prev_recall) * tp / (tp + fp);
    prev_recall = recall;
    if (!fpr95_set && recall >= 0.95) {
      fpr95 = fp / static_cast<double>(n_neg);
      fpr95_set = true;
    }
    i = j;
  }
  return {100.0 * ap, 100.0 * auc / (static_cast<double>(n_pos) * static_cast<double>(n_neg)), 100.0 * fpr95};
}

}  // namespace ssr::train
