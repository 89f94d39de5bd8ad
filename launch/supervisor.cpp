#include "launch/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxLine = 64 * 1024;  // a longer line without a newline is passed on in pieces

void write_all(int fd, const std::string& text) {
  for (size_t done = 0; done < text.size();) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;  // our own stdout is gone (closed pipe): nothing useful left to do with the output
    done += static_cast<size_t>(n);
  }
}

// One of a child's output pipes, passed on line by line with the child's prefix.
struct Stream {
  int fd = -1;
  int to = STDOUT_FILENO;
  std::string pending;

  void pass_on(const std::string& prefix, bool flush) {
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      write_all(to, prefix + pending.substr(start, nl + 1 - start));
    }
    pending.erase(0, start);
    if ((flush && !pending.empty()) || pending.size() >= kMaxLine) {
      write_all(to, prefix + pending + "\n");
      pending.clear();
    }
  }

  // Reads what is there; closes the pipe at end of file.
  void read_some(const std::string& prefix) {
    char buffer[16384];
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) {
      pass_on(prefix, /*flush=*/true);
      ::close(fd);
      fd = -1;
      return;
    }
    pending.append(buffer, static_cast<size_t>(n));
    pass_on(prefix, /*flush=*/false);
  }
};

struct Child {
  const ChildSpec* spec = nullptr;
  pid_t pid = -1;
  std::optional<int> status;  // waitpid's, once reaped
  Stream out, err;
};

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  }
  return fmt::format("ended with wait status {}", status);
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

[[noreturn]] void exec_child(const ChildSpec& spec, int out_fd, int err_fd, const sigset_t& original_mask,
                             pid_t launcher) {
  // Only async-signal-safe calls from here on would be strictly required in a threaded parent; this launcher has no
  // threads, so setenv and friends are fine.
  sigprocmask(SIG_SETMASK, &original_mask, nullptr);
  signal(SIGPIPE, SIG_DFL);  // the launcher ignores it; an ignored signal would stay ignored across exec
  setpgid(0, 0);             // its own process group: stopping it reaches whatever it started too
  // A launcher killed outright (SIGKILL, OOM) takes its ranks along instead of leaving them running unsupervised.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != launcher) _exit(128 + SIGKILL);
  int null_fd = ::open("/dev/null", O_RDONLY);
  if (null_fd >= 0) {
    dup2(null_fd, STDIN_FILENO);
    ::close(null_fd);
  }
  dup2(out_fd, STDOUT_FILENO);
  dup2(err_fd, STDERR_FILENO);
  for (const auto& [name, value] : spec.env) setenv(name.c_str(), value.c_str(), 1);
  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  const std::string message = fmt::format("shardcast-run: cannot run '{}': {}\n", spec.argv[0], std::strerror(errno));
  write_all(STDERR_FILENO, message);
  _exit(127);
}

class Supervisor {
 public:
  Supervisor(const std::vector<ChildSpec>& specs, const SupervisorOptions& options) : options_(options) {
    children_.resize(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) children_[i].spec = &specs[i];
  }

  int run() {
    sigset_t handled, original;
    sigemptyset(&handled);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&handled, sig);
    sigprocmask(SIG_BLOCK, &handled, &original);
    signal_fd_ = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
    // A reader of our output that goes away (`| head`) must not kill the launcher before it stops the ranks.
    signal(SIGPIPE, SIG_IGN);
    if (signal_fd_ < 0) throw Error(ErrorCode::kSystem, fmt::format("signalfd: {}", std::strerror(errno)));

    try {
      for (Child& child : children_) start(child, original);
      while (!finished()) step();
    } catch (...) {
      // The launcher itself failed (out of file descriptors, ...): take down what it started before saying why.
      signal_all(SIGKILL);
      for (Child& child : children_) {
        if (child.pid > 0 && !child.status) waitpid(child.pid, nullptr, 0);
      }
      throw;
    }
    ::close(signal_fd_);
    sigprocmask(SIG_SETMASK, &original, nullptr);
    return exit_code_;
  }

 private:
  void start(Child& child, const sigset_t& original_mask) {
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0) throw Error(ErrorCode::kSystem, fmt::format("pipe: {}", std::strerror(errno)));
    child.out.fd = out[0];
    if (pipe2(err, O_CLOEXEC) != 0) {
      ::close(out[1]);
      throw Error(ErrorCode::kSystem, fmt::format("pipe: {}", std::strerror(errno)));
    }
    child.err.fd = err[0];
    const pid_t launcher = getpid();
    pid_t pid = fork();
    if (pid < 0) {
      const int error = errno;
      ::close(out[1]);
      ::close(err[1]);
      throw Error(ErrorCode::kSystem, fmt::format("fork: {}", std::strerror(error)));
    }
    if (pid == 0) exec_child(*child.spec, out[1], err[1], original_mask, launcher);
    setpgid(pid, pid);  // also here, so the group exists before we could signal it
    ::close(out[1]);
    ::close(err[1]);
    child.pid = pid;
    child.err.to = STDERR_FILENO;
  }

  bool finished() const {
    for (const Child& child : children_) {
      if (!child.status) return false;
      // A child's output may still be in its pipes after it was reaped; read it to the end, unless something the
      // child left behind holds the pipe open past the drain deadline.
      if ((child.out.fd >= 0 || child.err.fd >= 0) && Clock::now() < drain_deadline_) return false;
    }
    return true;
  }

  void step() {
    std::vector<pollfd> fds{{signal_fd_, POLLIN, 0}};
    std::vector<std::pair<Stream*, const std::string*>> streams;  // fds[i + 1] is streams[i]
    for (Child& child : children_) {
      for (Stream* s : {&child.out, &child.err}) {
        if (s->fd < 0) continue;
        fds.push_back({s->fd, POLLIN, 0});
        streams.emplace_back(s, &child.spec->prefix);
      }
    }
    if (::poll(fds.data(), fds.size(), 100) < 0 && errno != EINTR) {
      throw Error(ErrorCode::kSystem, fmt::format("poll: {}", std::strerror(errno)));
    }
    for (size_t i = 0; i < streams.size(); ++i) {
      if (fds[i + 1].revents != 0) streams[i].first->read_some(*streams[i].second);
    }
    if (fds[0].revents & POLLIN) handle_signals();
    reap();
    if (stopping_ && Clock::now() >= kill_at_) signal_all(SIGKILL);
  }

  void handle_signals() {
    signalfd_siginfo info;
    while (::read(signal_fd_, &info, sizeof(info)) == sizeof(info)) {
      const int sig = static_cast<int>(info.ssi_signo);
      if (sig == SIGCHLD) continue;  // reap() looks after every child
      if (stopping_) {
        signal_all(SIGKILL);  // asked twice: stop waiting
        continue;
      }
      write_all(STDERR_FILENO, fmt::format("shardcast-run: got {}, passing it to the ranks\n", strsignal(sig)));
      exit_code_ = 128 + sig;
      stop(sig);
    }
  }

  // In the order the children ended, so the failure reported is the first one.
  void reap() {
    int status = 0;
    for (pid_t pid; (pid = waitpid(-1, &status, WNOHANG)) > 0;) {
      auto child = std::find_if(children_.begin(), children_.end(), [&](const Child& c) { return c.pid == pid; });
      if (child == children_.end()) continue;
      child->status = status;
      if (all_reaped()) drain_deadline_ = Clock::now() + std::chrono::seconds(1);
      const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
      if (failed && !stopping_) {
        write_all(STDERR_FILENO, fmt::format("shardcast-run: {} (pid {}) {}; stopping the other ranks\n",
                                             child->spec->name, pid, describe_status(status)));
        exit_code_ = exit_code_of(status);
        stop(SIGTERM);
      }
    }
  }

  bool all_reaped() const {
    for (const Child& child : children_) {
      if (!child.status) return false;
    }
    return true;
  }

  void stop(int sig) {
    stopping_ = true;
    kill_at_ = Clock::now() + options_.stop_grace;
    signal_all(sig);
  }

  void signal_all(int sig) {
    for (const Child& child : children_) {
      if (child.pid > 0 && !child.status) ::kill(-child.pid, sig);
    }
  }

  SupervisorOptions options_;
  std::vector<Child> children_;
  int signal_fd_ = -1;
  bool stopping_ = false;
  Clock::time_point kill_at_;
  Clock::time_point drain_deadline_ = Clock::time_point::max();
  int exit_code_ = 0;
};

}  // namespace

int supervise(const std::vector<ChildSpec>& children, const SupervisorOptions& options) {
  return Supervisor(children, options).run();
}

}  // namespace shardcast
