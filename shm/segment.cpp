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
#include <cstring>

#include <fmt/format.h>
#include <boost/interprocess/file_mapping.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "core/error.h"
#include "core/size.h"
#include "shm/write_fault.h"

namespace shardcast::shm {
namespace bip = boost::interprocess;
namespace fs = std::filesystem;

struct Segment::Mapping {
  bip::mapped_region region;
  // The creator keeps the backing file open with a shared flock for as long as it owns the name: the kernel drops the
  // lock when the creator exits or crashes, so "nobody holds the lock" means orphaned, across PID namespaces too
  // (containers sharing /dev/shm), where a pid says nothing.
  int creator_lock = -1;
  ~Mapping() {
    if (creator_lock >= 0) ::close(creator_lock);
  }
};

namespace {

bool posix(const Location& location) {
  return location.dir.empty();
}

bip::mode_t boost_mode(Access access) {
  switch (access) {
    case Access::kReadOnly: return bip::read_only;
    case Access::kReadWrite: return bip::read_write;
    case Access::kCopyOnWrite: return bip::copy_on_write;
  }
  return bip::read_only;
}

[[noreturn]] void throw_boost(const bip::interprocess_exception& e, std::string_view call, const std::string& subject) {
  int native = e.get_native_error();
  if (native != 0) throw_system_error(call, subject, native);
  throw Error(ErrorCode::kSystem, fmt::format("{}('{}') failed: {}", call, subject, e.what()));
}

fs::path backing_path(const std::string& name, const Location& location) {
  return location.filesystem() / name;
}

// Takes the creator's shared lock on a duplicate of fd (which the caller may close).
int hold_creator_lock(int fd, const std::string& where) {
  int lock = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (lock < 0) throw_system_error("dup", where, errno);
  if (::flock(lock, LOCK_SH) != 0) {
    int err = errno;
    ::close(lock);
    throw_system_error("flock", where, err);
  }
  return lock;
}

// True when a live process created the segment and still holds it (its creator lock is taken).
bool creator_alive(const std::string& name, const Location& location) {
  int fd = ::open(backing_path(name, location).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);  // also releases our lock if we got it
  return held;
}

// Opens the segment's backing object (shm or file) and maps [0, size) with `access`.
std::unique_ptr<Segment::Mapping> map_existing(const std::string& name, const Location& location, Access access,
                                               uint64_t* size) {
  const bool writable = access == Access::kReadWrite;
  try {
    if (posix(location)) {
      bip::shared_memory_object object(bip::open_only, name.c_str(), writable ? bip::read_write : bip::read_only);
      bip::offset_t length = 0;
      object.get_size(length);
      *size = static_cast<uint64_t>(length);
      if (*size < kHeaderBytes) return nullptr;
      return std::unique_ptr<Segment::Mapping>(new Segment::Mapping{bip::mapped_region(object, boost_mode(access))});
    }
    const fs::path path = location.dir / name;
    *size = fs::file_size(path);
    if (*size < kHeaderBytes) return nullptr;
    bip::file_mapping file(path.c_str(), writable ? bip::read_write : bip::read_only);
    return std::unique_ptr<Segment::Mapping>(new Segment::Mapping{bip::mapped_region(file, boost_mode(access))});
  } catch (const bip::interprocess_exception& e) {
    throw_boost(e, "attach segment", location.describe() + "/" + name);
  } catch (const fs::filesystem_error& e) {
    throw_system_error("attach segment", (location.dir / name).string(), e.code().value());
  }
}

// Creates the backing object exclusively with mode 0600 and allocates every byte; returns an fd-less mapping.
std::unique_ptr<Segment::Mapping> create_backing(const std::string& name, const Location& location, uint64_t size) {
  const std::string where = location.describe() + "/" + name;
  auto allocate = [&](int fd) {
    int rc = posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (rc != 0) {
      throw Error(ErrorCode::kSystem,
                  fmt::format("allocating {} for segment '{}' failed: {} (errno {}); {} has {} free. Fix: give the "
                              "container more shared memory (docker run --shm-size=...), or put segments on disk "
                              "with --shm-dir DIR",
                              format_size(size), where, std::strerror(rc), rc, location.filesystem().string(),
                              format_size(free_bytes(location))));
    }
  };
  if (posix(location)) {
    bip::permissions permissions;
    permissions.set_permissions(0600);
    bip::shared_memory_object object(bip::create_only, name.c_str(), bip::read_write, permissions);
    try {
      const int lock = hold_creator_lock(object.get_mapping_handle().handle, where);
      auto mapping = std::unique_ptr<Segment::Mapping>(new Segment::Mapping{{}, lock});
      allocate(object.get_mapping_handle().handle);
      mapping->region = bip::mapped_region(object, bip::read_write);
      return mapping;
    } catch (...) {
      bip::shared_memory_object::remove(name.c_str());
      throw;
    }
  }
  const fs::path path = location.dir / name;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw_system_error("open(O_CREAT|O_EXCL)", path.string(), errno);
  try {
    auto mapping = std::unique_ptr<Segment::Mapping>(new Segment::Mapping{{}, hold_creator_lock(fd, where)});
    allocate(fd);
    ::close(fd);
    bip::file_mapping file(path.c_str(), bip::read_write);
    mapping->region = bip::mapped_region(file, bip::read_write);
    return mapping;
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
}

// Header of an existing segment, if it has a readable one.
bool read_header(const std::string& name, const Location& location, SegmentHeader* out, uint64_t* size) {
  try {
    auto mapping = map_existing(name, location, Access::kReadOnly, size);
    if (!mapping) return false;
    std::memcpy(out, mapping->region.get_address(), sizeof(SegmentHeader));
    return out->magic == kSegmentMagic;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::string Location::describe() const {
  return dir.empty() ? "/dev/shm" : dir.string();
}

Segment::Segment(std::string name, Location location, std::unique_ptr<Mapping> mapping, bool owns_name)
    : name_(std::move(name)), location_(std::move(location)), mapping_(std::move(mapping)), owns_name_(owns_name) {
  base_ = static_cast<uint8_t*>(mapping_->region.get_address());
  data_size_ = mapping_->region.get_size() - kHeaderBytes;
}

Segment::~Segment() {
  unwatch_read_only(base_);  // before the mapping goes
  if (owns_name_) {
    try {
      unlink(name_, location_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shardcast: warning: could not remove segment '%s': %s\n", name_.c_str(), e.what());
    }
  }
}

std::shared_ptr<Segment> Segment::create(const std::string& name, uint64_t data_size, uint64_t layout_hash,
                                         const Location& location) {
  if (fs::exists(backing_path(name, location))) {
    if (creator_alive(name, location)) {
      SegmentHeader existing{};
      uint64_t size = 0;
      read_header(name, location, &existing, &size);
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("segment '{}/{}' already exists and its creator (pid {}) is alive: is another job using "
                              "the same job id?",
                              location.describe(), name, existing.creator_pid));
    }
    unlink(name, location);  // an orphan of a crashed run
  }
  std::unique_ptr<Mapping> mapping;
  try {
    mapping = create_backing(name, location, kHeaderBytes + data_size);
  } catch (const bip::interprocess_exception& e) {
    throw_boost(e, "create segment", location.describe() + "/" + name);
  }
  auto segment = std::shared_ptr<Segment>(new Segment(name, location, std::move(mapping), /*owns_name=*/true));
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

std::shared_ptr<Segment> Segment::attach(const std::string& name, uint64_t layout_hash, Access access,
                                         const Location& location) {
  uint64_t size = 0;
  auto mapping = map_existing(name, location, access, &size);
  const std::string where = location.describe() + "/" + name;
  if (!mapping)
    throw Error(ErrorCode::kSystem, fmt::format("segment '{}' is {} bytes, smaller than its header", where, size));
  auto segment = std::shared_ptr<Segment>(new Segment(name, location, std::move(mapping), /*owns_name=*/false));
  const SegmentHeader& h = segment->header();
  if (h.magic != kSegmentMagic || h.version != kSegmentVersion || h.header_size != kHeaderBytes) {
    throw Error(ErrorCode::kSystem, fmt::format("segment '{}' is not a shardcast segment of version {} (magic {:#x}, "
                                                "version {})",
                                                where, kSegmentVersion, h.magic, h.version));
  }
  if (h.data_size != segment->data_size()) {
    throw Error(ErrorCode::kSystem, fmt::format("segment '{}' header says {} data bytes but {} are mapped", where,
                                                h.data_size, segment->data_size()));
  }
  if (h.layout_hash != layout_hash) {
    throw Error(ErrorCode::kSystem, fmt::format("segment '{}' holds layout {:#x}, this rank planned {:#x}: ranks "
                                                "disagree about the checkpoint or options",
                                                where, h.layout_hash, layout_hash));
  }
  if (access == Access::kReadOnly) watch_read_only(segment->base_, segment->data_size_ + kHeaderBytes, name);
  return segment;
}

void Segment::unlink(const std::string& name, const Location& location) {
  if (posix(location)) {
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

void Segment::release_name() {
  if (!owns_name_) return;
  unlink(name_, location_);
  owns_name_ = false;
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
  throw Error(ErrorCode::kSystem,
              fmt::format("not enough shared memory for {}: need {} ({} bytes), {} has {} ({} bytes) free. Fix: give "
                          "the container more (docker run --shm-size={}), or put segments in a directory on a local "
                          "disk with --shm-dir DIR (SHARDCAST_SHM_DIR)",
                          what, format_size(needed), needed, location.describe(), format_size(available), available,
                          (needed + (1ull << 30) - 1) >> 30 << 30));
}

std::vector<Orphan> find_orphans(const Location& location) {
  std::vector<Orphan> orphans;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(location.filesystem(), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kNamePrefix, 0) != 0) continue;
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
  for (const Orphan& o : removed) Segment::unlink(o.name, location);
  return removed;
}

}  // namespace shardcast::shm
