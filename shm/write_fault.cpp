#include "shm/write_fault.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace shardcast::shm {
namespace {

constexpr size_t kSlots = 1024;

// A slot is claimed by setting `begin` last (release) and read by the handler in acquire order; the handler only
// reads, so a slot changing under it shows either the old or the new mapping, both of which were real.
struct Watched {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  char name[96] = {};
};
Watched slots[kSlots];
struct sigaction previous;
std::once_flag installed;
std::mutex slots_mutex;  // between watch and unwatch, never taken in the handler

// Async-signal-safe output: write(2) of pieces, numbers formatted by hand.
void say(const char* text) {
  ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
  (void)ignored;
}

void say_number(uintptr_t value, int base) {
  char digits[32];
  int n = 0;
  do {
    digits[n++] = "0123456789abcdef"[value % base];
    value /= base;
  } while (value && n < 32);
  char out[34];
  int k = 0;
  if (base == 16) out[k++] = '0', out[k++] = 'x';
  while (n) out[k++] = digits[--n];
  ssize_t ignored = write(STDERR_FILENO, out, k);
  (void)ignored;
}

void on_segv(int signal, siginfo_t* info, void* context) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
  if (info->si_code == SEGV_ACCERR) {
    for (const Watched& w : slots) {
      const uintptr_t begin = w.begin.load(std::memory_order_acquire);
      if (begin == 0 || address < begin || address >= w.end.load(std::memory_order_acquire)) continue;
      say("shardcast: write to read-only shared memory at ");
      say_number(address, 16);
      say(" (");
      say(w.name);
      say(", byte ");
      say_number(address - begin, 10);
      say(" of the mapping): tensors loaded with placement 'shared' are read-only views of the node's one copy; "
          "load with placement 'cow' (copy-on-write) or 'private' to change them\n");
      break;
    }
  }
  // Hand the fault on as if this handler had never been there.
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(signal, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(signal);
  } else {
    sigaction(SIGSEGV, &previous, nullptr);  // returning re-runs the write, which now ends the process
  }
}

void install() {
  struct sigaction action {};
  action.sa_sigaction = on_segv;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &previous);
}

}  // namespace

void watch_read_only(const void* begin, size_t size, const std::string& name) {
  std::call_once(installed, install);
  std::lock_guard<std::mutex> lock(slots_mutex);
  for (Watched& w : slots) {
    if (w.begin.load(std::memory_order_relaxed) != 0) continue;
    strncpy(w.name, name.c_str(), sizeof(w.name) - 1);
    w.end.store(reinterpret_cast<uintptr_t>(begin) + size, std::memory_order_relaxed);
    w.begin.store(reinterpret_cast<uintptr_t>(begin), std::memory_order_release);
    return;
  }
}

void unwatch_read_only(const void* begin) {
  std::lock_guard<std::mutex> lock(slots_mutex);
  for (Watched& w : slots) {
    if (w.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(begin)) {
      w.begin.store(0, std::memory_order_release);
      return;
    }
  }
}

}  // namespace shardcast::shm
