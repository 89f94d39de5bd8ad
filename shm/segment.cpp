#include "shm/segment.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include <fmt/format.h>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "core/error.h"
#include "core/size.h"
#include "shm/fault_messages.h"
#include "shm/kept_copies.h"

namespace shardcast::shm {
namespace bip = boost::interprocess;
namespace fs = std::filesystem;

struct Segment::Mapping {
  bip::mapped_region region;
};

namespace {

bip::mode_t boost_mode(Access access) {
  switch (access) {
    case Access::kReadOnly: return bip::read_only;
    case Access::kReadWrite: return bip::read_write;
    case Access::kCopyOnWrite: return bip::copy_on_write;
  }
  return bip::read_only;
}

// What Boost maps: an open descriptor (a segment has no name to open).
struct Descriptor {
  int fd;
  bip::mapping_handle_t get_mapping_handle() const {
    bip::mapping_handle_t handle;
    handle.handle = fd;
    handle.is_xsi = false;
    return handle;
  }
};

std::unique_ptr<Segment::Mapping> map(int fd, Access access, const std::string& what) {
  try {
    return std::unique_ptr<Segment::Mapping>(
        new Segment::Mapping{bip::mapped_region(Descriptor{fd}, boost_mode(access))});
  } catch (const bip::interprocess_exception& e) {
    if (e.get_native_error() != 0) throw_system_error("mmap", what, e.get_native_error());
    throw Error(ErrorCode::kSystem, fmt::format("mmap('{}') failed: {}", what, e.what()));
  }
}

uint64_t random_u64() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

// An unnamed file in `dir`: O_TMPFILE where the filesystem has it (tmpfs, ext4, xfs, btrfs), else a random name
// removed before a byte is allocated, so that nothing of size ever has a name.
File create_unnamed(const fs::path& dir, const std::string& what) {
  const std::string label = fmt::format("{} (unnamed, in {})", what, dir.string());
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return File::adopt(fd, label);
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
    throw_system_error("open(O_TMPFILE)", dir.string(), errno);
  for (int attempt = 0; attempt < 8; ++attempt) {
    const fs::path path = dir / fmt::format("{}unnamed-{:016x}", kNamePrefix, random_u64());
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) continue;
    if (fd < 0) throw_system_error("open(O_CREAT|O_EXCL)", path.string(), errno);
    if (::unlink(path.c_str()) != 0) {
      const int error = errno;
      ::close(fd);
      throw_system_error("unlink", path.string(), error);
    }
    return File::adopt(fd, label);
  }
  throw Error(ErrorCode::kSystem, fmt::format("could not create a segment file in '{}'", dir.string()));
}

fs::path backing_path(const std::string& name, const Location& location) {
  return location.filesystem() / name;
}

// True when a live process created the named segment and still holds it (its creator lock is taken).
bool creator_alive(const std::string& name, const Location& location) {
  int fd = ::open(backing_path(name, location).c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);  // also releases our lock if we got it
  return held;
}

// Header and size of a named segment, if it has a readable header.
bool read_header(const std::string& name, const Location& location, SegmentHeader* out, uint64_t* size) {
  const fs::path path = backing_path(name, location);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st {};
  const bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                  ::pread(fd, out, sizeof(*out), 0) == static_cast<ssize_t>(sizeof(*out));
  *size = ok ? static_cast<uint64_t>(st.st_size) : 0;
  ::close(fd);
  return ok && out->magic == kSegmentMagic;
}

}  // namespace

Location Location::resolve(const fs::path& dir) {
  const char* env = std::getenv("SHARDCAST_SHM_DIR");
  return Location{!dir.empty() || env == nullptr ? dir : fs::path(env)};
}

std::string Location::describe() const {
  return dir.empty() ? "/dev/shm" : dir.string();
}

Segment::Segment(std::string what, File file, std::unique_ptr<Mapping> mapping)
    : what_(std::move(what)), file_(std::move(file)), mapping_(std::move(mapping)) {
  base_ = static_cast<uint8_t*>(mapping_->region.get_address());
  data_size_ = mapping_->region.get_size() - kHeaderBytes;
}

Segment::~Segment() {
  unwatch_mapping(base_);  // before the mapping goes
}

std::shared_ptr<Segment> Segment::create(const std::string& what, uint64_t data_size, uint64_t layout_hash,
                                         const Location& location) {
  File file = create_unnamed(location.filesystem(), what);
  const uint64_t size = kHeaderBytes + data_size;
  const int rc = posix_fallocate(file.fd(), 0, static_cast<off_t>(size));
  if (rc != 0) {
    throw Error(ErrorCode::kSystem,
                fmt::format("allocating {} for {} in {} failed: {} (errno {}); it has {} free. Fix: give the "
                            "container more shared memory (docker run --shm-size=...), or put segments on disk "
                            "with --shm-dir DIR",
                            format_size(size), what, location.describe(), std::strerror(rc), rc,
                            format_size(free_bytes(location))));
  }
  auto mapping = map(file.fd(), Access::kReadWrite, what);
  auto segment = std::shared_ptr<Segment>(new Segment(what, std::move(file), std::move(mapping)));
  SegmentHeader& h = segment->header();
  std::memset(&h, 0, sizeof(h));
  h.magic = kSegmentMagic;
  h.version = kSegmentVersion;
  h.header_size = static_cast<uint32_t>(kHeaderBytes);
  h.data_size = data_size;
  h.layout_hash = layout_hash;
  h.creator_pid = getpid();
  __atomic_store_n(&h.state, static_cast<uint32_t>(SegmentState::kFilling), __ATOMIC_RELEASE);
  return segment;
}

std::shared_ptr<Segment> Segment::attach(File fd, uint64_t layout_hash, Access access, const std::string& what) {
  struct stat st {};
  if (::fstat(fd.fd(), &st) != 0) throw_system_error("fstat", what, errno);
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < kHeaderBytes) {
    throw Error(ErrorCode::kSystem,
                fmt::format("{} is {} bytes, smaller than its header", what, static_cast<uint64_t>(st.st_size)));
  }
  auto mapping = map(fd.fd(), access, what);
  // The mapping alone holds the memory: the descriptor closes here (only a creator hands one out).
  auto segment = std::shared_ptr<Segment>(new Segment(what, File(), std::move(mapping)));
  const SegmentHeader& h = segment->header();
  if (h.magic != kSegmentMagic || h.version != kSegmentVersion || h.header_size != kHeaderBytes) {
    throw Error(ErrorCode::kSystem, fmt::format("{} is not a shardcast segment of version {} (magic {:#x}, version {})",
                                                what, kSegmentVersion, h.magic, h.version));
  }
  if (h.data_size != segment->data_size()) {
    throw Error(ErrorCode::kSystem, fmt::format("{}: header says {} data bytes but {} are mapped", what, h.data_size,
                                                segment->data_size()));
  }
  if (h.layout_hash != layout_hash) {
    throw Error(ErrorCode::kSystem, fmt::format("{} holds layout {:#x}, this rank planned {:#x}: ranks disagree about "
                                                "the checkpoint or options",
                                                what, h.layout_hash, layout_hash));
  }
  if (access == Access::kReadOnly)
    watch_mapping(segment->base_, segment->data_size_ + kHeaderBytes, what, MappingKind::kReadOnlySegment);
  return segment;
}

void unlink_named(const std::string& name, const Location& location) {
  if (location.dir.empty()) {
    bip::shared_memory_object::remove(name.c_str());
    return;
  }
  if (::unlink((location.dir / name).c_str()) != 0 && errno != ENOENT) {
    throw_system_error("unlink", (location.dir / name).string(), errno);
  }
}

SegmentState Segment::state() const {
  return static_cast<SegmentState>(__atomic_load_n(&header().state, __ATOMIC_ACQUIRE));
}

void Segment::set_state(SegmentState state) {
  __atomic_store_n(&header().state, static_cast<uint32_t>(state), __ATOMIC_RELEASE);
}

uint64_t free_bytes(const Location& location) {
  struct statvfs st {};
  const fs::path dir = location.filesystem();
  if (statvfs(dir.c_str(), &st) != 0) throw_system_error("statvfs", dir.string(), errno);
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

void check_free_space(const Location& location, uint64_t needed, const std::string& what) {
  const uint64_t available = free_bytes(location);
  if (needed <= available) return;
  const uint64_t kept = kept_bytes(location);
  const std::string kept_note =
      kept == 0 ? ""
                : fmt::format(
                      " (kept copies of earlier jobs hold {}: `shardcast ls` lists them, `shardcast gc --kept` "
                      "removes them)",
                      format_size(kept));
  throw Error(ErrorCode::kSystem,
              fmt::format("not enough shared memory for {}: need {} ({} bytes), {} has {} ({} bytes) free{}. Fix: "
                          "give the container more (docker run --shm-size={}), or put segments in a directory on a "
                          "local disk with --shm-dir DIR (SHARDCAST_SHM_DIR)",
                          what, format_size(needed), needed, location.describe(), format_size(available), available,
                          kept_note, (needed + (1ull << 30) - 1) >> 30 << 30));
}

std::vector<Orphan> find_orphans(const Location& location) {
  std::vector<Orphan> orphans;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(location.filesystem(), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kNamePrefix, 0) != 0 || !entry.is_regular_file(ec)) continue;  // kept copies are a directory
    if (creator_alive(name, location)) continue;
    SegmentHeader h{};
    uint64_t size = 0;
    bool has_header = read_header(name, location, &h, &size);
    // Between creating the name and taking its lock a creator holds no lock yet; its segment is empty then. An empty
    // one is an orphan only once it has stayed empty far longer than that moment.
    const auto age = fs::file_time_type::clock::now() - fs::last_write_time(entry.path(), ec);
    if (!has_header && size == 0 && (ec || age < std::chrono::minutes(1))) continue;
    std::string state = !has_header                                              ? "no header"
                        : h.state == static_cast<uint32_t>(SegmentState::kReady) ? "ready"
                                                                                 : "filling";
    orphans.push_back({name, has_header ? h.creator_pid : 0, size, state});
  }
  return orphans;
}

std::vector<Orphan> remove_orphans(const Location& location) {
  std::vector<Orphan> removed = find_orphans(location);
  for (const Orphan& o : removed) unlink_named(o.name, location);
  return removed;
}

}  // namespace shardcast::shm
