#include "harness/data/images.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <turbojpeg.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

namespace fs = std::filesystem;

namespace ssr::data {
namespace {

using config::ConfigError;

// IDX headers are big-endian.
uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// Whole file through zlib, which reads gzip and plain files alike.
std::string read_maybe_gzip(const std::string& path) {
  if (!fs::exists(path))
    throw ConfigError(fmt::format("{}: no such file (check data.dir and the split prefixes)", path));
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw ConfigError(fmt::format("{}: cannot open", path));
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  const bool failed = n < 0;
  gzclose(f);
  if (failed) throw ConfigError(fmt::format("{}: corrupt gzip stream", path));
  return out;
}

// The file of an IDX split: the gzip one if present, else the plain one.
std::string idx_file(const std::string& dir, const std::string& prefix, const std::string& kind) {
  const std::string plain = (fs::path(dir) / fmt::format("{}-{}", prefix, kind)).string();
  return fs::exists(plain + ".gz") ? plain + ".gz" : plain;
}

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return ext == ".jpeg" || ext == ".jpg";
}

std::vector<std::string> sorted_subdirs(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// <root>/<class>/* for the classes in `classes` (ids from `class_id`). Unknown folders are errors.
void add_folder(const fs::path& root, const std::map<std::string, int64_t>& class_id, ImageSplit& split,
                std::vector<int64_t>& labels, std::set<int64_t>* seen, bool ood) {
  if (!fs::is_directory(root))
    throw ConfigError(fmt::format("{}: no such folder (check data.dir and the split names)", root.string()));
  for (const auto& name : sorted_subdirs(root)) {
    auto it = class_id.find(name);
    if (it == class_id.end())
      throw ConfigError(fmt::format("{}: class '{}' is not among the {} training classes", (root / name).string(), name,
                                    class_id.size()));
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(root / name))
      if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    for (auto& f : files) {
      split.files.push_back(std::move(f));
      labels.push_back(ood ? -1 : it->second);
    }
    if (seen) seen->insert(it->second);
  }
}

ImageSplit folder_split(const fs::path& root, const std::map<std::string, int64_t>& class_id) {
  ImageSplit s;
  std::vector<int64_t> labels;
  add_folder(root, class_id, s, labels, nullptr, false);
  if (labels.empty()) throw ConfigError(fmt::format("{}: no .JPEG/.jpg images in its class folders", root.string()));
  s.labels = torch::tensor(labels, torch::kInt64);
  return s;
}

// ImageNet-A/R: their own images, logits masked to the classes they have.
ImageSplit subset_split(const fs::path& root, const std::map<std::string, int64_t>& class_id) {
  ImageSplit s;
  std::vector<int64_t> labels;
  std::set<int64_t> seen;
  add_folder(root, class_id, s, labels, &seen, false);
  if (labels.empty()) throw ConfigError(fmt::format("{}: no .JPEG/.jpg images in its class folders", root.string()));
  s.labels = torch::tensor(labels, torch::kInt64);
  s.class_subset.assign(seen.begin(), seen.end());
  return s;
}

// ImageNet-O: in distribution = the valid images of its classes, out = its own images.
ImageSplit ood_split(const fs::path& root, const fs::path& valid_root, const std::map<std::string, int64_t>& class_id) {
  ImageSplit s;
  std::vector<int64_t> labels;
  std::set<int64_t> seen;
  add_folder(root, class_id, s, labels, &seen, true);
  const size_t n_ood = labels.size();
  for (int64_t c : seen) {
    const std::string& wnid =
        std::find_if(class_id.begin(), class_id.end(), [&](auto& kv) { return kv.second == c; })->first;
    const fs::path dir = valid_root / wnid;
    if (!fs::is_directory(dir))
      throw ConfigError(fmt::format("{}: missing; ImageNet-O needs the valid images of its classes", dir.string()));
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    for (auto& f : files) {
      s.files.push_back(std::move(f));
      labels.push_back(c);
    }
  }
  if (n_ood == 0 || labels.size() == n_ood)
    throw ConfigError(fmt::format("{}: ImageNet-O needs OOD images and valid images of its classes", root.string()));
  s.labels = torch::tensor(labels, torch::kInt64);
  s.class_subset.assign(seen.begin(), seen.end());
  return s;
}

ImageData load_idx(const config::Config& cfg) {
  const std::string dir = cfg.s("data.dir");
  auto read = [&](const std::string& prefix) {
    return read_idx(idx_file(dir, prefix, "images-idx3-ubyte"), idx_file(dir, prefix, "labels-idx1-ubyte"));
  };
  ImageData d;
  d.channels = 1;
  IdxData train = read(cfg.s("data.train"));
  if (!cfg.s("data.valid").empty()) {
    IdxData v = read(cfg.s("data.valid"));
    d.splits["valid"] = ImageSplit{v.pixels, {}, v.labels, {}};
  } else if (cfg.f("data.holdout") > 0) {
    const int64_t n = train.labels.size(0);
    const auto held = static_cast<int64_t>(std::llround(cfg.f("data.holdout") * static_cast<double>(n)));
    d.splits["valid"] =
        ImageSplit{train.pixels.narrow(0, n - held, held), {}, train.labels.narrow(0, n - held, held), {}};
    train.pixels = train.pixels.narrow(0, 0, n - held);
    train.labels = train.labels.narrow(0, 0, n - held);
  }
  if (!cfg.s("data.test").empty()) {
    IdxData t = read(cfg.s("data.test"));
    d.splits["test"] = ImageSplit{t.pixels, {}, t.labels, {}};
  }
  const int64_t classes = train.labels.max().item<int64_t>() + 1;
  for (int64_t c = 0; c < classes; ++c) d.classes.push_back(std::to_string(c));
  const int64_t side = train.pixels.size(2);
  if (train.pixels.size(3) != side || cfg.i("model.image_size") != side)
    throw ConfigError(fmt::format("model.image_size: {} but the IDX images in {} are {}x{} (set model.image_size={})",
                                  cfg.i("model.image_size"), dir, train.pixels.size(2), train.pixels.size(3), side));
  d.splits["train"] = ImageSplit{train.pixels, {}, train.labels, {}};
  return d;
}

ImageData load_folders(const config::Config& cfg) {
  const fs::path dir = cfg.s("data.dir");
  const fs::path train_root = dir / cfg.s("data.train");
  if (!fs::is_directory(train_root))
    throw ConfigError(
        fmt::format("{}: no such folder (data.dir/data.train must hold one folder per class)", train_root.string()));
  ImageData d;
  d.channels = 3;
  d.classes = sorted_subdirs(train_root);
  std::map<std::string, int64_t> class_id;
  for (size_t i = 0; i < d.classes.size(); ++i) class_id[d.classes[i]] = static_cast<int64_t>(i);
  d.splits["train"] = folder_split(train_root, class_id);
  if (!cfg.s("data.valid").empty()) d.splits["valid"] = folder_split(dir / cfg.s("data.valid"), class_id);
  if (!cfg.s("data.test").empty()) d.splits["test"] = folder_split(dir / cfg.s("data.test"), class_id);
  if (!cfg.s("data.imagenet_a").empty()) d.splits["imagenet-a"] = subset_split(cfg.s("data.imagenet_a"), class_id);
  if (!cfg.s("data.imagenet_r").empty()) d.splits["imagenet-r"] = subset_split(cfg.s("data.imagenet_r"), class_id);
  if (!cfg.s("data.imagenet_o").empty()) {
    if (cfg.s("data.valid").empty())
      throw ConfigError("data.imagenet_o: needs data.valid (its in-distribution images)");
    d.splits["imagenet-o"] = ood_split(cfg.s("data.imagenet_o"), dir / cfg.s("data.valid"), class_id);
  }
  return d;
}

}  // namespace

torch::Tensor resize_bicubic(const torch::Tensor& x, int64_t h, int64_t w) {
  namespace F = torch::nn::functional;
  return F::interpolate(x.unsqueeze(0), F::InterpolateFuncOptions()
                                            .size(std::vector<int64_t>{h, w})
                                            .mode(torch::kBicubic)
                                            .align_corners(false)
                                            .antialias(true))
      .squeeze(0);
}

IdxData read_idx(const std::string& images_file, const std::string& labels_file) {
  const std::string img = read_maybe_gzip(images_file), lab = read_maybe_gzip(labels_file);
  auto u = [](const std::string& s) { return reinterpret_cast<const unsigned char*>(s.data()); };
  if (img.size() < 16 || be32(u(img)) != 0x803)
    throw ConfigError(fmt::format("{}: not an IDX image file (magic 0x00000803)", images_file));
  if (lab.size() < 8 || be32(u(lab)) != 0x801)
    throw ConfigError(fmt::format("{}: not an IDX label file (magic 0x00000801)", labels_file));
  const int64_t n = be32(u(img) + 4), h = be32(u(img) + 8), w = be32(u(img) + 12);
  if (static_cast<int64_t>(img.size()) != 16 + n * h * w)
    throw ConfigError(fmt::format("{}: {} bytes, the header promises {} images of {}x{} ({} bytes)", images_file,
                                  img.size(), n, h, w, 16 + n * h * w));
  if (be32(u(lab) + 4) != n || static_cast<int64_t>(lab.size()) != 8 + n)
    throw ConfigError(fmt::format("{}: does not hold {} labels (one per image of {})", labels_file, n, images_file));
  IdxData d;
  d.pixels = torch::from_blob(const_cast<char*>(img.data()) + 16, {n, 1, h, w}, torch::kUInt8).clone();
  d.labels = torch::from_blob(const_cast<char*>(lab.data()) + 8, {n}, torch::kUInt8).to(torch::kInt64);
  return d;
}

torch::Tensor decode_jpeg(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DecodeError(fmt::format("{}: cannot read", path));
  std::vector<unsigned char> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  tjhandle tj = tjInitDecompress();
  if (!tj) throw std::runtime_error("libjpeg-turbo: tjInitDecompress failed");
  struct Guard {
    tjhandle h;
    ~Guard() { tjDestroy(h); }
  } guard{tj};
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, buf.data(), static_cast<unsigned long>(buf.size()), &w, &h, &subsamp, &colorspace) != 0 ||
      w <= 0 || h <= 0)
    throw DecodeError(fmt::format("{}: not a JPEG ({})", path, tjGetErrorStr2(tj)));
  auto rgb = torch::empty({h, w, 3}, torch::kUInt8);  // (H, W, 3)
  if (tjDecompress2(tj, buf.data(), static_cast<unsigned long>(buf.size()), rgb.data_ptr<uint8_t>(), w, 0, h, TJPF_RGB,
                    TJFLAG_ACCURATEDCT) != 0)  // warnings too: a truncated file decodes to grey, not to the image
    throw DecodeError(fmt::format("{}: corrupt JPEG ({})", path, tjGetErrorStr2(tj)));
  return rgb.permute({2, 0, 1}).contiguous();  // (3, H, W)
}

ImageData load_images(const config::Config& cfg) {
  const std::string& format = cfg.s("data.format");
  ImageData d;
  // The config admits only idx and imagefolder with model.arch=swin_moe (choice_scopes).
  if (format == "idx")
    d = load_idx(cfg);
  else
    d = load_folders(cfg);
  const auto n_classes = static_cast<int64_t>(d.classes.size());
  if (n_classes != cfg.i("model.num_classes"))
    throw ConfigError(fmt::format("model.num_classes: {} but {} has {} classes (set model.num_classes={})",
                                  cfg.i("model.num_classes"),
                                  (fs::path(cfg.s("data.dir")) / cfg.s("data.train")).string(), n_classes, n_classes));
  if (cfg.i("model.in_chans") != d.channels)
    throw ConfigError(fmt::format("model.in_chans: {} but the images of {} have {} channel(s)", cfg.i("model.in_chans"),
                                  cfg.s("data.dir"), d.channels));
  if (cfg.floats("data.mean").size() != static_cast<size_t>(d.channels) ||
      cfg.floats("data.std").size() != static_cast<size_t>(d.channels))
    throw ConfigError(fmt::format("data.mean, data.std: need {} value(s) each, one per channel", d.channels));
  for (const auto& [name, split] : d.splits)
    if (split.size() > 0 && split.labels.max().item<int64_t>() >= n_classes)
      throw ConfigError(
          fmt::format("{}: split {} has labels beyond the {} training classes", cfg.s("data.dir"), name, n_classes));
  return d;
}

ImageLoader::ImageLoader(const ImageSplit& split, const config::Config& cfg, int64_t batch, bool train, uint64_t seed)
    : split_(split),
      batch_(batch),
      size_(cfg.i("model.image_size")),
      eval_resize_(cfg.i("data.eval_resize")),
      workers_(cfg.i("data.workers")),
      train_(train),
      hflip_(cfg.b("data.hflip")),
      crop_scale_(cfg.f("data.crop_scale")),
      seed_(seed),
      aug_(AugmentOptions::from(cfg)) {
  for (double v : cfg.floats("data.mean")) mean_.push_back(static_cast<float>(v));
  for (double v : cfg.floats("data.std")) std_.push_back(static_cast<float>(v));
  const int64_t n = split.size();
  if (train && n < batch)
    throw ConfigError(fmt::format("train.batch_size: {} is more than the {} training images", batch, n));
  batches_ = train ? n / batch : (n + batch - 1) / batch;
}

ImageLoader::~ImageLoader() {
  for (auto& f : queue_) f.wait();
}

void ImageLoader::refill() {
  const int64_t n = split_.size();
  while (static_cast<int64_t>(queue_.size()) < workers_ && (train_ || launched_ < batches_)) {
    const int64_t t = launched_++;
    std::vector<int64_t> rows;
    if (train_) {
      const int64_t epoch = t / batches_, pos = (t % batches_) * batch_;
      if (epoch != perm_epoch_) {
        auto g =
            at::make_generator<at::CPUGeneratorImpl>(seed_ + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(epoch + 1));
        auto p = torch::randperm(n, g, torch::kInt64);  // (N)
        perm_.assign(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + n);
        perm_epoch_ = epoch;
      }
      rows.assign(perm_.begin() + pos, perm_.begin() + pos + batch_);
    } else {
      for (int64_t i = t * batch_; i < std::min(n, (t + 1) * batch_); ++i) rows.push_back(i);
    }
    const uint64_t batch_seed = seed_ ^ (0xD1B54A32D192ED03ULL * static_cast<uint64_t>(t + 1));
    queue_.push_back(
        std::async(std::launch::async, [this, rows = std::move(rows), batch_seed] { return make(rows, batch_seed); }));
  }
}

void ImageLoader::seek(int64_t taken, int64_t skipped) {
  if (!train_ || !queue_.empty() || taken_ > 0)
    throw std::logic_error("ImageLoader::seek: only before a training pass starts");
  launched_ = taken_ = taken;
  skipped_ = skipped;
}

bool ImageLoader::next(ImageBatch& out) {
  refill();
  if (queue_.empty()) return false;
  out = queue_.front().get();
  queue_.pop_front();
  ++taken_;
  skipped_ += out.skipped;
  refill();
  return true;
}

ImageBatch ImageLoader::make(std::vector<int64_t> rows, uint64_t batch_seed) const {
  std::mt19937_64 rng(batch_seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  auto mean = torch::tensor(mean_).view({-1, 1, 1}), std = torch::tensor(std_).view({-1, 1, 1});  // (C, 1, 1)
  std::vector<torch::Tensor> images;
  std::vector<int64_t> labels;
  ImageBatch b;
  const auto* label = split_.labels.data_ptr<int64_t>();
  for (int64_t row : rows) {
    torch::Tensor x;  // (C, h, w) float in [0, 1]
    if (split_.pixels.defined()) {
      x = split_.pixels[row].to(torch::kFloat) / 255.0;
    } else {
      try {
        x = decode_jpeg(split_.files[row]).to(torch::kFloat) / 255.0;
      } catch (const DecodeError&) {
        ++b.skipped;  // a corrupt image is left out, never replaced by zeros
        continue;
      }
      const int64_t h = x.size(1), w = x.size(2);
      if (train_) {
        // timm/torchvision RandomResizedCrop: area in [crop_scale, 1], log-uniform ratio in
        // [3/4, 4/3], 10 tries, then the centre crop of the clamped ratio.
        int64_t ch = h, cw = w, top = 0, left = 0;
        bool found = false;
        for (int tries = 0; tries < 10 && !found; ++tries) {
          const double area = h * w * (crop_scale_ + (1 - crop_scale_) * U(rng));
          const double ratio = std::exp(std::log(3.0 / 4) + (std::log(4.0 / 3) - std::log(3.0 / 4)) * U(rng));
          const auto cw_t = static_cast<int64_t>(std::lround(std::sqrt(area * ratio)));
          const auto ch_t = static_cast<int64_t>(std::lround(std::sqrt(area / ratio)));
          if (cw_t > 0 && ch_t > 0 && cw_t <= w && ch_t <= h) {
            cw = cw_t;
            ch = ch_t;
            top = static_cast<int64_t>(U(rng) * static_cast<double>(h - ch + 1));
            left = static_cast<int64_t>(U(rng) * static_cast<double>(w - cw + 1));
            found = true;
          }
        }
        if (!found) {
          const double r = static_cast<double>(w) / static_cast<double>(h);
          if (r < 3.0 / 4)
            ch = std::lround(w / (3.0 / 4));
          else if (r > 4.0 / 3)
            cw = std::lround(h * (4.0 / 3));
          top = (h - ch) / 2;
          left = (w - cw) / 2;
        }
        x = resize_bicubic(x.narrow(1, top, ch).narrow(2, left, cw), size_, size_);
      } else {
        const double s = static_cast<double>(eval_resize_) / static_cast<double>(std::min(h, w));
        const int64_t rh = std::max<int64_t>(size_, std::lround(h * s)),
                      rw = std::max<int64_t>(size_, std::lround(w * s));
        x = resize_bicubic(x, rh, rw).narrow(1, (rh - size_) / 2, size_).narrow(2, (rw - size_) / 2, size_);
      }
    }
    if (train_ && hflip_ && U(rng) < 0.5) x = x.flip({2});
    if (train_ && aug_.randaug_n > 0) x = rand_augment(x, aug_.randaug_n, aug_.randaug_m, aug_.randaug_mstd, rng);
    auto normalised = (x - mean) / std;  // (C, S, S)
    if (train_) random_erase(normalised, aug_.erase_prob, rng);
    images.push_back(normalised);
    labels.push_back(label[row]);
  }
  const int64_t c = static_cast<int64_t>(mean_.size());
  b.images = images.empty() ? torch::empty({0, c, size_, size_}) : torch::stack(images);  // (B, C, S, S)
  b.labels = torch::tensor(labels, torch::kInt64);                                        // (B)
  if (train_ && aug_.mixing() && b.labels.size(0) > 0)
    b.targets = mix_batch(b.images, b.labels, aug_, rng);  // (B, classes)
  return b;
}

}  // namespace ssr::data
