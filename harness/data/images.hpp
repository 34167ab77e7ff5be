// Image classification data: Fashion-MNIST's IDX files and ImageNet-style class folders (JPEG,
// decoded with libjpeg-turbo), the train augmentation and eval transform of Swin
// (reference-setup 5), and a loader that prepares batches on background threads.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "harness/config/config.hpp"
#include "harness/data/augment.hpp"

namespace ssr::data {

struct ImageSplit {
  torch::Tensor pixels;            // idx: (N, C, H, W) uint8 in memory; undefined for folders
  std::vector<std::string> files;  // imagefolder: the N image paths
  torch::Tensor labels;            // (N) int64 class ids; -1 = out of distribution (imagenet-o)
  // Classes the split covers (ImageNet-A/R/O: 200 wnids): logits are masked to these; empty = all.
  std::vector<int64_t> class_subset;
  int64_t size() const { return labels.size(0); }
};

struct ImageData {
  std::vector<std::string> classes;  // id -> class name (sorted wnids; "0".."9" for IDX)
  int64_t channels = 0;
  std::map<std::string, ImageSplit> splits;  // train, valid, test, imagenet-a, imagenet-r, imagenet-o
};

// One IDX pair (images: magic 0x0803, N x H x W uint8; labels: magic 0x0801, N uint8), gzip or
// plain. Throws ConfigError naming the file when it is missing, truncated or mismatched.
struct IdxData {
  torch::Tensor pixels;  // (N, 1, H, W) uint8
  torch::Tensor labels;  // (N) int64
};
IdxData read_idx(const std::string& images_file, const std::string& labels_file);

// A JPEG file -> (3, H, W) uint8 RGB (grayscale is replicated). Throws DecodeError when the file
// is not a decodable JPEG.
struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
torch::Tensor decode_jpeg(const std::string& path);

// x (C, H, W) float -> (C, h, w): bicubic with antialiasing, as PIL resizes the reference's
// images (torch's antialiased kernel is PIL's); values may overshoot [0, 1] slightly.
torch::Tensor resize_bicubic(const torch::Tensor& x, int64_t h, int64_t w);

// Reads the data.* keys for data.format idx or imagefolder and checks them against model.*
// (channels, image size, number of classes). Every bad input is one ConfigError naming the file.
// idx: splits are file prefixes in data.dir (<prefix>-images-idx3-ubyte[.gz]); valid may be
// carved from the end of train with data.holdout. imagefolder: data.dir/<split>/<wnid>/*, the
// classes are train's sorted sub-folders.
ImageData load_images(const config::Config& cfg);

struct ImageBatch {
  torch::Tensor images;   // (B, C, S, S) float32, normalised
  torch::Tensor labels;   // (B) int64
  torch::Tensor targets;  // (B, classes) soft targets when mixup / cutmix is on; else undefined
  int64_t skipped = 0;    // unreadable images left out of this batch
};

// Train: endless batches of an epoch-wise shuffled order (drop_last), random resized crop (folders)
// horizontal flip, then random erasing and mixup / cutmix when configured (augment.hpp). Eval: the split in order, the
// last batch partial, resize + centre crop. Batch t is a function of (seed, t) only, so the worker threads never change
// a result.
class ImageLoader {
 public:
  ImageLoader(const ImageSplit& split, const config::Config& cfg, int64_t batch, bool train, uint64_t seed);
  ~ImageLoader();
  ImageLoader(const ImageLoader&) = delete;
  ImageLoader& operator=(const ImageLoader&) = delete;

  // Eval: false after the last batch. Train: always true.
  bool next(ImageBatch& out);
  // Continues a training pass after `taken` batches (a resumed run): batch t depends on t alone.
  // Call before the first next().
  void seek(int64_t taken, int64_t skipped);
  int64_t batches() const { return batches_; }  // per pass (train: per epoch)
  int64_t skipped() const { return skipped_; }  // unreadable images so far

 private:
  // Batch of these split rows, augmented from batch_seed; runs on a worker thread.
  ImageBatch make(std::vector<int64_t> rows, uint64_t batch_seed) const;
  void refill();  // launches batches until data.workers are in flight

  const ImageSplit& split_;
  int64_t batch_, size_, eval_resize_, batches_, workers_;
  bool train_, hflip_;
  double crop_scale_;
  uint64_t seed_;
  std::vector<float> mean_, std_;
  AugmentOptions aug_;  // random erasing, mixup, cutmix (training only)
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;  // (N) this epoch's order, drawn on the calling thread
  int64_t launched_ = 0, taken_ = 0, skipped_ = 0;
  std::deque<std::future<ImageBatch>> queue_;
};

}  // namespace ssr::data
