#include "harness/train/checkpoint.hpp"

#include "harness/config/config.hpp"
#include "harness/errors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

namespace fs = std::filesystem;

namespace ssr::train {
namespace {

constexpr char kMagic[8] = {'S', 'S', 'R', 'C', 'K', 'P', 'T', '\n'};
constexpr size_t kHeaderBytes = 64;  // magic, u32 format, u32 zero, u64 payload bytes, 32-byte SHA-256, zeros
constexpr size_t kDigestBytes = 32;

struct Header {
  uint32_t format = 0;
  uint64_t payload = 0;
  std::array<unsigned char, kDigestBytes> digest{};
};

// Little-endian on every machine we run on; the format fixes it explicitly anyway.
void put_le(unsigned char* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint64_t get_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

std::array<unsigned char, kHeaderBytes> encode(const Header& h) {
  std::array<unsigned char, kHeaderBytes> b{};
  std::memcpy(b.data(), kMagic, sizeof kMagic);
  put_le(b.data() + 8, h.format, 4);
  put_le(b.data() + 16, h.payload, 8);
  std::memcpy(b.data() + 24, h.digest.data(), kDigestBytes);
  return b;
}

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1)
      throw std::runtime_error("OpenSSL: cannot initialise SHA-256");
  }
  void update(const void* data, size_t n) { EVP_DigestUpdate(ctx_.get(), data, n); }
  std::array<unsigned char, kDigestBytes> finish() {
    std::array<unsigned char, kDigestBytes> d{};
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_.get(), d.data(), &len);
    return d;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

// Closes on scope exit, so every early throw releases the descriptor.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

bool write_all(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// LibTorch's messages carry a backtrace after the first line.
std::string first_line(const std::exception& e) {
  const std::string what = e.what();
  return what.substr(0, what.find('\n'));
}

}  // namespace

namespace {

// run.out_dir, where '' is checkpoints/ beside the store: two stores in one folder never share a tree.
fs::path out_root(const std::string& out_dir, const store::Store& store) {
  return out_dir.empty() ? fs::path(store.path()).parent_path() / "checkpoints" : fs::path(out_dir);
}

}  // namespace

fs::path run_dir(const std::string& out_dir, const store::Store& store, int64_t run) {
  return out_root(out_dir, store) / store.id() / std::to_string(run);
}

void remove_run_dir(const fs::path& dir) {
  // File by file: fs::remove_all binds to a copy inside libtorch.so that crashes (LibTorch 2.11 wheel).
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& e : fs::directory_iterator(dir)) fs::remove(e.path());
  fs::remove(dir);
}

void check_out_dir(const std::string& out_dir, const store::Store& store) {
  const fs::path dir = out_root(out_dir, store) / store.id();
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path probe = dir / fmt::format(".write-probe-{}", ::getpid());
  if (!ec) {
    Fd fd(::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.fd < 0) ec = std::error_code(errno, std::generic_category());
  }
  std::error_code ignored;
  fs::remove(probe, ignored);
  if (ec)
    throw config::ConfigError(fmt::format("run.out_dir: cannot write checkpoints under {} ({}); pick a writable folder",
                                          dir.string(), ec.message()));
}

void write_checkpoint(torch::serialize::OutputArchive& archive, const fs::path& path) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec)
    throw CheckpointError(
        fmt::format("{}: cannot create the checkpoint folder: {} (check run.out_dir)", path.string(), ec.message()));
  const fs::path tmp = path.string() + ".tmp";
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.fd < 0) {
    const int err = errno;
    const auto msg = fmt::format("{}: cannot write checkpoint: {} ({})", tmp.string(), std::strerror(err),
                                 environment_errno(err) ? free_space(path.parent_path()) : "check run.out_dir");
    if (environment_errno(err)) throw EnvironmentError(msg);
    throw CheckpointError(msg);
  }
  int error = 0;  // the first failed write's errno
  Header h;
  h.format = kCheckpointFormat;
  Sha256 sha;
  // A full disk or an I/O error is the machine's failure, with its own exit code; anything else
  // (a LibTorch serialisation error) is the checkpoint's.
  auto fail = [&](int err, const std::string& why) {
    ::close(fd.fd);
    fd.fd = -1;
    fs::remove(tmp, ec);
    // The free space is measured once the temporary is gone: what the checkpoint could have had.
    const auto msg = fmt::format("{}: cannot write checkpoint: {} after {:.1f} MiB ({}); {}", path.string(), why,
                                 static_cast<double>(h.payload) / (1 << 20), free_space(path.parent_path()),
                                 fs::exists(path) ? "the previous checkpoint is kept" : "no earlier checkpoint");
    if (environment_errno(err)) throw EnvironmentError(msg + "; free space, then resume the run");
    throw CheckpointError(msg);
  };
  const std::array<unsigned char, kHeaderBytes> placeholder{};
  if (!write_all(fd.fd, placeholder.data(), placeholder.size())) fail(errno, std::strerror(errno));
  try {
    // A short count makes LibTorch's zip writer throw again from its destructor, which
    // terminates the process: after a failed write the rest is accepted and dropped, and the
    // error is reported once save_to returns.
    archive.save_to([&](const void* data, size_t n) -> size_t {
      if (error != 0) return n;
      if (!write_all(fd.fd, data, n)) {
        error = errno != 0 ? errno : EIO;
        return n;
      }
      sha.update(data, n);
      h.payload += n;
      return n;
    });
  } catch (const std::exception& e) {
    fail(error, error != 0 ? std::strerror(error) : first_line(e));
  }
  if (error != 0) fail(error, std::strerror(error));
  h.digest = sha.finish();
  const auto header = encode(h);
  if (::pwrite(fd.fd, header.data(), header.size(), 0) != static_cast<ssize_t>(header.size()) || ::fsync(fd.fd) != 0)
    fail(errno, std::strerror(errno));
  if (::close(fd.fd) != 0) {
    fd.fd = -1;
    fail(errno, std::strerror(errno));
  }
  fd.fd = -1;
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail(errno, std::strerror(errno));
  // The rename is durable once the folder's entry is on disk.
  Fd dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.fd >= 0) ::fsync(dir.fd);
}

void read_checkpoint(torch::serialize::InputArchive& archive, const fs::path& path, torch::Device device) {
  const std::string name = path.string();
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) throw CheckpointError(fmt::format("{}: cannot read checkpoint: {}", name, std::strerror(errno)));
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) throw CheckpointError(fmt::format("{}: cannot read checkpoint: {}", name, ec.message()));
  std::array<unsigned char, kHeaderBytes> b{};
  const ssize_t got = ::pread(fd.fd, b.data(), b.size(), 0);
  if (got >= 4 && std::memcmp(b.data(), "PK\x03\x04", 4) == 0)
    throw CheckpointError(
        fmt::format("{}: checkpoint format 1 (written before 2026-12-05, without a checksum); this ssr reads "
                    "format {}: start the run again, or resume it with the ssr revision `ssr show` lists for it",
                    name, kCheckpointFormat));
  if (got != static_cast<ssize_t>(b.size()) || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0)
    throw CheckpointError(fmt::format("{}: not an ssr checkpoint (no SSRCKPT header)", name));
  Header h;
  h.format = static_cast<uint32_t>(get_le(b.data() + 8, 4));
  h.payload = get_le(b.data() + 16, 8);
  std::memcpy(h.digest.data(), b.data() + 24, kDigestBytes);
  if (h.format != kCheckpointFormat)
    throw CheckpointError(
        fmt::format("{}: checkpoint format {}; this ssr reads format {}", name, h.format, kCheckpointFormat));
  if (size != kHeaderBytes + h.payload)
    throw CheckpointError(fmt::format("{}: truncated or padded checkpoint: {} bytes, the header says {}", name, size,
                                      kHeaderBytes + h.payload));
  Sha256 sha;
  std::vector<char> buf(1 << 20);
  for (uint64_t pos = 0; pos < h.payload;) {
    const ssize_t n = ::pread(fd.fd, buf.data(), std::min<uint64_t>(buf.size(), h.payload - pos), kHeaderBytes + pos);
    if (n <= 0) throw CheckpointError(fmt::format("{}: cannot read checkpoint: {}", name, std::strerror(errno)));
    sha.update(buf.data(), static_cast<size_t>(n));
    pos += static_cast<uint64_t>(n);
  }
  if (sha.finish() != h.digest)
    throw CheckpointError(fmt::format("{}: checksum mismatch: the checkpoint is corrupted", name));
  try {
    archive.load_from(
        [&](uint64_t pos, void* out, size_t n) -> size_t {
          const ssize_t r = ::pread(fd.fd, out, n, static_cast<off_t>(kHeaderBytes + pos));
          return r < 0 ? 0 : static_cast<size_t>(r);
        },
        [&]() -> size_t { return h.payload; }, device);
  } catch (const std::exception& e) {
    throw CheckpointError(fmt::format("{}: unreadable checkpoint: {}", name, first_line(e)));
  }
}

}  // namespace ssr::train
