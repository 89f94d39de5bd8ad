#include "tests/support/multiproc.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <thread>

namespace shardcast::testing {

std::string RankOutcome::describe() const {
  if (killed_at_deadline) return "killed at the test deadline";
  if (signaled) return "killed by signal " + std::to_string(signal);
  return "exit " + std::to_string(exit_code);
}

std::vector<RankOutcome> run_ranks(int size, const std::function<void(int rank)>& body, std::chrono::seconds timeout) {
  std::fflush(nullptr);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < size; ++rank) {
    pid_t pid = fork();
    if (pid == 0) {
      int code = 0;
      try {
        body(rank);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] %s\n", rank, e.what());
        code = 1;
      }
      std::fflush(nullptr);
      _exit(code);  // no atexit handlers: they belong to the parent's test runner
    }
    pids.push_back(pid);
  }
  std::vector<RankOutcome> outcomes(size);
  std::vector<bool> done(size, false);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int remaining = size;
  while (remaining > 0) {
    for (int r = 0; r < size; ++r) {
      if (done[r]) continue;
      int status = 0;
      if (waitpid(pids[r], &status, WNOHANG) != pids[r]) continue;
      done[r] = true;
      --remaining;
      outcomes[r].signaled = WIFSIGNALED(status);
      outcomes[r].signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      outcomes[r].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (remaining > 0 && std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < size; ++r) {
        if (done[r]) continue;
        kill(pids[r], SIGKILL);
        waitpid(pids[r], nullptr, 0);
        outcomes[r].killed_at_deadline = true;
        done[r] = true;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return outcomes;
}

}  // namespace shardcast::testing
