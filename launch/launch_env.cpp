#include "launch/launch_env.h"

#include <charconv>
#include <cstdlib>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)

#include "core/error.h"

namespace shardcast {
namespace {

class Env {
 public:
  explicit Env(const EnvLookup& lookup) : lookup_(lookup) {}

  std::optional<std::string> text(const std::string& name) const {
    auto value = lookup_(name);
    if (value && value->empty()) return std::nullopt;  // set but empty counts as unset, as launchers clear that way
    return value;
  }
  bool has(const std::string& name) const { return text(name).has_value(); }

  // -1 when unset; a set value must be a non-negative integer.
  int number(const std::string& name) const {
    auto value = text(name);
    if (!value) return -1;
    int out = 0;
    auto [end, ec] = std::from_chars(value->data(), value->data() + value->size(), out);
    if (ec != std::errc() || end != value->data() + value->size() || out < 0) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("environment variable {}='{}' is not a non-negative integer", name, *value));
    }
    return out;
  }

  std::string show(const std::vector<std::string>& names) const {
    std::vector<std::string> parts;
    for (const std::string& name : names) {
      if (has(name)) parts.push_back(name + "=" + *text(name));
    }
    return fmt::format("{}", fmt::join(parts, ", "));
  }

 private:
  const EnvLookup& lookup_;
};

LaunchEnv from_open_mpi(const Env& env) {
  LaunchEnv e;
  e.launcher = Launcher::kOpenMpi;
  e.rank = env.number("OMPI_COMM_WORLD_RANK");
  e.world_size = env.number("OMPI_COMM_WORLD_SIZE");
  e.local_rank = env.number("OMPI_COMM_WORLD_LOCAL_RANK");
  e.local_size = env.number("OMPI_COMM_WORLD_LOCAL_SIZE");
  e.evidence = env.show({"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"});
  return e;
}

LaunchEnv from_torchrun(const Env& env) {
  if (!env.has("MASTER_ADDR") || !env.has("MASTER_PORT")) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("{} are set but MASTER_ADDR and MASTER_PORT are not both set: a torchrun-style launch "
                            "needs the address of the rendezvous store",
                            env.show({"RANK", "WORLD_SIZE"})));
  }
  LaunchEnv e;
  e.launcher = Launcher::kTorchrun;
  e.rank = env.number("RANK");
  e.world_size = env.number("WORLD_SIZE");
  e.local_rank = env.number("LOCAL_RANK");
  e.local_size = env.number("LOCAL_WORLD_SIZE");
  e.node_rank = env.number("GROUP_RANK");
  e.master_addr = *env.text("MASTER_ADDR");
  e.master_port = env.number("MASTER_PORT");
  if (e.master_port < 1 || e.master_port > 65535) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("MASTER_PORT={} is not a TCP port", e.master_port));
  }
  if (e.rank >= e.world_size) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("RANK={} is not below WORLD_SIZE={}", e.rank, e.world_size));
  }
  e.agent_store = env.text("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  // torchrun's default run id is the literal "none": shared by every job that did not pass --rdzv-id, so no job id.
  const std::string run_id = env.text("TORCHELASTIC_RUN_ID").value_or("none");
  if (run_id != "none") e.job_id = "torchrun-" + run_id;
  // Another job's ranks that reach this store by mistake, or a restarted attempt, must not read these keys.
  e.store_namespace =
      fmt::format("shardcast/{}/attempt{}", run_id, env.text("TORCHELASTIC_RESTART_COUNT").value_or("0"));
  e.evidence = env.show({"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"});
  return e;
}

LaunchEnv from_slurm(const Env& env) {
  LaunchEnv e;
  e.launcher = Launcher::kSlurm;
  e.rank = env.number("SLURM_PROCID");
  e.world_size = env.has("SLURM_STEP_NUM_TASKS") ? env.number("SLURM_STEP_NUM_TASKS") : env.number("SLURM_NTASKS");
  e.local_rank = env.number("SLURM_LOCALID");
  e.node_rank = env.number("SLURM_NODEID");
  e.job_id =
      fmt::format("slurm-{}.{}", env.text("SLURM_JOB_ID").value_or("0"), env.text("SLURM_STEP_ID").value_or("0"));
  e.evidence =
      env.show({"SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_JOB_ID", "SLURM_STEP_ID", "PMIX_RANK", "PMI_RANK"});
  return e;
}

LaunchEnv from_pmi(const Env& env) {
  LaunchEnv e;
  e.launcher = Launcher::kPmi;
  e.rank = env.number("PMI_RANK");
  e.world_size = env.number("PMI_SIZE");
  e.evidence = env.show({"PMI_RANK", "PMI_SIZE"});
  return e;
}

LaunchEnv detect(const Env& env) {
  // Order matters where launchers nest: mpirun or torchrun inside a SLURM allocation still see SLURM_* variables of
  // the allocation, so the innermost launcher's variables are looked at first.
  if (env.has("OMPI_COMM_WORLD_SIZE")) return from_open_mpi(env);
  if (env.has("RANK") && env.has("WORLD_SIZE")) return from_torchrun(env);
  const bool pmi = env.has("PMIX_RANK") || env.has("PMI_RANK");
  if (env.has("SLURM_PROCID") && env.has("SLURM_STEP_ID") && pmi) return from_slurm(env);
  if (env.has("PMI_RANK") && env.has("PMI_SIZE")) return from_pmi(env);
  if (env.has("SLURM_STEP_ID") && env.number("SLURM_STEP_NUM_TASKS") > 1) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("srun started {} tasks without a PMI plugin ({}; no PMIX_RANK or PMI_RANK), so each task "
                            "would load alone: run `srun --mpi=pmix` (see launch/slurm/README.md)",
                            env.number("SLURM_STEP_NUM_TASKS"), env.show({"SLURM_STEP_NUM_TASKS", "SLURM_PROCID"})));
  }
  LaunchEnv e;
  e.evidence =
      "no launcher variables (OMPI_COMM_WORLD_SIZE, RANK and WORLD_SIZE, SLURM_PROCID with PMIX_RANK, PMI_RANK)";
  return e;
}

}  // namespace

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone: return "none";
    case Launcher::kOpenMpi: return "openmpi";
    case Launcher::kSlurm: return "slurm";
    case Launcher::kPmi: return "pmi";
    case Launcher::kTorchrun: return "torchrun";
  }
  return "?";
}

std::string LaunchEnv::describe() const {
  return fmt::format("{} ({})", launcher_name(launcher), evidence);
}

LaunchEnv detect_launch_env(const EnvLookup& lookup) {
  const Env env(lookup);
  LaunchEnv e = detect(env);
  if (env.has("SHARDCAST_JOB_ID")) e.job_id = *env.text("SHARDCAST_JOB_ID");
  if (env.has("SHARDCAST_RANKS_PER_NODE")) {
    e.ranks_per_node = env.number("SHARDCAST_RANKS_PER_NODE");
    if (e.ranks_per_node == 0) {
      throw Error(ErrorCode::kInvalidArgument, "SHARDCAST_RANKS_PER_NODE=0: a virtual node needs at least one rank");
    }
  }
  return e;
}

LaunchEnv detect_launch_env() {
  return detect_launch_env([](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    return value ? std::optional<std::string>(value) : std::nullopt;
  });
}

}  // namespace shardcast
