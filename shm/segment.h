// Node-shared memory segments that never carry a name: the node leader creates each one as an unnamed file
// (O_TMPFILE) in /dev/shm (or in a directory, on hosts with a small /dev/shm), and local ranks receive its descriptor
// over the node link (node_link.h). The memory is freed when the last process holding a descriptor or a mapping exits,
// however it exits: nothing can be left behind for `shardcast gc`. The one exception is opt-in: kept copies
// (kept_copies.h) give a finished load's segments a name so that the next job can attach to them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/file.h"

namespace shardcast::shm {

inline constexpr char kNamePrefix[] = "shardcast-";  // of named segments (orphans below)

// Where segments live. An empty dir means POSIX shared memory (shm_open, /dev/shm on Linux).
struct Location {
  std::filesystem::path dir;

  std::filesystem::path filesystem() const { return dir.empty() ? std::filesystem::path("/dev/shm") : dir; }
  std::string describe() const;
  // Where a load puts segments: `dir` (--shm-dir), else $SHARDCAST_SHM_DIR, else POSIX shared memory.
  static Location resolve(const std::filesystem::path& dir);
};

enum class Access {
  kReadOnly,     // shared, read-only mapping: zero-copy views
  kReadWrite,    // the leader and fillers
  kCopyOnWrite,  // private mapping: a rank's writes stay in that rank
};

// Informational: ranks synchronise through the communicator, not by polling this.
enum class SegmentState : uint32_t { kFilling = 1, kReady = 2 };

// The first page of every segment. Trivially copyable and checked on attach, as tensorpipe's ShmSegment.
struct SegmentHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t header_size;
  uint64_t data_size;
  uint64_t layout_hash;  // of what the segment holds (PlannedSegment::layout_hash); attach refuses another
  int32_t creator_pid;
  uint32_t state;  // SegmentState, accessed atomically
};
static_assert(sizeof(SegmentHeader) <= 4096, "the header must fit the first page");

inline constexpr uint64_t kSegmentMagic = 0x5453414344524853ull;  // "SHRDCAST" little-endian
inline constexpr uint32_t kSegmentVersion = 3;  // 2: unnamed, shared by descriptor; 3: per-segment hash, kept copies
inline constexpr uint64_t kHeaderBytes = 4096;  // data starts page-aligned

class Segment {
 public:
  // Creates an unnamed segment of header + data_size bytes, mode 0600, every byte allocated now (so a full
  // filesystem fails here, not as SIGBUS later). `what` names it in messages and in write faults.
  static std::shared_ptr<Segment> create(const std::string& what, uint64_t data_size, uint64_t layout_hash,
                                         const Location& location);
  // Maps the segment behind `fd` (from another process's create()); checks magic, version, size and layout_hash.
  static std::shared_ptr<Segment> attach(File fd, uint64_t layout_hash, Access access, const std::string& what);

  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const std::string& what() const { return what_; }
  // The creator's: a descriptor to hand to local ranks and to map again. (An attached segment keeps none.)
  File descriptor() const { return file_.duplicate(); }
  uint8_t* data() const { return base_ + kHeaderBytes; }
  uint64_t data_size() const { return data_size_; }
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }

  SegmentState state() const;
  void set_state(SegmentState state);

  struct Mapping;  // the Boost mapping, defined in segment.cpp

 private:
  Segment(std::string what, File file, std::unique_ptr<Mapping> mapping);

  std::string what_;
  File file_;
  std::unique_ptr<Mapping> mapping_;
  uint8_t* base_ = nullptr;
  uint64_t data_size_ = 0;
};

// Bytes free for new segments at `location` (statvfs f_bavail).
uint64_t free_bytes(const Location& location);

// Throws kSystem before anything is allocated when `needed` bytes do not fit, with both numbers and the fixes.
void check_free_space(const Location& location, uint64_t needed, const std::string& what);

// Named segments: earlier versions named their segments "shardcast-*" while staging, and a job killed then left
// them behind. Those whose creator lock nobody holds (the creating process is gone, whatever its PID namespace) are
// what `shardcast gc` and shardcast-run remove.
struct Orphan {
  std::string name;
  int creator_pid = 0;
  uint64_t bytes = 0;
  std::string state;  // "filling" (the job died while staging), "ready", or "no header"
};
std::vector<Orphan> find_orphans(const Location& location);
std::vector<Orphan> remove_orphans(const Location& location);
void unlink_named(const std::string& name, const Location& location);

}  // namespace shardcast::shm
