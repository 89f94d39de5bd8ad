#include "shm/node_link.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <optional>
#include <random>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

namespace shardcast::shm {

void forget_links_in_forked_child();

namespace {

using Clock = std::chrono::steady_clock;

enum MessageType : uint32_t {
  kHello = 1,        // a local rank introduces itself
  kDescriptors = 2,  // `count` segment descriptors ride along (SCM_RIGHTS)
  kDeath = 3,        // the leader saw `process` die
  kGoodbye = 4,      // the sender is done: its socket closing next is not a death
};

struct Message {
  uint32_t type = 0;
  int32_t local_rank = -1;
  int32_t world_rank = -1;
  int32_t pid = 0;
  uint32_t count = 0;
  uint64_t tag = 0;  // kDescriptors: which load and batch they belong to
};

constexpr size_t kMaxDescriptorsPerMessage = 64;  // the kernel takes at most 253 (SCM_MAX_FD)

sockaddr_un abstract_address(const std::string& name, socklen_t* length) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (name.size() + 1 > sizeof(address.sun_path)) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("node link address '{}' is too long", name));
  }
  std::memcpy(address.sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: the abstract namespace
  *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return address;
}

int make_socket() {
  const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) throw_system_error("socket(AF_UNIX, SOCK_SEQPACKET)", "node link", errno);
  return fd;
}

ucred peer_credentials(int socket) {
  ucred credentials{};
  socklen_t size = sizeof(credentials);
  if (::getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &size) != 0) {
    throw_system_error("getsockopt(SO_PEERCRED)", "node link", errno);
  }
  return credentials;
}

enum class Sent { kOk, kGone, kFull };

// Sends one message with `fds` attached, waiting for room in the peer's queue until `deadline` (none: try once).
// kGone: the peer's end is closed (the watcher records why). Any other failure throws, naming the call.
Sent send_message(int socket, const Message& message, const int* fds = nullptr, size_t count = 0,
                  std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt) {
  iovec io{const_cast<Message*>(&message), sizeof(message)};
  msghdr header{};
  header.msg_iov = &io;
  header.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDescriptorsPerMessage)] = {};
  if (count > 0) {
    header.msg_control = control;
    header.msg_controllen = CMSG_SPACE(sizeof(int) * count);
    cmsghdr* rights = CMSG_FIRSTHDR(&header);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof(int) * count);
    std::memcpy(CMSG_DATA(rights), fds, sizeof(int) * count);
  }
  for (;;) {
    if (::sendmsg(socket, &header, MSG_NOSIGNAL | MSG_DONTWAIT) == static_cast<ssize_t>(sizeof(message))) {
      return Sent::kOk;
    }
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) return Sent::kGone;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw_system_error("sendmsg", "node link", errno);
    const auto left =
        deadline ? std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now()).count() : 0;
    if (left <= 0) return Sent::kFull;
    pollfd p{socket, POLLOUT, 0};
    ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
  }
}

enum class Received { kOk, kGone, kTruncated };

// Receives one message and the descriptors riding on it. kGone: end of stream or an error (the peer is gone);
// kTruncated: the kernel dropped descriptors because this process is at its open-file limit.
Received receive_message(int socket, Message* message, std::vector<File>* fds) {
  iovec io{message, sizeof(*message)};
  msghdr header{};
  header.msg_iov = &io;
  header.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDescriptorsPerMessage)] = {};
  header.msg_control = control;
  header.msg_controllen = sizeof(control);
  ssize_t got;
  do {
    got = ::recvmsg(socket, &header, MSG_CMSG_CLOEXEC);
  } while (got < 0 && errno == EINTR);
  for (cmsghdr* c = CMSG_FIRSTHDR(&header); c != nullptr; c = CMSG_NXTHDR(&header, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(File::adopt(fd, "a segment from the node leader"));
    }
  }
  if (got != static_cast<ssize_t>(sizeof(*message))) return Received::kGone;
  return (header.msg_flags & MSG_CTRUNC) != 0 ? Received::kTruncated : Received::kOk;
}

// Waits until `fd` is readable or the deadline passes; false at the deadline.
bool wait_readable(int fd, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) throw_system_error("poll", "node link", errno);
  }
}

// Every link of this process with a watcher, for the fork handlers.
std::mutex links_mutex;
std::set<NodeLink*>& links() {
  static std::set<NodeLink*> all;
  return all;
}

void register_link(NodeLink* link) {
  static const bool installed = [] {
    ::pthread_atfork([] { links_mutex.lock(); }, [] { links_mutex.unlock(); }, forget_links_in_forked_child);
    return true;
  }();
  (void)installed;
  std::lock_guard<std::mutex> lock(links_mutex);
  links().insert(link);
}

void unregister_link(NodeLink* link) {
  std::lock_guard<std::mutex> lock(links_mutex);
  links().erase(link);
}

long long seconds(NodeLink::Timeout t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t).count();
}

}  // namespace

// In a forked child (one thread, links_mutex held since the prepare handler): the links are the parent's.
void forget_links_in_forked_child() {
  for (NodeLink* link : links()) link->forget_in_forked_child();
  links().clear();
  links_mutex.unlock();
}

void NodeLink::forget_in_forked_child() {
  (void)watcher_.release();  // the parent's thread, absent here: never join it (the copy leaks, by design)
  for (Peer& peer : peers_) {
    if (peer.socket >= 0) ::close(peer.socket);
    peer.socket = -1;
    peer.gone = true;
  }
  for (int* fd : {&wake_[0], &wake_[1], &listener_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
}

std::string LinkedProcess::describe() const {
  return fmt::format("local rank {} (rank {}, pid {})", local_rank, world_rank, pid);
}

NodeLink::NodeLink(bool leader, int local_rank, int world_rank)
    : leader_(leader), self_{local_rank, world_rank, ::getpid()} {}

std::unique_ptr<NodeLink> NodeLink::listen(int world_rank) {
  std::unique_ptr<NodeLink> link(new NodeLink(true, 0, world_rank));
  std::random_device random;
  link->address_ = fmt::format("shardcast-{}-{:08x}{:08x}", ::getpid(), random(), random());
  link->listener_ = make_socket();
  socklen_t length = 0;
  sockaddr_un address = abstract_address(link->address_, &length);
  if (::bind(link->listener_, reinterpret_cast<sockaddr*>(&address), length) != 0) {
    throw_system_error("bind", "node link @" + link->address_, errno);
  }
  if (::listen(link->listener_, 256) != 0) throw_system_error("listen", "node link @" + link->address_, errno);
  return link;
}

void NodeLink::accept(int local_size, Timeout timeout) {
  const auto deadline = Clock::now() + timeout;
  peers_.resize(static_cast<size_t>(std::max(local_size - 1, 0)));
  for (size_t linked = 0; linked < peers_.size();) {
    if (!wait_readable(listener_, deadline)) {
      std::vector<int> missing;
      for (size_t i = 0; i < peers_.size(); ++i) {
        if (peers_[i].socket < 0) missing.push_back(static_cast<int>(i) + 1);
      }
      throw Error(ErrorCode::kTimeout,
                  fmt::format("the node leader (rank {}) waited {} s for local rank(s) {} to link up", self_.world_rank,
                              seconds(timeout), fmt::format("{}", fmt::join(missing, ", "))));
    }
    const int socket = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (socket < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      throw_system_error("accept", "node link @" + address_, errno);
    }
    // Another user's process may connect to an abstract socket; it gets nothing.
    ucred credentials{};
    try {
      credentials = peer_credentials(socket);
    } catch (const Error&) {
      ::close(socket);
      throw;
    }
    Message hello;
    std::vector<File> none;
    const bool introduced = credentials.uid == ::geteuid() && wait_readable(socket, deadline) &&
                            receive_message(socket, &hello, &none) == Received::kOk && hello.type == kHello;
    const size_t slot = static_cast<size_t>(hello.local_rank) - 1;
    if (!introduced || hello.local_rank < 1 || slot >= peers_.size() || peers_[slot].socket >= 0) {
      std::fprintf(stderr, "shardcast: warning: node link @%s refused a connection from pid %d (uid %u)\n",
                   address_.c_str(), credentials.pid, credentials.uid);
      ::close(socket);
      continue;
    }
    peers_[slot] = {socket, {hello.local_rank, hello.world_rank, credentials.pid}, false};
    ++linked;
  }
  ::close(listener_);
  listener_ = -1;
  start_watcher();
}

std::unique_ptr<NodeLink> NodeLink::connect(const std::string& address, int leader_world_rank, int local_rank,
                                            int world_rank, Timeout timeout) {
  std::unique_ptr<NodeLink> link(new NodeLink(false, local_rank, world_rank));
  link->address_ = address;
  const int socket = make_socket();
  link->peers_.push_back({socket, {0, leader_world_rank, 0}, false});  // the destructor closes it from here on
  socklen_t length = 0;
  sockaddr_un target = abstract_address(address, &length);
  const auto deadline = Clock::now() + timeout;
  while (::connect(socket, reinterpret_cast<sockaddr*>(&target), length) != 0) {
    if (errno != EINTR && errno != EAGAIN) throw_system_error("connect", "the node leader's link @" + address, errno);
    if (Clock::now() > deadline) {
      throw Error(ErrorCode::kTimeout, fmt::format("local rank {} could not reach the node leader's link @{} in {} s",
                                                   local_rank, address, seconds(timeout)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Only a process of our own user may hand us memory: a socket another user bound under this name is refused.
  const ucred credentials = peer_credentials(socket);
  if (credentials.uid != ::geteuid()) {
    throw Error(ErrorCode::kSystem,
                fmt::format("the node link @{} is served by pid {} of uid {}, not by this user (uid {}): refusing it",
                            address, credentials.pid, credentials.uid, ::geteuid()));
  }
  link->peers_[0].process.pid = credentials.pid;
  if (send_message(socket, {kHello, local_rank, world_rank, static_cast<int32_t>(::getpid()), 0}, nullptr, 0,
                   deadline) != Sent::kOk) {
    throw Error(ErrorCode::kRemoteRankFailed,
                fmt::format("the node leader (pid {}) closed its link @{} before local rank {} could introduce itself",
                            credentials.pid, address, local_rank));
  }
  link->start_watcher();
  return link;
}

NodeLink::~NodeLink() {
  {
    std::lock_guard<std::mutex> lock(send_mutex_);
    for (Peer& peer : peers_) {
      try {  // best effort: a peer that is gone or not reading learns of it some other way
        if (peer.socket >= 0) send_message(peer.socket, {kGoodbye, self_.local_rank, self_.world_rank, self_.pid, 0});
      } catch (const Error&) {
      }
    }
  }
  if (watcher_) {
    const char stop = 1;
    (void)!::write(wake_[1], &stop, 1);
    watcher_->join();
  }
  unregister_link(this);
  for (int fd : {wake_[0], wake_[1], listener_}) {
    if (fd >= 0) ::close(fd);
  }
  for (Peer& peer : peers_) {
    if (peer.socket >= 0) ::close(peer.socket);
  }
}

void NodeLink::start_watcher() {
  if (::pipe2(wake_, O_CLOEXEC) != 0) throw_system_error("pipe", "node link", errno);
  watcher_ = std::make_unique<std::thread>([this] { watch(); });
  register_link(this);
}

// The watcher: reads every message from the linked processes and notices when one goes away.
void NodeLink::watch() {
  for (;;) {
    std::vector<pollfd> polled{{wake_[0], POLLIN, 0}};
    std::vector<size_t> index;
    for (size_t i = 0; i < peers_.size(); ++i) {
      if (peers_[i].gone) continue;
      polled.push_back({peers_[i].socket, POLLIN, 0});
      index.push_back(i);
    }
    if (::poll(polled.data(), polled.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (polled[0].revents != 0) return;  // the destructor
    for (size_t k = 1; k < polled.size(); ++k) {
      if (polled[k].revents == 0) continue;
      Peer& peer = peers_[index[k - 1]];
      Message message;
      std::vector<File> fds;
      const Received outcome = receive_message(peer.socket, &message, &fds);
      if (outcome == Received::kTruncated) {
        std::lock_guard<std::mutex> lock(mutex_);
        truncated_ = true;
        changed_.notify_all();
        continue;
      }
      const bool received = outcome == Received::kOk;
      if (!received) record_death(peer.process);  // before `gone`: a receive() woken by it must see why
      if (!received || message.type == kGoodbye) {
        std::lock_guard<std::mutex> lock(mutex_);
        peer.gone = true;
        changed_.notify_all();  // a receive() waiting on the leader learns it will get nothing more
      }
      if (!received)
        continue;
      else if (message.type == kDeath && !leader_) {
        record_death({message.local_rank, message.world_rank, message.pid});
      } else if (message.type == kDescriptors && !leader_) {
        std::lock_guard<std::mutex> lock(mutex_);
        for (File& fd : fds) received_.emplace_back(message.tag, std::move(fd));
        changed_.notify_all();
      }
    }
  }
}

void NodeLink::record_death(const LinkedProcess& process) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!dead_) dead_ = process;
    changed_.notify_all();
  }
  if (!leader_) return;
  // The other local ranks hear it from the leader, since they are linked to it alone.
  std::lock_guard<std::mutex> lock(send_mutex_);
  for (Peer& peer : peers_) {
    if (peer.gone) continue;
    try {  // best effort, on the watcher thread: a peer not reading still sees the death as its wait times out
      send_message(peer.socket, {kDeath, process.local_rank, process.world_rank, process.pid, 0});
    } catch (const Error&) {
    }
  }
}

void NodeLink::send(const std::vector<int>& fds, uint64_t tag, Timeout timeout) {
  const auto deadline = Clock::now() + timeout;
  std::lock_guard<std::mutex> lock(send_mutex_);
  for (Peer& peer : peers_) {
    if (std::lock_guard<std::mutex> state(mutex_); peer.gone) continue;  // the watcher has recorded why
    for (size_t begin = 0; begin < fds.size(); begin += kMaxDescriptorsPerMessage) {
      const size_t count = std::min(kMaxDescriptorsPerMessage, fds.size() - begin);
      Message message{kDescriptors, self_.local_rank, self_.world_rank, self_.pid, static_cast<uint32_t>(count), tag};
      const Sent sent = send_message(peer.socket, message, fds.data() + begin, count, deadline);
      if (sent == Sent::kGone) break;
      if (sent == Sent::kFull) {
        throw Error(ErrorCode::kTimeout,
                    fmt::format("the node leader waited {} s for {} to take its segments (stopped or stuck?)",
                                seconds(timeout), peer.process.describe()),
                    {peer.process.world_rank});
      }
    }
  }
}

std::vector<File> NodeLink::receive(size_t count, uint64_t tag, Timeout timeout, const std::string& what) {
  std::unique_lock<std::mutex> lock(mutex_);
  const bool ready = changed_.wait_for(lock, timeout, [&] {
    while (!received_.empty() && received_.front().first != tag) received_.pop_front();  // a failed load's
    return received_.size() >= count || dead_ || peers_[0].gone || truncated_;
  });
  if (received_.size() < count) {
    const bool truncated = truncated_;
    lock.unlock();
    check_alive(what);
    if (truncated) {
      throw Error(ErrorCode::kSystem,
                  fmt::format("local rank {} could not take the segments of '{}' from the node leader: the kernel "
                              "dropped the descriptors because this process is at its open-file limit (ulimit -n)",
                              self_.local_rank, what));
    }
    if (!ready) {
      throw Error(ErrorCode::kTimeout,
                  fmt::format("local rank {} waited {} s for the node leader (pid {}) to share the segments of '{}'",
                              self_.local_rank, seconds(timeout), peers_[0].process.pid, what));
    }
    throw Error(ErrorCode::kRemoteRankFailed,
                fmt::format("the node leader (pid {}) left the node link before sharing the segments of '{}'",
                            peers_[0].process.pid, what));
  }
  std::vector<File> out;
  for (size_t i = 0; i < count; ++i) {
    out.push_back(std::move(received_.front().second));
    received_.pop_front();
  }
  return out;
}

void NodeLink::discard_received() {
  std::lock_guard<std::mutex> lock(mutex_);
  received_.clear();
}

std::optional<LinkedProcess> NodeLink::dead() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return dead_;
}

void NodeLink::check_alive(const std::string& what) const {
  const std::optional<LinkedProcess> process = dead();
  if (!process) return;
  const std::string who =
      process->local_rank == 0 ? fmt::format("the node leader, {}", process->describe()) : process->describe();
  throw Error(ErrorCode::kRemoteRankFailed,
              fmt::format("{} died (its link to the node closed without a goodbye); stopping '{}'", who, what),
              process->world_rank >= 0 ? std::vector<int>{process->world_rank} : std::vector<int>{});
}

}  // namespace shardcast::shm
