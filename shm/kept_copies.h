// Kept copies: a node's staged segments that outlive the job that staged them (opt-in, LoadOptions::keep_for), so that
// the next job asking for the same bytes attaches to them and reads nothing. The only segments that carry a name, all
// in one directory per user that no one else can enter:
//   <location>/shardcast-kept-<uid>/          0700, owned by the user
//     <key>/manifest.json, <key>/s<i>         a complete copy, renamed into place whole; segment files 0600
//     <key>.lock                              flock'd by the process deciding about, or staging, that key
//     <key>.publish-<pid>/                    being linked into place; an orphan once the key's lock is free
// Nothing runs in the background: an expired copy goes at the next load or shardcast-run start on the node, or with
// `shardcast gc`. This layer knows keys, files and the manifest; what a key stands for is coordinator/kept_key.h's.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/file.h"
#include "shm/segment.h"

namespace shardcast::shm {

struct KeptManifest {
  std::string key;
  std::string checkpoint;          // for people: the checkpoint's path
  std::string request;             // for people: "291 tensors, dtype bf16"
  std::vector<uint32_t> segments;  // plan segment indices: the files s<i>
  uint64_t bytes = 0;              // the segments' data bytes
  int64_t created_unix = 0;
  int64_t expires_unix = 0;  // each job that reuses the copy with a keep time moves this on
  int64_t keep_seconds = 0;
};

// What a job expects of one segment of a copy: plan index, data bytes, PlannedSegment::layout_hash.
struct KeptSegment {
  uint32_t index = 0;
  uint64_t data_size = 0;
  uint64_t layout_hash = 0;
};

// A usable copy: its manifest and a read-only descriptor of each segment file, in manifest.segments order.
struct KeptCopy {
  KeptManifest manifest;
  std::vector<File> files;
};

// What `shardcast ls` and `gc` show of one entry.
struct KeptCopyInfo {
  std::string name;        // the key, or the leftover's file name
  KeptManifest manifest;   // empty key when unreadable
  uint64_t allocated = 0;  // bytes of memory it holds
  int users = 0;           // processes that map its segments now
  bool expired = false;
  std::string problem;  // an orphan's: "no readable manifest: ...", "left while being published"; empty otherwise
};

class KeptStore {
 public:
  explicit KeptStore(const Location& location);
  const std::filesystem::path& dir() const { return dir_; }

  // The right to decide about `key`: held while a job looks its copy up, stages and publishes it, so that two jobs
  // starting at once on a node stage once (the second finds the first's copy).
  class Lock {
   public:
    Lock(Lock&&) = default;
    Lock& operator=(Lock&&) = default;
    // Lets go; a key left without a copy (a failed load's) takes its lock file with it.
    ~Lock();
    const std::string& key() const { return key_; }

   private:
    friend class KeptStore;
    Lock(std::filesystem::path dir, std::string key, File file)
        : dir_(std::move(dir)), key_(std::move(key)), file_(std::move(file)) {}
    std::filesystem::path dir_;
    std::string key_;
    File file_;  // flock(LOCK_EX) held; released when this closes
  };
  // Waits up to `wait` (0: one try) for another job; not for a process of the same `job` (another node of the job
  // sharing this directory: waiting would hold up the very job that holds the lock). nullopt when another process
  // holds it still; *why names it. Throws kSystem when the directory is not this user's alone (someone else made it,
  // or it is open to others).
  std::optional<Lock> lock(const std::string& key, std::chrono::milliseconds wait, const std::string& job,
                           std::string* why);

  // Is there an entry for `key` at all (cheap: a job without a keep time looks only when there is)?
  bool has(const std::string& key) const;
  // The complete, unexpired copy of `key`, or nullopt with *why set when an entry is there but unusable (expired,
  // not private, incomplete, other segments than `expected`). Needs no lock: a copy is renamed into place whole.
  std::optional<KeptCopy> find(const std::string& key, const std::vector<KeptSegment>& expected, int64_t now_unix,
                               std::string* why) const;
  // Names `segments` (plan index, descriptor of a ready unnamed segment file) as the lock's key's copy, replacing an
  // unusable one. Throws kSystem when they cannot be linked (a file system without O_TMPFILE, no /proc).
  void publish(const Lock& lock, const KeptManifest& manifest, const std::vector<std::pair<uint32_t, int>>& segments);
  // Moves the copy's expiry on (a reuse with a keep time).
  void extend(const Lock& lock, int64_t expires_unix);

  // Every entry of this user's directory (empty when there is none); `count_users` scans /proc for mappings.
  std::vector<KeptCopyInfo> list(int64_t now_unix, bool count_users = true) const;
  // Removes expired copies and orphans, or every copy with `all`; an entry whose lock a job holds now stays. Returns
  // what went.
  std::vector<KeptCopyInfo> collect(int64_t now_unix, bool all);

 private:
  void ensure_private_dir() const;
  std::filesystem::path dir_;
};

int64_t unix_now();

// The user's expired kept copies and orphans at `location`, removed (a load's and shardcast-run's start). Never
// throws: a store this user cannot use is reported where a copy would be kept or reused, and must not fail a start.
std::vector<KeptCopyInfo> remove_expired_kept_copies(const Location& location);

// Bytes the user's kept copies hold at `location` (0 when there are none or they cannot be read): for messages about
// free space.
uint64_t kept_bytes(const Location& location);

}  // namespace shardcast::shm
