#include "shm/fault_messages.h"

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
  std::atomic<MappingKind> kind{MappingKind::kReadOnlySegment};
  char name[160] = {};
};
Watched slots[kSlots];
struct sigaction previous_segv, previous_bus;
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

// The watched mapping holding `address`, or null.
const Watched* find(uintptr_t address) {
  for (const Watched& w : slots) {
    const uintptr_t begin = w.begin.load(std::memory_order_acquire);
    if (begin != 0 && address >= begin && address < w.end.load(std::memory_order_acquire)) return &w;
  }
  return nullptr;
}

// Hands the fault on as if this handler had never been there.
void chain(int signal, siginfo_t* info, void* context, struct sigaction& previous) {
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(signal, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(signal);
  } else {
    sigaction(signal, &previous, nullptr);  // returning re-runs the access, which now ends the process
  }
}

void on_segv(int signal, siginfo_t* info, void* context) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
  const Watched* w = info->si_code == SEGV_ACCERR ? find(address) : nullptr;
  if (w && w->kind.load(std::memory_order_relaxed) != MappingKind::kFile) {
    say("shardcast: write to read-only shared memory at ");
    say_number(address, 16);
    say(" (");
    say(w->name);
    say(", byte ");
    say_number(address - w->begin.load(std::memory_order_relaxed), 10);
    say(" of the mapping): tensors loaded with placement 'shared' are read-only views of the node's one copy; "
        "load with placement 'cow' (copy-on-write) or 'private' to change them\n");
  }
  chain(signal, info, context, previous_segv);
}

void on_bus(int signal, siginfo_t* info, void* context) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
  const Watched* w = find(address);
  if (w && w->kind.load(std::memory_order_relaxed) != MappingKind::kReadOnlySegment) {
    say("shardcast: SIGBUS reading ");
    say(w->name);
    say(" at byte ");
    say_number(address - w->begin.load(std::memory_order_relaxed), 10);
    say(": the file is shorter than when it was mapped (truncated, or rewritten in place, while its tensors were in "
        "use); tensors mapped from the page cache need their checkpoint files left as they are: write a new file and "
        "rename it over the old one, or load with map_files 'never' (docs/loading.md)\n");
  }
  chain(signal, info, context, previous_bus);
}

void install() {
  struct sigaction action {};
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  action.sa_sigaction = on_segv;
  sigaction(SIGSEGV, &action, &previous_segv);
  action.sa_sigaction = on_bus;
  sigaction(SIGBUS, &action, &previous_bus);
}

}  // namespace

void watch_mapping(const void* begin, size_t size, const std::string& name, MappingKind kind) {
  std::call_once(installed, install);
  std::lock_guard<std::mutex> lock(slots_mutex);
  for (Watched& w : slots) {
    if (w.begin.load(std::memory_order_relaxed) != 0) continue;
    strncpy(w.name, name.c_str(), sizeof(w.name) - 1);
    w.kind.store(kind, std::memory_order_relaxed);
    w.end.store(reinterpret_cast<uintptr_t>(begin) + size, std::memory_order_relaxed);
    w.begin.store(reinterpret_cast<uintptr_t>(begin), std::memory_order_release);
    return;
  }
}

void unwatch_mapping(const void* begin) {
  std::lock_guard<std::mutex> lock(slots_mutex);
  for (Watched& w : slots) {
    if (w.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(begin)) {
      w.begin.store(0, std::memory_order_release);
      return;
    }
  }
}

}  // namespace shardcast::shm
