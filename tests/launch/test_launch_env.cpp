// Launcher detection from the environment alone: each launcher's variables, launchers nested in a SLURM allocation,
// and the mistakes that would otherwise leave each rank loading alone.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "launch/launch_env.h"

namespace shardcast {
namespace {

LaunchEnv detect(const std::map<std::string, std::string>& vars) {
  return detect_launch_env([&](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
  });
}

std::string error_of(const std::map<std::string, std::string>& vars) {
  try {
    detect(vars);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// What srun --mpi=pmix gives task 3 of 4 in step 0 of job 77.
const std::map<std::string, std::string> kSrunTask = {
    {"SLURM_JOB_ID", "77"}, {"SLURM_STEP_ID", "0"},        {"SLURM_PROCID", "3"}, {"SLURM_LOCALID", "1"},
    {"SLURM_NODEID", "1"},  {"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_NTASKS", "4"}, {"PMIX_RANK", "3"}};

TEST(LaunchEnv, NothingSetIsAJobOfOne) {
  LaunchEnv e = detect({});
  EXPECT_EQ(e.launcher, Launcher::kNone);
  EXPECT_NE(e.describe().find("no launcher variables"), std::string::npos);
  EXPECT_TRUE(e.job_id.empty());
}

TEST(LaunchEnv, OpenMpi) {
  LaunchEnv e = detect({{"OMPI_COMM_WORLD_RANK", "2"},
                        {"OMPI_COMM_WORLD_SIZE", "8"},
                        {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                        {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                        {"PMIX_RANK", "2"}});
  EXPECT_EQ(e.launcher, Launcher::kOpenMpi);
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_size, 4);
  EXPECT_EQ(e.describe(), "openmpi (OMPI_COMM_WORLD_RANK=2, OMPI_COMM_WORLD_SIZE=8)");
}

TEST(LaunchEnv, SrunWithPmixGivesSlurmAndAJobIdPerStep) {
  LaunchEnv e = detect(kSrunTask);
  EXPECT_EQ(e.launcher, Launcher::kSlurm);
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.node_rank, 1);
  EXPECT_EQ(e.job_id, "slurm-77.0");
  auto next_step = kSrunTask;
  next_step["SLURM_STEP_ID"] = "1";
  EXPECT_NE(detect(next_step).job_id, e.job_id) << "concurrent steps of one job must not share segments";
}

TEST(LaunchEnv, SrunWithoutAPmiPluginIsRefusedWithTheFix) {
  auto vars = kSrunTask;
  vars.erase("PMIX_RANK");
  EXPECT_NE(error_of(vars).find("srun started 4 tasks without a PMI plugin"), std::string::npos) << error_of(vars);
  EXPECT_NE(error_of(vars).find("srun --mpi=pmix"), std::string::npos);
}

TEST(LaunchEnv, ABatchScriptOutsideSrunIsAJobOfOne) {
  LaunchEnv e = detect({{"SLURM_JOB_ID", "77"}, {"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "0"}});
  EXPECT_EQ(e.launcher, Launcher::kNone);
}

TEST(LaunchEnv, Torchrun) {
  LaunchEnv e = detect({{"RANK", "5"},
                        {"WORLD_SIZE", "8"},
                        {"LOCAL_RANK", "1"},
                        {"LOCAL_WORLD_SIZE", "4"},
                        {"GROUP_RANK", "1"},
                        {"MASTER_ADDR", "node0"},
                        {"MASTER_PORT", "29500"},
                        {"TORCHELASTIC_RUN_ID", "abc"},
                        {"TORCHELASTIC_RESTART_COUNT", "2"}});
  EXPECT_EQ(e.launcher, Launcher::kTorchrun);
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.local_size, 4);
  EXPECT_EQ(e.node_rank, 1);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_FALSE(e.agent_store);
  EXPECT_EQ(e.job_id, "torchrun-abc");
  EXPECT_EQ(e.store_namespace, "shardcast/abc/attempt2");
}

TEST(LaunchEnv, TorchrunsDefaultRunIdIsNoJobId) {
  LaunchEnv e = detect({{"RANK", "0"},
                        {"WORLD_SIZE", "2"},
                        {"MASTER_ADDR", "h"},
                        {"MASTER_PORT", "1"},
                        {"TORCHELASTIC_RUN_ID", "none"}});
  EXPECT_TRUE(e.job_id.empty()) << "every torchrun without --rdzv-id says 'none'; rank 0 must make one";
}

TEST(LaunchEnv, TorchrunAgentStore) {
  LaunchEnv e = detect({{"RANK", "0"},
                        {"WORLD_SIZE", "2"},
                        {"MASTER_ADDR", "h"},
                        {"MASTER_PORT", "1"},
                        {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  EXPECT_TRUE(e.agent_store);
}

TEST(LaunchEnv, TorchrunInsideASlurmStepIsTorchrun) {
  auto vars = kSrunTask;
  vars.insert({{"RANK", "6"}, {"WORLD_SIZE", "8"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "29500"}});
  LaunchEnv e = detect(vars);
  EXPECT_EQ(e.launcher, Launcher::kTorchrun);
  EXPECT_EQ(e.rank, 6);
}

TEST(LaunchEnv, MpirunInsideAnAllocationIsOpenMpi) {
  LaunchEnv e = detect(
      {{"SLURM_JOB_ID", "77"}, {"SLURM_NTASKS", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "1"}});
  EXPECT_EQ(e.launcher, Launcher::kOpenMpi);
}

TEST(LaunchEnv, MpichStylePmi) {
  LaunchEnv e = detect({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}});
  EXPECT_EQ(e.launcher, Launcher::kPmi);
  EXPECT_EQ(e.world_size, 2);
}

TEST(LaunchEnv, MalformedValuesAreNamed) {
  EXPECT_EQ(error_of({{"RANK", "one"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
            "environment variable RANK='one' is not a non-negative integer");
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find("MASTER_ADDR and MASTER_PORT are not both set"),
            std::string::npos);
  EXPECT_EQ(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
            "RANK=2 is not below WORLD_SIZE=2");
  EXPECT_EQ(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}),
            "MASTER_PORT=70000 is not a TCP port");
  EXPECT_EQ(error_of({{"SHARDCAST_RANKS_PER_NODE", "0"}}),
            "SHARDCAST_RANKS_PER_NODE=0: a virtual node needs at least one rank");
  EXPECT_EQ(error_of({{"SHARDCAST_RANKS_PER_NODE", "2x"}}),
            "environment variable SHARDCAST_RANKS_PER_NODE='2x' is not a non-negative integer");
}

TEST(LaunchEnv, ShardcastJobIdOverridesTheLaunchers) {
  auto vars = kSrunTask;
  vars["SHARDCAST_JOB_ID"] = "mine";
  EXPECT_EQ(detect(vars).job_id, "mine");
}

}  // namespace
}  // namespace shardcast
