// The node leader's side of a kept copy (shm/kept_copies.h) during one load: reuse this node's copy from an earlier
// job, or keep what this load stages. A kept copy is a cache: whatever goes wrong with it (a copy that does not match,
// no room to name one, a lock held too long) makes the load stage as usual and say why, never fail.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/catalog.h"
#include "coordinator/plan.h"
#include "shm/kept_copies.h"
#include "shm/segment.h"

namespace shardcast {

enum class KeptState : char {
  kNone = 'N',    // no keep time, and no copy to reuse
  kReused = 'R',  // attached to this node's copy from an earlier job: nothing staged or read
  kKept = 'K',    // staged, and kept for keep_for after the load
  kNotKept = 'X'  // a keep time, but the copy could not be kept (KeptUse::note says why)
};
std::string_view kept_state_name(KeptState state);  // "none", "reused", "kept", "not kept"

struct KeptUse {
  KeptState state = KeptState::kNone;
  std::string key;
  std::string note;          // why a copy was not kept or not reused, when it was not
  int64_t expires_unix = 0;  // reused or kept: until when it stays
};

class KeptLoad {
 public:
  // Looks for this node's copy of the `staged` segments (plan indices), under the key's lock: waiting up to `wait` for
  // another job staging the same copy now. A copy found is reused (its descriptors are held; the lock goes at once, so
  // that jobs reusing one copy do not wait for each other). With a keep time and no copy, the lock is held until
  // finish(), so a job starting meanwhile waits for this copy instead of staging its own.
  KeptLoad(const shm::Location& location, const Catalog& catalog, const Plan& plan, const LoadRequest& request,
           const std::vector<size_t>& staged, std::chrono::seconds keep_for, std::chrono::milliseconds wait,
           const std::string& job_id);

  const KeptUse& use() const { return use_; }
  bool reused() const { return use_.state == KeptState::kReused; }
  // Reused: a read-only descriptor of the kept segment with plan index `segment`.
  File descriptor(size_t segment) const;
  // After the load: kept, names `segments` (the staged ones, by plan index, each ready) as the copy; reused with a
  // keep time, moves its expiry on. Then lets the lock go.
  void finish(const std::vector<std::shared_ptr<shm::Segment>>& segments);

 private:
  void not_kept(const std::string& why);

  shm::KeptStore store_;
  std::vector<size_t> staged_;
  std::chrono::seconds keep_for_;
  std::string job_id_, checkpoint_, request_;
  uint64_t bytes_ = 0;
  std::optional<shm::KeptStore::Lock> lock_;
  std::optional<shm::KeptCopy> copy_;
  KeptUse use_;
};

}  // namespace shardcast
