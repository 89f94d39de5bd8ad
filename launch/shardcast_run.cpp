// shardcast-run: a torchrun-compatible launcher. Starts --nproc-per-node copies of a command on this node with the
// environment torchrun gives its workers, and supervises them (launch/supervisor.h). Ranks find each other through a
// c10d TCPStore that global rank 0 hosts at --master-addr:--master-port, as torch's env:// rendezvous does. Like
// `torchrun --no-python`, the command runs as given.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "core/error.h"
#include "core/size.h"
#include "launch/supervisor.h"
#include "shm/kept_copies.h"
#include "shm/segment.h"
#include "tools/cli_checks.h"

namespace {

using shardcast::ChildSpec;

struct Args {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: 29500 across nodes; a free port on one node, so concurrent jobs on a host do not meet
  std::string rdzv_id = "none";  // torchrun's default; shardcast then lets rank 0 make the job id
  bool standalone = false;
  double stop_timeout_s = 10;
  std::vector<std::string> command;
};

// After a failed job: named segments (of earlier versions) whose creators are gone, as `shardcast gc` removes them.
void remove_leftover_segments() {
  for (const auto& o : shardcast::shm::remove_orphans(shardcast::shm::Location::resolve(""))) {
    fmt::print(stderr, "shardcast-run: removed segment {} ({}, {}) left by a stopped rank\n", o.name,
               shardcast::format_size(o.bytes), o.state);
  }
}

// Before a job: the user's expired kept copies (load --keep) and half-published ones, so that their memory is free
// for this job; nothing else removes them before `shardcast gc` or the next load on the node.
void remove_expired_kept_copies() {
  for (const auto& c : shardcast::shm::remove_expired_kept_copies(shardcast::shm::Location::resolve(""))) {
    fmt::print(stderr, "shardcast-run: removed kept copy {} ({}, {})\n", c.name, shardcast::format_size(c.allocated),
               c.problem.empty() ? "expired" : c.problem);
  }
}

// A port nothing listens on now (the kernel's pick), for --standalone.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  const bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok) throw shardcast::Error(shardcast::ErrorCode::kSystem, "cannot find a free TCP port for the rendezvous");
  return ntohs(addr.sin_port);
}

std::vector<ChildSpec> children(const Args& a) {
  const int world_size = a.nnodes * a.nproc_per_node;
  std::vector<ChildSpec> out;
  for (int local = 0; local < a.nproc_per_node; ++local) {
    const int rank = a.node_rank * a.nproc_per_node + local;
    ChildSpec c;
    c.argv = a.command;
    c.name = fmt::format("rank {}", rank);
    c.prefix = fmt::format("[rank{}]: ", rank);
    const auto n = [](int v) { return std::to_string(v); };
    c.env = {{"RANK", n(rank)},
             {"LOCAL_RANK", n(local)},
             {"WORLD_SIZE", n(world_size)},
             {"LOCAL_WORLD_SIZE", n(a.nproc_per_node)},
             {"GROUP_RANK", n(a.node_rank)},
             {"GROUP_WORLD_SIZE", n(a.nnodes)},
             {"ROLE_NAME", "default"},
             {"ROLE_RANK", n(rank)},
             {"ROLE_WORLD_SIZE", n(world_size)},
             {"MASTER_ADDR", a.master_addr},
             {"MASTER_PORT", n(a.master_port)},
             {"TORCHELASTIC_RUN_ID", a.rdzv_id},
             {"TORCHELASTIC_RESTART_COUNT", "0"},
             {"TORCHELASTIC_MAX_RESTARTS", "0"},
             {"TORCHELASTIC_USE_AGENT_STORE", "False"}};  // rank 0 hosts the store, not this launcher
    // As torchrun does: several ranks on a node each spawning a thread per core would oversubscribe it.
    if (a.nproc_per_node > 1 && !std::getenv("OMP_NUM_THREADS")) c.env.emplace_back("OMP_NUM_THREADS", "1");
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "shardcast-run: start N ranks of COMMAND on this node, torchrun-style (RANK, WORLD_SIZE, MASTER_ADDR, "
      "...), stream their output with a [rankN]: prefix, forward SIGINT/SIGTERM, and stop all when one fails",
      "shardcast-run"};
  Args a;
  app.add_option("-n,--nproc-per-node,--nproc_per_node", a.nproc_per_node, "ranks to start on this node")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--nnodes", a.nnodes, "nodes in the job (each runs one shardcast-run)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--node-rank,--node_rank", a.node_rank, "this node's index, 0 .. nnodes-1")
      ->check(shardcast::cli::whole_number_at_least(0))
      ->capture_default_str();
  app.add_option("--master-addr,--master_addr", a.master_addr,
                 "host of global rank 0, which hosts the rendezvous store")
      ->capture_default_str();
  app.add_option("--master-port,--master_port", a.master_port,
                 "port of the rendezvous store (default: 29500 with --nnodes > 1, else a free port)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--rdzv-id,--rdzv_id", a.rdzv_id, "job id shared by the nodes (TORCHELASTIC_RUN_ID)")
      ->capture_default_str();
  app.add_flag("--standalone", a.standalone, "one node, rendezvous on localhost (the default with --nnodes 1)");
  app.add_option("--stop-timeout", a.stop_timeout_s, "seconds ranks get to exit after SIGTERM before SIGKILL")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.prefix_command();  // everything from the first positional on is the command, its flags included
  app.footer("COMMAND [ARGS...]: the program each rank runs (looked up in PATH), and its arguments\n");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // usage errors exit 2, as in shardcast (CLI11's own codes start at 100)
  }
  const auto usage_error = [](const std::string& message) {
    fmt::print(stderr, "shardcast-run: error: {}\n", message);
    return 2;
  };
  a.command = app.remaining();
  // An explicit `--` ends the options: what follows is the command even if it starts with '-'.
  const bool after_double_dash = !a.command.empty() && a.command[0] == "--";
  if (after_double_dash) a.command.erase(a.command.begin());
  if (a.command.empty()) return usage_error(fmt::format("no COMMAND given\n{}", app.help()));
  if (!after_double_dash && a.command[0].size() > 1 && a.command[0][0] == '-') {
    return usage_error(
        fmt::format("unknown option '{}' (see --help; put -- before a command that starts with -)", a.command[0]));
  }
  if (a.node_rank >= a.nnodes) {
    return usage_error(
        fmt::format("--node-rank {} is not in 0 .. {} (--nnodes {})", a.node_rank, a.nnodes - 1, a.nnodes));
  }
  if (a.standalone && a.nnodes != 1) return usage_error("--standalone runs one node: drop --nnodes");

  try {
    if (a.standalone) a.master_addr = "127.0.0.1";
    if (a.master_port == 0) a.master_port = a.nnodes == 1 ? free_port() : 29500;
    shardcast::SupervisorOptions options;
    options.stop_grace = std::chrono::milliseconds(static_cast<long long>(a.stop_timeout_s * 1000));
    remove_expired_kept_copies();
    const int status = shardcast::supervise(children(a), options);
    if (status != 0) remove_leftover_segments();
    return status;
  } catch (const std::exception& e) {
    fmt::print(stderr, "shardcast-run: error: {}\n", e.what());
    return 1;
  }
}
