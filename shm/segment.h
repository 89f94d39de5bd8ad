// Named node-shared memory segments: created by one process (the node leader), attached by the others.
// POSIX shared memory (/dev/shm) by default, or files in a directory on hosts with a small /dev/shm.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace shardcast::shm {

inline constexpr char kNamePrefix[] = "shardcast-";

// Where segments live. An empty dir means POSIX shared memory (shm_open, /dev/shm on Linux).
struct Location {
  std::filesystem::path dir;

  std::filesystem::path filesystem() const { return dir.empty() ? std::filesystem::path("/dev/shm") : dir; }
  std::string describe() const;
};

enum class Access {
  kReadOnly,     // shared, read-only mapping: zero-copy views
  kReadWrite,    // the leader and fillers
  kCopyOnWrite,  // private mapping: a rank's writes stay in that rank
};

// Informational (shown by `shardcast gc`): ranks synchronise through the communicator, not by polling this.
enum class SegmentState : uint32_t { kFilling = 1, kReady = 2 };

// The first page of every segment. Trivially copyable and checked on attach, as tensorpipe's ShmSegment.
struct SegmentHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t header_size;
  uint64_t data_size;
  uint64_t layout_hash;  // fingerprint of what the segment holds; attach refuses a segment of another plan
  int32_t creator_pid;
  uint32_t state;  // SegmentState, accessed atomically
};
static_assert(sizeof(SegmentHeader) <= 4096, "the header must fit the first page");

inline constexpr uint64_t kSegmentMagic = 0x5453414344524853ull;  // "SHRDCAST" little-endian
inline constexpr uint32_t kSegmentVersion = 1;
inline constexpr uint64_t kHeaderBytes = 4096;  // data starts page-aligned

class Segment {
 public:
  // Creates `name` with mode 0600 and header + data_size bytes, all allocated now (so a full filesystem fails here,
  // not as SIGBUS later). The creator holds a shared flock on it while it owns the name. An existing segment of that
  // name whose creator lock is free (the creator is gone) is removed first; a held one is an error. The name is
  // unlinked again by the destructor unless release_name() ran.
  static std::shared_ptr<Segment> create(const std::string& name, uint64_t data_size, uint64_t layout_hash,
                                         const Location& location);
  // Maps an existing segment; checks magic, version, size and layout_hash.
  static std::shared_ptr<Segment> attach(const std::string& name, uint64_t layout_hash, Access access,
                                         const Location& location);
  // Removes the name (idempotent). Existing mappings stay valid; memory is freed at the last unmap.
  static void unlink(const std::string& name, const Location& location);

  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const std::string& name() const { return name_; }
  uint8_t* data() const { return base_ + kHeaderBytes; }
  uint64_t data_size() const { return data_size_; }
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }

  SegmentState state() const;
  void set_state(SegmentState state);

  // The creator gives up the name once every rank has attached; the destructor then leaves it alone.
  void release_name();

  struct Mapping;  // the Boost mapping, defined in segment.cpp

 private:
  Segment(std::string name, Location location, std::unique_ptr<Mapping> mapping, bool owns_name);

  std::string name_;
  Location location_;
  std::unique_ptr<Mapping> mapping_;
  uint8_t* base_ = nullptr;
  uint64_t data_size_ = 0;
  bool owns_name_ = false;
};

// Bytes free for new segments at `location` (statvfs f_bavail).
uint64_t free_bytes(const Location& location);

// Throws kSystem before anything is allocated when `needed` bytes do not fit, with both numbers and the fixes.
void check_free_space(const Location& location, uint64_t needed, const std::string& what);

// Segments named with kNamePrefix whose creator lock nobody holds (the creating process is gone, whatever its PID
// namespace): what `shardcast gc` and a new run remove.
struct Orphan {
  std::string name;
  int creator_pid = 0;
  uint64_t bytes = 0;
  std::string state;  // "filling" (the job died while staging), "ready", or "no header"
};
std::vector<Orphan> find_orphans(const Location& location);
std::vector<Orphan> remove_orphans(const Location& location);

}  // namespace shardcast::shm
