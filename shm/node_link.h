// The processes of one node, linked to their leader (local rank 0) by Unix sockets. Two jobs:
// - segments reach the local ranks as file descriptors (SCM_RIGHTS), so no segment ever needs a name;
// - a socket that closes without a goodbye means its process died: the leader tells the other local ranks at once,
//   and every rank's waits see it within a poll slice (Communicator::set_liveness_check).
// The leader listens on an abstract socket (no file to leak or plant) with a random name that the ranks learn through
// their communicator. Both ends check that the other runs as the same user (SO_PEERCRED): anyone on the host can
// connect to an abstract socket, so that check is what keeps other users out.
// A process forked from a rank (a DataLoader worker) closes its copies of the link's sockets at once: otherwise it
// would keep a dead rank's socket open, and its death unseen, for as long as the child lives.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/file.h"

namespace shardcast::shm {

struct LinkedProcess {
  int local_rank = -1;
  int world_rank = -1;
  pid_t pid = 0;
  std::string describe() const;  // "local rank 2 (rank 6, pid 4242)"
};

class NodeLink {
 public:
  using Timeout = std::chrono::milliseconds;

  // Leader: starts listening; address() goes to the other local ranks, then accept() waits for them.
  static std::unique_ptr<NodeLink> listen(int world_rank);
  const std::string& address() const { return address_; }
  void accept(int local_size, Timeout timeout);
  // The other local ranks (leader_world_rank names the leader in messages).
  static std::unique_ptr<NodeLink> connect(const std::string& address, int leader_world_rank, int local_rank,
                                           int world_rank, Timeout timeout);

  ~NodeLink();  // says goodbye (a rank that finishes is not a rank that died) and stops the watcher
  NodeLink(const NodeLink&) = delete;
  NodeLink& operator=(const NodeLink&) = delete;

  bool is_leader() const { return leader_; }

  // Leader: the descriptors go to every other local rank (each gets its own duplicates), in order, under `tag`. Waits
  // up to `timeout` for a rank that does not read (stopped); a dead rank is skipped (check_alive says so).
  void send(const std::vector<int>& fds, uint64_t tag, Timeout timeout);
  // The others: the `count` descriptors the leader sent under `tag`. Descriptors of another tag (those of a load that
  // failed before this rank took them) are dropped, never handed out. Waits up to `timeout`; throws kRemoteRankFailed
  // naming the rank when a local process died meanwhile.
  std::vector<File> receive(size_t count, uint64_t tag, Timeout timeout, const std::string& what);

  // Closes the descriptors received and not yet taken: a failed load's, which would otherwise hold their memory.
  void discard_received();

  // Throws kRemoteRankFailed naming the first local process that died (its socket closed without a goodbye), if any.
  void check_alive(const std::string& what) const;
  std::optional<LinkedProcess> dead() const;

 private:
  struct Peer {
    int socket = -1;
    LinkedProcess process;
    bool gone = false;  // said goodbye, or died; written by the watcher only, under mutex_
  };
  NodeLink(bool leader, int local_rank, int world_rank);
  void start_watcher();
  void watch();
  void record_death(const LinkedProcess& process);
  void forget_in_forked_child();
  friend void forget_links_in_forked_child();

  bool leader_;
  LinkedProcess self_;
  std::string address_;
  int listener_ = -1;
  std::vector<Peer> peers_;  // the leader: every other local rank; the others: the leader
  int wake_[2] = {-1, -1};   // a pipe that ends the watcher
  std::unique_ptr<std::thread> watcher_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::pair<uint64_t, File>> received_;  // descriptors the leader sent (with their tag), not yet taken
  std::optional<LinkedProcess> dead_;
  bool truncated_ = false;  // descriptors were dropped on the way in (this process at its open-file limit)
  std::mutex send_mutex_;   // send() and the watcher's notices share the peers' sockets
};

}  // namespace shardcast::shm
