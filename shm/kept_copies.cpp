#include "shm/kept_copies.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace shardcast::shm {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr char kManifest[] = "manifest.json";
constexpr char kLockSuffix[] = ".lock";
constexpr char kPublishInfix[] = ".publish-";

std::string segment_file(uint32_t index) {
  return fmt::format("s{}", index);
}

// A file or directory of the store may be used only if it is this user's and no one else's.
std::string not_private(const struct stat& st, const fs::path& path, bool directory) {
  if (directory ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
    return fmt::format("'{}' is not a {}", path.string(), directory ? "directory" : "regular file");
  }
  if (st.st_uid != geteuid()) {
    return fmt::format("'{}' belongs to uid {}, not to this user (uid {})", path.string(), st.st_uid, geteuid());
  }
  if ((st.st_mode & 077) != 0) {
    return fmt::format("'{}' has mode {:o}: others may use it", path.string(), st.st_mode & 0777);
  }
  return "";
}

json manifest_json(const KeptManifest& m) {
  return {{"key", m.key},
          {"checkpoint", m.checkpoint},
          {"request", m.request},
          {"segments", m.segments},
          {"bytes", m.bytes},
          {"created_unix", m.created_unix},
          {"expires_unix", m.expires_unix},
          {"keep_seconds", m.keep_seconds}};
}

KeptManifest read_manifest(const fs::path& dir) {
  const fs::path path = dir / kManifest;
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw_system_error("open", path.string(), errno);
  File file = File::adopt(fd, path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_system_error("fstat", path.string(), errno);
  const std::string problem = not_private(st, path, false);
  if (!problem.empty()) throw Error(ErrorCode::kSystem, problem);
  std::string text(static_cast<size_t>(st.st_size), '\0');
  file.read_exact_at(text.data(), text.size(), 0);
  try {
    const json j = json::parse(text);
    KeptManifest m;
    m.key = j.at("key").get<std::string>();
    m.checkpoint = j.at("checkpoint").get<std::string>();
    m.request = j.at("request").get<std::string>();
    m.segments = j.at("segments").get<std::vector<uint32_t>>();
    m.bytes = j.at("bytes").get<uint64_t>();
    m.created_unix = j.at("created_unix").get<int64_t>();
    m.expires_unix = j.at("expires_unix").get<int64_t>();
    m.keep_seconds = j.at("keep_seconds").get<int64_t>();
    return m;
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kSystem, fmt::format("'{}' is not a kept copy's manifest: {}", path.string(), e.what()));
  }
}

// Written beside, then renamed over: a reader sees the old manifest or the new one, never half of one.
void write_manifest(const fs::path& dir, const KeptManifest& m) {
  const fs::path temporary = dir / fmt::format("{}.{}", kManifest, getpid());
  ::unlink(temporary.c_str());
  File file = File::create_exclusive(temporary, 0600);
  const std::string text = manifest_json(m).dump(2) + "\n";
  file.write_all(text.data(), text.size());
  if (::rename(temporary.c_str(), (dir / kManifest).c_str()) != 0) {
    const int error = errno;
    ::unlink(temporary.c_str());
    throw_system_error("rename", temporary.string(), error);
  }
}

// (device, inode) of every file mapped by each process we may look at: who uses a kept copy now. A segment mapped
// before it was named shows as "/dev/shm/#123 (deleted)" in maps, so paths would miss it; inodes do not.
std::map<std::pair<dev_t, ino_t>, std::set<pid_t>> mapped_files() {
  std::map<std::pair<dev_t, ino_t>, std::set<pid_t>> users;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream maps(entry.path() / "maps");
    std::string line;
    while (std::getline(maps, line)) {
      unsigned major_number = 0, minor_number = 0;
      unsigned long long inode = 0;
      if (std::sscanf(line.c_str(), "%*s %*s %*s %x:%x %llu", &major_number, &minor_number, &inode) != 3) continue;
      if (inode == 0) continue;
      users[{makedev(major_number, minor_number), static_cast<ino_t>(inode)}].insert(std::stoi(name));
    }
  }
  return users;
}

std::string key_of(const std::string& name) {
  return name.substr(0, name.find('.'));
}

}  // namespace

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

KeptStore::KeptStore(const Location& location)
    : dir_(location.filesystem() / fmt::format("shardcast-kept-{}", geteuid())) {}

void KeptStore::ensure_private_dir() const {
  if (::mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) throw_system_error("mkdir", dir_.string(), errno);
  struct stat st {};
  if (::lstat(dir_.c_str(), &st) != 0) throw_system_error("lstat", dir_.string(), errno);
  const std::string problem = not_private(st, dir_, true);
  if (!problem.empty()) {
    throw Error(ErrorCode::kSystem,
                fmt::format("{}; kept copies must be this user's alone, so none is made or used here. Fix: have its "
                            "owner (or root) remove it, or keep copies elsewhere with --shm-dir",
                            problem));
  }
}

std::optional<KeptStore::Lock> KeptStore::lock(const std::string& key, std::chrono::milliseconds wait,
                                               const std::string& job, std::string* why) {
  ensure_private_dir();
  const fs::path path = dir_ / (key + kLockSuffix);
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (true) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {  // gc removed the store as it went empty
      ensure_private_dir();
      continue;
    }
    if (fd < 0) throw_system_error("open", path.string(), errno);
    File file = File::adopt(fd, path);
    while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) throw_system_error("flock", path.string(), errno);
      char text[256] = {};
      const ssize_t n = ::pread(fd, text, sizeof(text) - 1, 0);
      const std::string holder = n > 0 ? std::string(text, static_cast<size_t>(n)) : "?";
      const size_t space = holder.find(' ');
      if (space != std::string::npos && holder.substr(space + 1) == job) {
        *why =
            fmt::format("process {} of this job keeps it (its nodes share {})", holder.substr(0, space), dir_.string());
        return std::nullopt;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        *why = fmt::format("process {} was still staging or publishing it after {:.1f} s",
                           holder.substr(0, holder.find(' ')), wait.count() / 1000.0);
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // `gc` may have removed the lock file between our open and our flock: then our lock guards nothing; take it anew.
    struct stat held {};
    struct stat named {};
    if (::fstat(fd, &held) != 0 || ::lstat(path.c_str(), &named) != 0 || held.st_ino != named.st_ino) continue;
    const std::string holder = fmt::format("{} {}", getpid(), job);
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, holder.data(), holder.size(), 0) < 0) {
      throw_system_error("write", path.string(), errno);
    }
    return Lock(dir_, key, std::move(file));
  }
}

KeptStore::Lock::~Lock() {
  if (file_.fd() < 0) return;  // moved from
  // Unlinked while held: a process waiting for it then finds the name gone (or another inode) and takes it anew. Only
  // our own inode: after gc unlinked ours, the name may be another process's lock.
  const fs::path path = dir_ / (key_ + kLockSuffix);
  struct stat copy {};
  struct stat held {};
  struct stat named {};
  if (::lstat((dir_ / key_).c_str(), &copy) != 0 && ::fstat(file_.fd(), &held) == 0 &&
      ::lstat(path.c_str(), &named) == 0 && held.st_ino == named.st_ino) {
    ::unlink(path.c_str());
  }
  file_ = File();
}

bool KeptStore::has(const std::string& key) const {
  struct stat st {};
  return ::lstat((dir_ / key).c_str(), &st) == 0;
}

std::optional<KeptCopy> KeptStore::find(const std::string& key, const std::vector<KeptSegment>& expected,
                                        int64_t now_unix, std::string* why) const {
  const fs::path dir = dir_ / key;
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return std::nullopt;
  auto unusable = [&](const std::string& reason) {
    *why = fmt::format("kept copy '{}' is not usable: {}", dir.string(), reason);
    return std::nullopt;
  };
  std::string problem = not_private(st, dir, true);
  if (!problem.empty()) return unusable(problem);
  KeptCopy copy;
  try {
    copy.manifest = read_manifest(dir);
  } catch (const Error& e) {
    return unusable(e.what());
  }
  if (copy.manifest.key != key) return unusable(fmt::format("its manifest names key {}", copy.manifest.key));
  if (copy.manifest.expires_unix <= now_unix) {
    return unusable(fmt::format("it expired {} s ago", now_unix - copy.manifest.expires_unix));
  }
  if (copy.manifest.segments.size() != expected.size()) {
    return unusable(
        fmt::format("it holds {} segments, this load stages {}", copy.manifest.segments.size(), expected.size()));
  }
  for (size_t k = 0; k < expected.size(); ++k) {
    const fs::path path = dir / segment_file(expected[k].index);
    if (copy.manifest.segments[k] != expected[k].index) return unusable("its segments are not this load's");
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return unusable(fmt::format("'{}': {}", path.string(), std::strerror(errno)));
    File file = File::adopt(fd, path);
    SegmentHeader h{};
    if (::fstat(fd, &st) != 0) return unusable(fmt::format("fstat '{}': {}", path.string(), std::strerror(errno)));
    problem = not_private(st, path, false);
    if (!problem.empty()) return unusable(problem);
    if (::pread(fd, &h, sizeof(h), 0) != static_cast<ssize_t>(sizeof(h)) || h.magic != kSegmentMagic ||
        h.version != kSegmentVersion || h.data_size != expected[k].data_size ||
        h.layout_hash != expected[k].layout_hash || h.state != static_cast<uint32_t>(SegmentState::kReady) ||
        static_cast<uint64_t>(st.st_size) != kHeaderBytes + expected[k].data_size) {
      return unusable(fmt::format("'{}' is not the ready segment this load expects", path.string()));
    }
    copy.files.push_back(std::move(file));
  }
  return copy;
}

void KeptStore::publish(const Lock& lock, const KeptManifest& manifest,
                        const std::vector<std::pair<uint32_t, int>>& segments) {
  const fs::path staging = dir_ / fmt::format("{}{}{}", lock.key(), kPublishInfix, getpid());
  std::error_code ec;
  fs::remove_all(staging, ec);
  if (::mkdir(staging.c_str(), 0700) != 0) throw_system_error("mkdir", staging.string(), errno);
  try {
    for (const auto& [index, fd] : segments) {
      // An O_TMPFILE file takes a name through /proc (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
      const std::string source = fmt::format("/proc/self/fd/{}", fd);
      const fs::path target = staging / segment_file(index);
      if (::linkat(AT_FDCWD, source.c_str(), AT_FDCWD, target.c_str(), AT_SYMLINK_FOLLOW) != 0) {
        throw_system_error("linkat", target.string(), errno);
      }
    }
    write_manifest(staging, manifest);
    const fs::path final_dir = dir_ / lock.key();
    fs::remove_all(final_dir, ec);  // an unusable copy of this key (we hold its lock)
    if (::rename(staging.c_str(), final_dir.c_str()) != 0) throw_system_error("rename", staging.string(), errno);
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }
}

void KeptStore::extend(const Lock& lock, int64_t expires_unix) {
  const fs::path dir = dir_ / lock.key();
  KeptManifest m = read_manifest(dir);
  if (expires_unix <= m.expires_unix) return;
  m.expires_unix = expires_unix;
  write_manifest(dir, m);
}

std::vector<KeptCopyInfo> KeptStore::list(int64_t now_unix, bool count_users) const {
  std::vector<KeptCopyInfo> entries;
  struct stat st {};
  if (::lstat(dir_.c_str(), &st) != 0) return entries;
  const std::string problem = not_private(st, dir_, true);
  if (!problem.empty()) throw Error(ErrorCode::kSystem, problem + "; kept copies are not used here. Fix: remove it");
  const auto users = count_users ? mapped_files() : std::map<std::pair<dev_t, ino_t>, std::set<pid_t>>{};
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory(ec) || entry.is_symlink(ec)) continue;  // lock files
    KeptCopyInfo info;
    info.name = name;
    std::set<pid_t> pids;
    for (const auto& file : fs::directory_iterator(entry.path(), ec)) {
      if (::lstat(file.path().c_str(), &st) != 0) continue;
      info.allocated += static_cast<uint64_t>(st.st_blocks) * 512;
      auto it = users.find({st.st_dev, st.st_ino});
      if (it != users.end()) pids.insert(it->second.begin(), it->second.end());
    }
    info.users = static_cast<int>(pids.size());
    if (name.find(kPublishInfix) != std::string::npos) {
      info.problem = "left while being published";
    } else {
      try {
        info.manifest = read_manifest(entry.path());
        info.expired = info.manifest.expires_unix <= now_unix;
      } catch (const Error& e) {
        info.problem = fmt::format("no readable manifest: {}", e.what());
      }
    }
    entries.push_back(std::move(info));
  }
  std::sort(entries.begin(), entries.end(), [](const KeptCopyInfo& a, const KeptCopyInfo& b) {
    return a.manifest.created_unix < b.manifest.created_unix;
  });
  return entries;
}

std::vector<KeptCopyInfo> KeptStore::collect(int64_t now_unix, bool all) {
  std::vector<KeptCopyInfo> removed;
  std::error_code ec;
  for (KeptCopyInfo& info : list(now_unix, false)) {
    if (!all && !info.expired && info.problem.empty()) continue;
    std::string busy;
    // A job holding the lock is staging, publishing or extending this key right now: not ours to take away.
    const std::optional<Lock> held = lock(key_of(info.name), std::chrono::milliseconds(0), "", &busy);
    if (!held) continue;
    if (!all && info.problem.empty()) {  // extended since it was listed?
      try {
        if (read_manifest(dir_ / info.name).expires_unix > now_unix) continue;
      } catch (const Error&) {
        // unreadable now: an orphan after all
      }
    }
    fs::remove_all(dir_ / info.name, ec);
    removed.push_back(std::move(info));
  }
  // Lock files of keys that have no copy left (their keeper died), and that no job holds: taking the lock and letting
  // it go removes the file. Then the store itself, when nothing is left in it.
  const std::string suffix = kLockSuffix;
  std::vector<std::string> keys;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      keys.push_back(key_of(name));
    }
  }
  for (const std::string& key : keys) {
    std::string busy;
    if (!has(key)) lock(key, std::chrono::milliseconds(0), "", &busy);
  }
  ::rmdir(dir_.c_str());  // only if empty
  return removed;
}

std::vector<KeptCopyInfo> remove_expired_kept_copies(const Location& location) {
  try {
    return KeptStore(location).collect(unix_now(), false);
  } catch (const Error&) {
    return {};
  }
}

uint64_t kept_bytes(const Location& location) {
  try {
    uint64_t bytes = 0;
    for (const KeptCopyInfo& info : KeptStore(location).list(unix_now(), false)) bytes += info.allocated;
    return bytes;
  } catch (const Error&) {
    return 0;
  }
}

}  // namespace shardcast::shm
