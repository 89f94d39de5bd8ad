#include "tools/bench/node_memory.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

namespace shardcast::bench {

MemInfo read_meminfo() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t value = 0;
  std::string unit;
  uint64_t anon = 0, cached = 0, shmem = 0, total = 0;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "AnonPages:") anon = value;
    if (key == "Cached:") cached = value;
    if (key == "Shmem:") shmem = value;
    if (key == "MemTotal:") total = value;
  }
  return {(anon + shmem) * 1024, (cached - std::min(cached, shmem)) * 1024, shmem * 1024, total * 1024};
}

Measurement measure_command(const std::vector<std::string>& argv, int interval_ms) {
  const MemInfo before = read_meminfo();
  const auto start = std::chrono::steady_clock::now();
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::perror(args[0]);
    _exit(127);
  }
  Measurement m;
  int status = 0;
  for (;;) {
    const MemInfo now = read_meminfo();
    ++m.samples;
    if (now.unreclaimable > before.unreclaimable)
      m.peak_unreclaimable = std::max(m.peak_unreclaimable, now.unreclaimable - before.unreclaimable);
    if (now.page_cache > before.page_cache)
      m.peak_page_cache = std::max(m.peak_page_cache, now.page_cache - before.page_cache);
    if (now.shmem > before.shmem) m.peak_shmem = std::max(m.peak_shmem, now.shmem - before.shmem);
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return m;
}

bool drop_page_cache() {
  sync();
  std::ofstream out("/proc/sys/vm/drop_caches");
  out << "3\n";
  out.flush();
  if (out) return true;
  std::fprintf(stderr, "shardcast-bench: warning: cannot drop the page cache (not root?); runs start warm\n");
  return false;
}

}  // namespace shardcast::bench
