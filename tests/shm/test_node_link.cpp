// The node link: descriptors reach the local ranks, a process that dies is noticed by the others in well under the
// 2 s the kill tests allow, and another user gets nothing from it and can plant nothing in it.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include "core/error.h"
#include "shm/node_link.h"
#include "shm/segment.h"

namespace shardcast::shm {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Forks a process running fn; its exit status is fn's return value.
pid_t spawn(const std::function<int()>& fn) {
  const pid_t pid = fork();
  if (pid == 0) {
    int status = 1;
    try {
      status = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    _exit(status);
  }
  return pid;
}

int exit_status(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A pipe a child writes to once it is ready; closed with the test.
struct Gate {
  int fds[2] = {-1, -1};
  Gate() { EXPECT_EQ(pipe(fds), 0); }
  ~Gate() {
    close(fds[0]);
    close(fds[1]);
  }
  void open() const { (void)!write(fds[1], "x", 1); }
  bool wait() const {
    char byte;
    return read(fds[0], &byte, 1) == 1;
  }
};

// How long until check() stops throwing nothing, polled; the time it took, or 10 s.
double seconds_until_failure(const std::function<void()>& check) {
  const auto start = Clock::now();
  while (Clock::now() - start < 10s) {
    try {
      check();
    } catch (const Error&) {
      return std::chrono::duration<double>(Clock::now() - start).count();
    }
    std::this_thread::sleep_for(5ms);
  }
  return 10;
}

TEST(NodeLink, SegmentsReachEveryLocalRankAndGoodbyesAreNoDeaths) {
  auto leader = NodeLink::listen(/*world_rank=*/10);
  auto first = Segment::create("segment 1", 4096, 5, Location{});
  auto second = Segment::create("segment 2", 4096, 5, Location{});
  auto stale = Segment::create("a failed load's segment", 4096, 5, Location{});
  std::memcpy(first->data(), "first", 5);
  std::memcpy(second->data(), "second", 6);
  std::vector<pid_t> peers;
  for (int local = 1; local <= 3; ++local) {
    peers.push_back(spawn([&, local] {
      auto link = NodeLink::connect(leader->address(), 10, local, 10 + local, 5s);
      std::vector<File> fds = link->receive(2, /*tag=*/7, 5s, "test");
      auto one = Segment::attach(std::move(fds[0]), 5, Access::kReadOnly, "segment 1");
      auto two = Segment::attach(std::move(fds[1]), 5, Access::kReadOnly, "segment 2");
      return std::memcmp(one->data(), "first", 5) == 0 && std::memcmp(two->data(), "second", 6) == 0 ? 0 : 2;
    }));
  }
  leader->accept(4, 5s);
  const File a = first->descriptor(), b = second->descriptor(), c = stale->descriptor();
  leader->send({c.fd()}, 6, 5s);  // sent for a load that failed before the ranks took it: never handed out
  leader->send({a.fd(), b.fd()}, 7, 5s);
  for (pid_t peer : peers) EXPECT_EQ(exit_status(peer), 0);
  std::this_thread::sleep_for(200ms);  // the watcher has read every goodbye
  EXPECT_FALSE(leader->dead());
  EXPECT_NO_THROW(leader->check_alive("test"));
}

TEST(NodeLink, ALocalRankKilledIsNoticedByTheLeaderAndTheOthersAtOnce) {
  auto leader = NodeLink::listen(0);
  Gate gate;
  const pid_t victim = spawn([&] {
    auto link = NodeLink::connect(leader->address(), 0, 1, 1, 5s);
    pause();
    return 0;
  });
  const pid_t witness = spawn([&] {
    auto link = NodeLink::connect(leader->address(), 0, 2, 2, 5s);
    gate.open();
    const double seconds = seconds_until_failure([&] { link->check_alive("stage"); });
    try {
      link->check_alive("stage");
    } catch (const Error& e) {
      const std::string m = e.what();
      const bool named = m.find("local rank 1 (rank 1, pid") != std::string::npos &&
                         m.find("died") != std::string::npos && e.code() == ErrorCode::kRemoteRankFailed;
      if (!named) std::fprintf(stderr, "witness: %s\n", m.c_str());
      return named && seconds < 2 ? 0 : 3;
    }
    return 4;
  });
  leader->accept(3, 5s);
  ASSERT_TRUE(gate.wait());
  kill(victim, SIGKILL);
  const double seconds = seconds_until_failure([&] { leader->check_alive("stage"); });
  EXPECT_LT(seconds, 2);
  ASSERT_TRUE(leader->dead());
  EXPECT_EQ(leader->dead()->local_rank, 1);
  EXPECT_EQ(leader->dead()->pid, victim);
  EXPECT_EQ(exit_status(witness), 0);
  exit_status(victim);
}

// A DataLoader worker forked from a rank inherits the rank's descriptors; it must not keep the rank's link open.
TEST(NodeLink, AChildForkedFromARankDoesNotHideTheRanksDeath) {
  auto leader = NodeLink::listen(0);
  Gate gate;
  const pid_t rank = spawn([&] {
    auto link = NodeLink::connect(leader->address(), 0, 1, 1, 5s);
    const pid_t worker = fork();
    if (worker == 0) {  // outlives the rank
      sleep(30);
      _exit(0);
    }
    (void)!write(gate.fds[1], &worker, sizeof(worker));
    pause();
    return 0;
  });
  leader->accept(2, 5s);
  pid_t worker = 0;
  ASSERT_EQ(read(gate.fds[0], &worker, sizeof(worker)), static_cast<ssize_t>(sizeof(worker)));
  kill(rank, SIGKILL);
  EXPECT_LT(seconds_until_failure([&] { leader->check_alive("stage"); }), 2);
  exit_status(rank);
  kill(worker, SIGKILL);
}

TEST(NodeLink, ALeaderKilledEndsAWaitingReceiveAtOnceNotAtTheTimeout) {
  Gate address_pipe;
  const pid_t leader = spawn([&] {
    auto link = NodeLink::listen(7);
    (void)!write(address_pipe.fds[1], link->address().data(), link->address().size());
    link->accept(2, 5s);
    pause();
    return 0;
  });
  char buffer[128] = {};
  ASSERT_GT(read(address_pipe.fds[0], buffer, sizeof(buffer)), 0);
  auto link = NodeLink::connect(buffer, 7, 1, 8, 5s);
  std::thread killer([&] {
    std::this_thread::sleep_for(300ms);
    kill(leader, SIGKILL);
  });
  const auto start = Clock::now();
  try {
    link->receive(1, 1, 60s, "batch 1");
    FAIL() << "received from a dead leader";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kRemoteRankFailed);
    EXPECT_NE(std::string(e.what()).find("the node leader, local rank 0 (rank 7, pid"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("batch 1"), std::string::npos) << e.what();
    EXPECT_EQ(e.ranks(), std::vector<int>{7});
  }
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 2.5);
  killer.join();
  exit_status(leader);
}

// Another user can reach an abstract socket, so the link checks who is on the other end: that user's process gets
// nothing from a leader, and a socket that user binds is refused by a rank.
class OtherUser : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  }
  static constexpr uid_t kNobody = 65534;

  // A raw SOCK_SEQPACKET socket and the abstract address `name`, as an attacker would use them.
  static int raw_socket(const std::string& name, sockaddr_un* address, socklen_t* length) {
    *address = sockaddr_un{};
    address->sun_family = AF_UNIX;
    std::memcpy(address->sun_path + 1, name.data(), name.size());
    *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    return socket(AF_UNIX, SOCK_SEQPACKET, 0);
  }
};

TEST_F(OtherUser, GetsNoSegmentFromALeader) {
  auto leader = NodeLink::listen(0);
  const std::string address = leader->address();
  const pid_t intruder = spawn([&] {
    if (setgid(kNobody) != 0 || setuid(kNobody) != 0) return 5;
    // By hand, as an attacker would: connect, introduce itself as local rank 1, wait for descriptors.
    sockaddr_un target;
    socklen_t length;
    const int fd = raw_socket(address, &target, &length);
    if (connect(fd, reinterpret_cast<sockaddr*>(&target), length) != 0) return 6;
    const int32_t hello[5] = {1, 1, 1, static_cast<int32_t>(getpid()), 0};
    (void)!send(fd, hello, sizeof(hello), MSG_NOSIGNAL);
    char reply[64];
    return recv(fd, reply, sizeof(reply), 0) <= 0 ? 0 : 9;  // closed on it, nothing sent
  });
  try {
    leader->accept(2, 1s);
    FAIL() << "the leader linked up with another user's process";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout);
  }
  EXPECT_EQ(exit_status(intruder), 0);
}

TEST_F(OtherUser, CannotPlantALinkForARankToAttachTo) {
  Gate ready;
  const std::string name = "shardcast-planted-" + std::to_string(getpid());
  const pid_t planter = spawn([&] {
    if (setgid(kNobody) != 0 || setuid(kNobody) != 0) return 5;
    sockaddr_un address;
    socklen_t length;
    const int fd = raw_socket(name, &address, &length);
    if (bind(fd, reinterpret_cast<sockaddr*>(&address), length) != 0 || listen(fd, 4) != 0) return 7;
    ready.open();
    const int accepted = accept(fd, nullptr, nullptr);
    char byte;
    (void)!read(accepted, &byte, 1);
    return 0;
  });
  ASSERT_TRUE(ready.wait());
  try {
    NodeLink::connect(name, 0, 1, 1, 5s);
    FAIL() << "a rank linked up with another user's socket";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("of uid 65534, not by this user"), std::string::npos) << e.what();
  }
  kill(planter, SIGKILL);
  exit_status(planter);
}

TEST_F(OtherUser, CannotOpenASegmentThroughProc) {
  auto segment = Segment::create("segment private", 4096, 1, Location{});
  const File fd = segment->descriptor();
  const std::string path = "/proc/" + std::to_string(getpid()) + "/fd/" + std::to_string(fd.fd());
  const pid_t prober = spawn([&] {
    if (setgid(kNobody) != 0 || setuid(kNobody) != 0) return 5;
    return ::open(path.c_str(), O_RDONLY) < 0 && errno == EACCES ? 0 : 8;
  });
  EXPECT_EQ(exit_status(prober), 0);
}

}  // namespace
}  // namespace shardcast::shm
