#include "worker/kept_load.h"

#include <algorithm>

#include <fmt/format.h>

#include "coordinator/kept_key.h"
#include "core/duration.h"
#include "core/error.h"

namespace shardcast {

std::string_view kept_state_name(KeptState state) {
  switch (state) {
    case KeptState::kNone: return "none";
    case KeptState::kReused: return "reused";
    case KeptState::kKept: return "kept";
    case KeptState::kNotKept: return "not kept";
  }
  return "?";
}

KeptLoad::KeptLoad(const shm::Location& location, const Catalog& catalog, const Plan& plan, const LoadRequest& request,
                   const std::vector<size_t>& staged, std::chrono::seconds keep_for, std::chrono::milliseconds wait,
                   const std::string& job_id)
    : store_(location), staged_(staged), keep_for_(keep_for), job_id_(job_id) {
  if (staged.empty()) return;  // all mapped: the page cache is the copy
  try {
    checkpoint_ = std::filesystem::absolute(catalog.root).string();
    use_.key = kept_key(catalog, plan, staged);
    std::vector<shm::KeptSegment> expected;
    for (size_t i : staged) {
      const PlannedSegment& s = plan.segments[i];
      expected.push_back({static_cast<uint32_t>(i), s.size, s.layout_hash});
      bytes_ += s.size;
    }
    request_ = kept_request(plan, request, staged);
    // Looking needs no lock: a copy appears whole (renamed into place) and only gc takes one away, by unlinking, which
    // leaves the descriptors found here valid. Jobs reusing one copy never wait for each other.
    std::string why;
    auto reuse = [&] {
      copy_ = store_.find(use_.key, expected, shm::unix_now(), &why);
      if (!copy_) return false;
      use_.state = KeptState::kReused;
      use_.expires_unix = copy_->manifest.expires_unix;
      use_.note.clear();
      return true;
    };
    if (store_.has(use_.key) && reuse()) return;
    if (keep_for.count() == 0) {
      use_.note = why;
      return;
    }
    // Keeping: the key's lock, so that a job starting meanwhile waits for this copy, and one that started earlier is
    // waited for (its copy then appears, and is reused).
    lock_ = store_.lock(use_.key, wait, job_id_, &why);
    if (!lock_) {
      not_kept(fmt::format("another job holds kept copy {}: {}", use_.key, why));
      return;
    }
    if (reuse()) {
      lock_.reset();
      return;
    }
    use_.note = why;  // an unusable copy of this key, if any: replaced by the one staged now
    use_.state = KeptState::kKept;
  } catch (const std::exception& e) {  // a file system error as much as our own: a cache must not fail the load
    not_kept(e.what());
  }
}

void KeptLoad::not_kept(const std::string& why) {
  lock_.reset();
  use_.state = keep_for_.count() > 0 ? KeptState::kNotKept : KeptState::kNone;
  use_.note = why;
}

File KeptLoad::descriptor(size_t segment) const {
  for (size_t k = 0; k < staged_.size(); ++k) {
    if (staged_[k] == segment) return copy_->files[k].duplicate();
  }
  throw Error(ErrorCode::kSystem, fmt::format("kept copy {} has no segment {}", use_.key, segment));
}

void KeptLoad::finish(const std::vector<std::shared_ptr<shm::Segment>>& segments) {
  const int64_t now = shm::unix_now();
  try {
    if (use_.state == KeptState::kReused && keep_for_.count() > 0) {
      std::string why;
      lock_ = store_.lock(use_.key, std::chrono::seconds(5), job_id_, &why);
      if (!lock_) throw Error(ErrorCode::kTimeout, why);
      if (!store_.has(use_.key)) throw Error(ErrorCode::kSystem, "`shardcast gc` removed it meanwhile");
      store_.extend(*lock_, now + keep_for_.count());
      use_.expires_unix = std::max(use_.expires_unix, now + keep_for_.count());
    } else if (use_.state == KeptState::kKept && lock_) {
      shm::KeptManifest manifest{use_.key,         checkpoint_, request_, {}, bytes_, now, now + keep_for_.count(),
                                 keep_for_.count()};
      std::vector<File> descriptors;
      std::vector<std::pair<uint32_t, int>> files;
      for (size_t i : staged_) {
        descriptors.push_back(segments.at(i)->descriptor());
        files.emplace_back(static_cast<uint32_t>(i), descriptors.back().fd());
        manifest.segments.push_back(static_cast<uint32_t>(i));
      }
      store_.publish(*lock_, manifest, files);
      use_.expires_unix = manifest.expires_unix;
    }
  } catch (const std::exception& e) {
    if (use_.state == KeptState::kReused) {
      use_.note = fmt::format("reused, but its expiry could not be moved on: {}", e.what());
    } else {
      not_kept(fmt::format("could not keep the copy for {}: {}", format_duration(keep_for_), e.what()));
    }
  }
  lock_.reset();
}

}  // namespace shardcast
