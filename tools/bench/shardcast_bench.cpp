// shardcast-bench: node memory and load time of shardcast against the loaders jobs use today, side by side in one
// invocation. Every configuration runs under mpirun; memory is sampled from /proc/meminfo while it runs. `nodes`
// compares the storage bytes a whole job reads on K virtual nodes.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "coordinator/catalog.h"
#include "coordinator/synth.h"
#include "core/error.h"
#include "core/io_stats.h"
#include "core/size.h"
#include "shm/file_view.h"
#include "shm/kept_copies.h"
#include "tools/bench/baseline_loaders.h"
#include "tools/bench/gpu_bench.h"
#include "tools/bench/header_bench.h"
#include "tools/bench/node_memory.h"
#include "tools/bench/svg_chart.h"
#include "tools/cli_checks.h"

namespace fs = std::filesystem;
using namespace shardcast;
using namespace shardcast::bench;

namespace {

std::string self_dir() {
  return fs::canonical("/proc/self/exe").parent_path().string();
}

std::vector<std::string> mpirun(int ranks) {
  std::vector<std::string> argv{"mpirun", "-np", std::to_string(ranks), "--oversubscribe", "--bind-to", "none"};
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  return argv;
}

struct Method {
  std::string name;  // as in the table
  std::string key;   // naive, mmap, shared, private
};

// shardcast's own options for the matrix: --dtype, passed to every shardcast method.
std::vector<std::string> shardcast_flags;

// Where method "kept" keeps its copies: a tmpfs directory of the bench's own, so that the user's kept copies are
// neither reused nor removed.
fs::path kept_dir() {
  return fs::path("/dev/shm") / fmt::format("bench-kept-{}", getpid());
}

std::vector<std::string> rank_command(const Method& m, const fs::path& checkpoint, const fs::path& report) {
  if (m.key == "cat") {  // the storage limit: one reader, nothing kept
    std::string files;
    for (const auto& e : fs::directory_iterator(checkpoint)) {
      if (e.path().extension() == ".safetensors") files += " '" + e.path().string() + "'";
    }
    return {"sh", "-c", "cat" + files + " > /dev/null"};
  }
  if (m.key == "naive" || m.key == "mmap") {
    return {self_dir() + "/shardcast-bench",
            "rank",
            "--method",
            m.key,
            checkpoint.string(),
            "--report-out",
            report.string()};
  }
  std::vector<std::string> argv{self_dir() + "/shardcast", "load", checkpoint.string(), "--report-out",
                                report.string()};
  if (m.key == "shared-leader") {
    argv.push_back("--leader-reads-only");
  } else if (m.key == "staged" || m.key == "mapped") {
    argv.insert(argv.end(), {"--placement", "shared", "--map-files", m.key == "staged" ? "never" : "always"});
  } else if (m.key == "kept") {  // staged as "staged" is, but by the job before, which kept it
    argv.insert(argv.end(),
                {"--placement", "shared", "--map-files", "never", "--keep", "10m", "--shm-dir", kept_dir().string()});
  } else {
    argv.insert(argv.end(), {"--placement", m.key});
  }
  argv.insert(argv.end(), shardcast_flags.begin(), shardcast_flags.end());
  return argv;
}

// S: the bytes of the checkpoint's safetensors files, headers included.
uint64_t safetensors_bytes(const fs::path& checkpoint) {
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(checkpoint)) {
    if (e.path().extension() == ".safetensors") total += e.file_size();
  }
  return total;
}

// Bytes of the checkpoint's safetensors files in the page cache now (mincore): the node's one copy of mapped tensors.
uint64_t safetensors_bytes_cached(const fs::path& checkpoint) {
  uint64_t cached = 0;
  for (const auto& e : fs::directory_iterator(checkpoint)) {
    if (e.path().extension() != ".safetensors") continue;
    const auto view = shm::FileView::map(e.path(), shm::Access::kReadOnly);
    cached += view->resident_bytes(0, view->size());
  }
  return cached;
}

// What a method needs at its peak, so configurations that cannot fit this machine are skipped, not swapped or killed.
double expected_multiple(const std::string& key, int ranks) {
  if (key == "naive") return 2.0 * ranks;
  if (key == "mmap") return ranks + 1.0;
  if (key == "private") return ranks + 0.5;
  if (key == "cat") return 0;
  return 1.0;
}

// A rank's load once it has joined the job: shardcast's phases (catalog to materialize; joining the job, MPI_Init
// included, is the launcher's cost, not the load's), the baselines' own timing (they join nothing).
double rank_load_seconds(const nlohmann::json& report) {
  if (!report.contains("phases")) return report.at("seconds").get<double>();
  double seconds = 0;
  for (const auto& [phase, s] : report.at("phases").items()) seconds += s.get<double>();
  return seconds;
}

double slowest_rank_seconds(const fs::path& dir, int ranks) {
  double slowest = 0;
  for (int r = 0; r < ranks; ++r) {
    std::ifstream in(dir / fmt::format("report{}.json", r));
    slowest = std::max(slowest, rank_load_seconds(nlohmann::json::parse(in)));
  }
  return slowest;
}

struct Run {
  std::string method;
  int ranks = 0;
  std::string skipped;  // why it did not run
  double wall_s = 0, load_s = 0;
  uint64_t peak = 0, runtime = 0, page_cache = 0, runtime_page_cache = 0;
};

Run run_one(const Method& m, int ranks, const fs::path& checkpoint, const fs::path& tiny, const fs::path& work,
            bool cold) {
  Run run;
  run.method = m.name;
  run.ranks = ranks;
  for (int pass = 0; pass < 2;
       ++pass) {  // pass 0: the per-process runtime alone (tiny checkpoint); pass 1: the real one
    const fs::path dir = work / fmt::format("{}-{}-{}", m.key, ranks, pass);
    fs::create_directories(dir);
    std::vector<std::string> argv = m.key == "cat" ? std::vector<std::string>{} : mpirun(ranks);
    auto cmd = rank_command(m, pass == 0 ? tiny : checkpoint, dir / "report{rank}.json");
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    if (m.key == "kept") {  // the job before this one: it stages the copy and keeps it
      fs::create_directories(kept_dir());
      std::vector<std::string> prime = mpirun(ranks);
      auto prime_cmd = rank_command(m, pass == 0 ? tiny : checkpoint, dir / "prime{rank}.json");
      prime.insert(prime.end(), prime_cmd.begin(), prime_cmd.end());
      if (measure_command(prime).exit_code != 0) {
        throw Error(ErrorCode::kSystem,
                    fmt::format("{} with {} ranks: the job that keeps the copy failed", m.name, ranks));
      }
    }
    if (cold) drop_page_cache();
    Measurement meas = measure_command(argv);
    if (meas.exit_code != 0)
      throw Error(ErrorCode::kSystem, fmt::format("{} with {} ranks failed (exit {})", m.name, ranks, meas.exit_code));
    if (m.key == "kept") {
      // The copy was there before the job, so the sampling above does not see it; the node holds it all the same.
      meas.peak_unreclaimable += shm::kept_bytes(shm::Location{kept_dir()});
      fs::remove_all(kept_dir());
    }
    if (pass == 0) {
      run.runtime = meas.peak_unreclaimable;
      run.runtime_page_cache = meas.peak_page_cache;  // the binaries and libraries themselves
    } else {
      run.wall_s = meas.seconds;
      run.peak = meas.peak_unreclaimable;
      run.page_cache = meas.peak_page_cache;
      run.load_s = m.key == "cat" ? meas.seconds : slowest_rank_seconds(dir, ranks);
    }
  }
  return run;
}

// The markdown table and the SVG chart, both from the JSON results (so `plot` can redraw them without re-running).
void write_table_and_chart(const nlohmann::ordered_json& results, const std::string& out_prefix) {
  const uint64_t bytes = results.at("checkpoint_bytes").get<uint64_t>();
  std::string md =
      "| method | ranks | load time (s) | time / time at 1 rank | node memory (x S) | page cache (x S) |\n"
      "|---|---:|---:|---:|---:|---:|\n";
  std::map<std::string, double> first_time;
  std::vector<double> x;
  std::vector<Series> series;
  for (const auto& r : results.at("runs")) {
    const std::string method = r.at("method").get<std::string>();
    const int ranks = r.at("ranks").get<int>();
    if (std::find(x.begin(), x.end(), ranks) == x.end()) x.push_back(ranks);
    if (series.empty() || series.back().name != method) series.push_back({method, {}});
    if (r.contains("skipped")) {
      md += fmt::format("| {} | {} | skipped: {} | | | |\n", method, ranks, r.at("skipped").get<std::string>());
      series.back().y.push_back(std::nan(""));
      continue;
    }
    const double seconds = r.at("load_seconds").get<double>();
    if (!first_time.count(method)) first_time[method] = seconds;
    md += fmt::format("| {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |\n", method, ranks, seconds,
                      seconds / first_time[method], r.at("node_memory_multiple").get<double>(),
                      r.at("page_cache_multiple").get<double>());
    series.back().y.push_back(r.at("node_memory_multiple").get<double>());
  }
  std::ofstream(out_prefix + ".md") << md;
  std::ofstream(out_prefix + ".svg") << line_chart_svg(
      fmt::format("Node memory while loading a {} checkpoint", format_size(bytes)), "ranks per node",
      "node memory / checkpoint size", x, series);
  fmt::print("{}", md);
  fmt::print("wrote {0}.md, {0}.svg\n", out_prefix);
}

int run_matrix(const std::string& checkpoint_arg, const std::string& size_text, const std::vector<int>& rank_counts,
               const std::vector<std::string>& method_keys, const std::string& out_prefix, bool cold) {
  const fs::path work = fs::temp_directory_path() / fmt::format("shardcast-bench-{}", getpid());
  fs::create_directories(work);
  fs::path checkpoint = checkpoint_arg;
  if (checkpoint.empty()) {
    checkpoint = work / "checkpoint";
    synthesize_checkpoint(checkpoint, parse_size(size_text), 0, CheckpointFormat::kSafetensors, true);
  }
  const fs::path tiny = work / "tiny";
  synthesize_checkpoint(tiny, 2'000'000, 0, CheckpointFormat::kSafetensors, true);
  const uint64_t bytes = safetensors_bytes(checkpoint);

  const std::map<std::string, std::string> names = {{"naive", "naive (private read + copy)"},
                                                    {"mmap", "per-rank mmap + copy"},
                                                    {"shared", "shardcast shared (map_files auto)"},
                                                    {"staged", "shardcast shared, staged (map_files never)"},
                                                    {"mapped", "shardcast shared, mapped (map_files always)"},
                                                    {"kept", "shardcast shared, kept copy of the job before (--keep)"},
                                                    {"cat", "cat shards > /dev/null (the storage limit)"},
                                                    {"private", "shardcast private"},
                                                    {"shared-leader", "shardcast shared, leader reads alone"}};
  const uint64_t node_memory = read_meminfo().total;
  std::vector<Run> runs;
  for (const std::string& key : method_keys) {
    if (!names.count(key)) throw Error(ErrorCode::kInvalidArgument, fmt::format("unknown method '{}'", key));
    for (int n : rank_counts) {
      const double needed = expected_multiple(key, n) * bytes;
      if (key == "cat" && n != 1) continue;  // one reader is the storage limit
      if (needed > 0.8 * node_memory) {
        Run skipped;
        skipped.method = names.at(key);
        skipped.ranks = n;
        skipped.skipped = fmt::format("needs about {} of {} RAM", format_size(static_cast<uint64_t>(needed)),
                                      format_size(node_memory));
        fmt::print(stderr, "shardcast-bench: skipping {} with {} rank(s): {}\n", names.at(key), n, skipped.skipped);
        runs.push_back(skipped);
        continue;
      }
      fmt::print(stderr, "shardcast-bench: {} with {} rank(s) ...\n", names.at(key), n);
      runs.push_back(run_one({names.at(key), key}, n, checkpoint, tiny, work, cold));
    }
  }

  nlohmann::ordered_json out;
  out["checkpoint_bytes"] = bytes;
  out["cold_page_cache"] = cold;
  out["cores"] = std::thread::hardware_concurrency();
  out["node_memory_bytes"] = node_memory;
  out["runs"] = nlohmann::ordered_json::array();
  for (const Run& r : runs) {
    if (!r.skipped.empty()) {
      out["runs"].push_back({{"method", r.method}, {"ranks", r.ranks}, {"skipped", r.skipped}});
      continue;
    }
    const double net = static_cast<double>(r.peak > r.runtime ? r.peak - r.runtime : 0) / bytes;
    const double cache =
        static_cast<double>(r.page_cache > r.runtime_page_cache ? r.page_cache - r.runtime_page_cache : 0) / bytes;
    out["runs"].push_back({{"method", r.method},
                           {"ranks", r.ranks},
                           {"load_seconds", r.load_s},
                           {"wall_seconds", r.wall_s},
                           {"peak_unreclaimable_bytes", r.peak},
                           {"runtime_unreclaimable_bytes", r.runtime},
                           {"node_memory_multiple", net},
                           {"page_cache_multiple", cache}});
  }
  std::ofstream(out_prefix + ".json") << out.dump(2) << "\n";
  write_table_and_chart(out, out_prefix);
  fs::remove_all(work);
  fs::remove_all(kept_dir());
  return 0;
}

// ---- `nodes`: storage bytes read by the whole job on K nodes of r ranks (issue 5) ----

// The per-rank readers against shardcast with its defaults (shared placement, every local rank reading).
const std::map<std::string, Method>& node_methods() {
  static const std::map<std::string, Method> methods = {{"naive", {"naive (private read + copy)", "naive"}},
                                                        {"mmap", {"per-rank mmap + copy", "mmap"}},
                                                        {"shardcast", {"shardcast", "shared"}}};
  return methods;
}

// Memory a job needs at its peak, as a multiple of S: on one machine every virtual node holds its own segments.
double expected_job_multiple(const std::string& key, int nodes, int ranks_per_node) {
  return key == "shared" ? nodes : expected_multiple(key, nodes * ranks_per_node);
}

struct JobRun {
  std::string method;
  int nodes = 0, ranks = 0;
  std::string skipped;  // why it did not run
  double load_s = 0, wall_s = 0;
  std::vector<uint64_t> rank_bytes_read;  // by rank
};

// Every rank's report of one job: what it read from storage, the slowest rank's time, and (shardcast only) the node
// count the ranks agreed on, which must be K or the row would not measure K nodes.
void read_job_reports(const fs::path& dir, int nodes, JobRun& run) {
  for (int r = 0; r < run.ranks; ++r) {
    const fs::path path = dir / fmt::format("report{}.json", r);
    std::ifstream in(path);
    if (!in)
      throw Error(ErrorCode::kSystem, fmt::format("{}: rank {} wrote no report {}", run.method, r, path.string()));
    const auto report = nlohmann::json::parse(in);
    run.rank_bytes_read.push_back(report.at("rank_bytes_read").get<uint64_t>());
    run.load_s = std::max(run.load_s, rank_load_seconds(report));
    if (report.contains("node_count") && report["node_count"].get<int>() != nodes) {
      throw Error(ErrorCode::kSystem, fmt::format("{}: rank {} ran on {} node(s), not {}: SHARDCAST_RANKS_PER_NODE was "
                                                  "not applied",
                                                  run.method, r, report["node_count"].get<int>(), nodes));
    }
  }
}

JobRun run_job(const Method& m, int nodes, int ranks_per_node, const fs::path& checkpoint, const fs::path& work,
               bool cold) {
  JobRun run;
  run.method = m.name;
  run.nodes = nodes;
  run.ranks = nodes * ranks_per_node;
  const fs::path dir = work / fmt::format("nodes-{}-{}", m.key, nodes);
  fs::create_directories(dir);
  std::vector<std::string> argv = mpirun(run.ranks);
  // Only shardcast has nodes to form; the per-rank readers read alone whatever the grouping.
  if (m.key == "shared") argv.insert(argv.end(), {"-x", fmt::format("SHARDCAST_RANKS_PER_NODE={}", ranks_per_node)});
  const auto cmd = rank_command(m, checkpoint, dir / "report{rank}.json");
  argv.insert(argv.end(), cmd.begin(), cmd.end());
  if (cold) drop_page_cache();
  const Measurement meas = measure_command(argv);
  if (meas.exit_code != 0) {
    throw Error(ErrorCode::kSystem, fmt::format("{} on {} node(s) of {} rank(s) failed (exit {})", m.name, nodes,
                                                ranks_per_node, meas.exit_code));
  }
  run.wall_s = meas.seconds;
  read_job_reports(dir, nodes, run);
  return run;
}

// Throws unless the file was written in full: the results are the point of the run.
void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) throw Error(ErrorCode::kSystem, fmt::format("cannot write '{}'", path));
}

nlohmann::ordered_json job_json(const JobRun& r, uint64_t checkpoint_bytes) {
  nlohmann::ordered_json j{{"method", r.method}, {"nodes", r.nodes}, {"ranks", r.ranks}};
  const int ranks_per_node = r.nodes > 0 ? r.ranks / r.nodes : 1;
  if (!r.skipped.empty()) {
    j["skipped"] = r.skipped;
    return j;
  }
  uint64_t job_bytes = 0;
  for (uint64_t b : r.rank_bytes_read) job_bytes += b;
  j["job_bytes_read"] = job_bytes;
  j["job_bytes_read_multiple"] = static_cast<double>(job_bytes) / checkpoint_bytes;
  j["load_seconds"] = r.load_s;
  j["wall_seconds"] = r.wall_s;
  j["rank_bytes_read"] = r.rank_bytes_read;
  // What each node read (its ranks are consecutive), against its even share S/K.
  std::vector<uint64_t> node_bytes(r.nodes, 0);
  for (size_t rank = 0; rank < r.rank_bytes_read.size(); ++rank)
    node_bytes[rank / ranks_per_node] += r.rank_bytes_read[rank];
  j["node_bytes_read"] = node_bytes;
  j["busiest_node_share_multiple"] =
      static_cast<double>(*std::max_element(node_bytes.begin(), node_bytes.end())) * r.nodes / checkpoint_bytes;
  return j;
}

void write_nodes_table(const nlohmann::ordered_json& results, const std::string& out_prefix) {
  const uint64_t bytes = results.at("checkpoint_bytes").get<uint64_t>();
  std::string md = fmt::format(
      "S = {} bytes ({}); {} ranks per node.\n\n"
      "| method | nodes (K) | ranks | bytes read from storage by the job | job bytes read (x S) | busiest node reads "
      "(x S/K) | load time, slowest rank (s) |\n"
      "|---|---:|---:|---:|---:|---:|---:|\n",
      bytes, format_size(bytes), results.at("ranks_per_node").get<int>());
  for (const auto& r : results.at("runs")) {
    const std::string row = fmt::format("| {} | {} | {} |", r.at("method").get<std::string>(), r.at("nodes").get<int>(),
                                        r.at("ranks").get<int>());
    if (r.contains("skipped")) {
      md += fmt::format("{} skipped: {} | | | |\n", row, r.at("skipped").get<std::string>());
      continue;
    }
    md += fmt::format("{} {} | {:.4f} | {:.3f} | {:.2f} |\n", row, r.at("job_bytes_read").get<uint64_t>(),
                      r.at("job_bytes_read_multiple").get<double>(), r.at("busiest_node_share_multiple").get<double>(),
                      r.at("load_seconds").get<double>());
  }
  write_file(out_prefix + ".md", md);
  fmt::print("{}", md);
  fmt::print("wrote {0}.json, {0}.md\n", out_prefix);
}

struct NodesArgs {
  std::string checkpoint, size = "1GB", out = "bench-nodes";
  std::vector<int> nodes{1, 2, 3};
  int ranks_per_node = 2;
  std::vector<std::string> methods{"naive", "mmap", "shardcast"};
  bool warm = false;
};

// S from the checkpoint's catalog, so a path that holds no safetensors checkpoint fails here, before any job starts.
uint64_t catalog_bytes(const fs::path& checkpoint) {
  const Catalog catalog = open_catalog(checkpoint);
  if (catalog.format != CheckpointFormat::kSafetensors) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("'{}': the per-rank readers read safetensors checkpoints only", checkpoint.string()));
  }
  uint64_t total = 0;
  for (const ShardInfo& shard : catalog.shards) total += shard.file_size;
  return total;
}

// A scratch directory removed however the run ends: it holds a synthesized checkpoint of S bytes.
struct WorkDir {
  fs::path path;
  explicit WorkDir(fs::path p) : path(std::move(p)) { fs::create_directories(path); }
  ~WorkDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
};

// For each K, every method runs one after the other, so each K's rows are measured side by side.
int run_nodes(const NodesArgs& args) {
  const uint64_t size = args.checkpoint.empty() ? parse_size(args.size) : 0;  // bad sizes fail before any work
  const fs::path out_dir = fs::absolute(args.out).parent_path();
  fs::create_directories(out_dir);
  const WorkDir scratch(fs::temp_directory_path() / fmt::format("shardcast-bench-{}", getpid()));
  const fs::path& work = scratch.path;
  fs::path checkpoint = args.checkpoint;
  if (checkpoint.empty()) {
    checkpoint = work / "checkpoint";
    synthesize_checkpoint(checkpoint, size, 0, CheckpointFormat::kSafetensors, true);
  }
  const uint64_t bytes = catalog_bytes(checkpoint);

  const uint64_t node_memory = read_meminfo().total;
  std::vector<JobRun> runs;
  for (int k : args.nodes) {
    for (const std::string& name : args.methods) {
      const Method& m = node_methods().at(name);
      const double needed = expected_job_multiple(m.key, k, args.ranks_per_node) * bytes;
      if (needed > 0.8 * node_memory) {
        JobRun skipped;
        skipped.method = m.name;
        skipped.nodes = k;
        skipped.ranks = k * args.ranks_per_node;
        skipped.skipped = fmt::format("needs about {} of {} RAM", format_size(static_cast<uint64_t>(needed)),
                                      format_size(node_memory));
        fmt::print(stderr, "shardcast-bench: skipping {} on {} node(s): {}\n", m.name, k, skipped.skipped);
        runs.push_back(skipped);
        continue;
      }
      fmt::print(stderr, "shardcast-bench: {} on {} node(s) of {} rank(s) ...\n", m.name, k, args.ranks_per_node);
      runs.push_back(run_job(m, k, args.ranks_per_node, checkpoint, work, !args.warm));
    }
  }

  nlohmann::ordered_json out;
  out["checkpoint_bytes"] = bytes;
  out["ranks_per_node"] = args.ranks_per_node;
  out["cold_page_cache"] = !args.warm;
  out["cores"] = std::thread::hardware_concurrency();
  out["runs"] = nlohmann::ordered_json::array();
  for (const JobRun& r : runs) out["runs"].push_back(job_json(r, bytes));
  write_file(args.out + ".json", out.dump(2) + "\n");
  write_nodes_table(out, args.out);
  return 0;
}

// --out PREFIX: the .json written at the end, after every run, must be writable now.
CLI::Validator output_prefix() {
  return CLI::Validator([](std::string& prefix) { return cli::output_file_problem(prefix + ".json"); }, "PREFIX");
}

CLI::App* add_nodes(CLI::App& app, NodesArgs& args) {
  auto* cmd = app.add_subcommand(
      "nodes", "Storage bytes read by the whole job on K virtual nodes: shardcast against the per-rank readers");
  const CLI::Validator count = cli::whole_number_at_least(1);
  auto* checkpoint =
      cmd->add_option("--checkpoint", args.checkpoint, "safetensors checkpoint (directory, index or file)")
          ->check(CLI::ExistingPath);
  cmd->add_option("--size", args.size, "size of the synthesized checkpoint (without --checkpoint)")
      ->check(cli::size_at_least(1))
      ->capture_default_str()
      ->excludes(checkpoint);
  cmd->add_option("--nodes", args.nodes, "virtual node counts K to try, each a job of K x --ranks-per-node ranks")
      ->delimiter(',')
      ->check(count)
      ->capture_default_str();
  cmd->add_option("--ranks-per-node", args.ranks_per_node, "ranks per virtual node (SHARDCAST_RANKS_PER_NODE)")
      ->check(count)
      ->capture_default_str();
  cmd->add_option("--methods", args.methods, "loaders to compare")
      ->delimiter(',')
      ->check(CLI::IsMember({"naive", "mmap", "shardcast"}))
      ->capture_default_str();
  cmd->add_option("--out", args.out, "prefix of the .json and .md written")
      ->check(output_prefix())
      ->capture_default_str();
  cmd->add_flag("--warm", args.warm, "keep the page cache between runs (default: drop it, as root)");
  return cmd;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The README's demo: N ranks under mpirun load the checkpoint, each rank's digests are checked against
// `shardcast digest`, and the node's memory is compared with what N naive ranks would hold.
int run_demo(const fs::path& checkpoint, int ranks) {
  const fs::path work = fs::temp_directory_path() / fmt::format("shardcast-demo-{}", getpid());
  fs::create_directories(work);
  const std::string shardcast = self_dir() + "/shardcast";
  const fs::path tiny = work / "tiny";
  synthesize_checkpoint(tiny, 2'000'000, 0, CheckpointFormat::kSafetensors, true);

  auto load = [&](const fs::path& ckpt, const std::string& tag) {
    std::vector<std::string> argv = mpirun(ranks);
    for (const std::string& a : {shardcast, std::string("load"), ckpt.string(), std::string("--digest-out"),
                                 (work / (tag + "-digest{rank}.txt")).string(), std::string("--report-out"),
                                 (work / (tag + "-report{rank}.json")).string()}) {
      argv.push_back(a);
    }
    Measurement m = measure_command(argv);
    if (m.exit_code != 0) throw Error(ErrorCode::kSystem, fmt::format("mpirun exited with {}", m.exit_code));
    return m;
  };
  fmt::print("== {} ranks load {} under mpirun\n", ranks, checkpoint.string());
  const Measurement runtime = load(tiny, "tiny");
  const Measurement real = load(checkpoint, "demo");

  // Reference digests, computed by one process straight from the files.
  fs::path reference = work / "reference.txt";
  Measurement digest = measure_command({shardcast, "digest", checkpoint.string(), "--out", reference.string()});
  if (digest.exit_code != 0) throw Error(ErrorCode::kSystem, "shardcast digest failed");
  const std::string expected = read_text(reference);
  int agree = 0;
  for (int r = 0; r < ranks; ++r) {
    const bool same = read_text(work / fmt::format("demo-digest{}.txt", r)) == expected;
    agree += same;
    auto report = nlohmann::json::parse(read_text(work / fmt::format("demo-report{}.json", r)));
    fmt::print("rank {}: {} tensors in {:.2f} s, {} read from storage by this rank, digests {}\n", r,
               report["tensors"].get<int>(), report["seconds"].get<double>(),
               format_size(report["rank_bytes_read"].get<uint64_t>()), same ? "match shardcast digest" : "DIFFER");
  }
  const uint64_t bytes = safetensors_bytes(checkpoint);
  // Node-wide, as DESIGN.md counts it (see node_memory.h): anonymous + shared memory at the peak of the load, minus
  // the same for the tiny checkpoint (the ranks' runtime); and the checkpoint's pages in the page cache, which is the
  // node's one copy of the tensors mapped from the files (the default for safetensors in their own dtype).
  // Other work on the machine moves the first: run it quietly.
  fmt::print("== {}/{} ranks hold bit-exact state dicts\n", agree, ranks);
  const uint64_t held =
      real.peak_unreclaimable > runtime.peak_unreclaimable ? real.peak_unreclaimable - runtime.peak_unreclaimable : 0;
  const uint64_t cached = safetensors_bytes_cached(checkpoint);
  fmt::print(
      "== node held {:.2f}x the model: {} of anonymous + shared memory (net of the ranks' runtime) and {} of the "
      "checkpoint in the page cache (the mapped tensors' one copy, reclaimable), for a {} checkpoint; {} ranks "
      "loading naively would hold {}x\n",
      static_cast<double>(held + cached) / bytes, format_size(held), format_size(cached), format_size(bytes), ranks,
      2 * ranks);
  fmt::print(
      "   (node-wide peak of AnonPages + Shmem: other work running on this machine at the same time moves it{})\n",
      real.peak_unreclaimable > runtime.peak_unreclaimable ? "" : "; here the runtime-only pass peaked higher");
  fs::remove_all(work);
  return agree == ranks ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shardcast-bench: node memory, load time and storage bytes per job, shardcast against per-rank loaders"};
  app.require_subcommand(1);

  auto* run = app.add_subcommand("run", "Run the matrix of methods x ranks per node under mpirun");
  std::string checkpoint, size = "1GB", out = "bench";
  std::vector<int> ranks{1, 2, 4, 8};
  std::vector<std::string> methods{"naive", "mmap", "shared", "private"};
  bool warm = false;
  run->add_option("--checkpoint", checkpoint, "safetensors checkpoint (default: synthesize one of --size)");
  run->add_option("--size", size, "size of the synthesized checkpoint")
      ->check(cli::size_at_least(1))
      ->capture_default_str();
  run->add_option("--ranks", ranks, "ranks per node to try")
      ->delimiter(',')
      ->check(cli::whole_number_at_least(1))
      ->capture_default_str();
  run->add_option("--methods", methods,
                  "naive, mmap, shared (map_files auto), staged, mapped, kept (the job before kept its copy), private, "
                  "shared-leader, cat (storage limit)")
      ->delimiter(',')
      ->capture_default_str();
  run->add_option("--out", out, "prefix of the .json, .md and .svg written")
      ->check(output_prefix())
      ->capture_default_str();
  std::string dtype;
  run->add_option("--dtype", dtype, "passed to shardcast's loads (f32 on a bf16 checkpoint: everything is staged)");
  run->add_flag("--warm", warm,
                "keep the page cache between runs (default: drop it, as root, so each run reads storage)");

  auto* rank = app.add_subcommand("rank", "One rank of a baseline loader (run by `run` and `nodes` under mpirun)");
  std::string method, rank_checkpoint, report;
  rank->add_option("--method", method)->required()->check(CLI::IsMember({"naive", "mmap"}));
  rank->add_option("CHECKPOINT", rank_checkpoint)->required();
  rank->add_option("--report-out", report)->required();

  NodesArgs nodes_args;
  auto* nodes = add_nodes(app, nodes_args);

  auto* measure = app.add_subcommand("measure", "Run a command and print its peak node memory as JSON");
  std::vector<std::string> command;
  measure->add_option("COMMAND", command)->required();

  auto* plot = app.add_subcommand("plot", "Redraw the table and chart of a `run`'s JSON");
  std::string plot_json, plot_out;
  plot->add_option("JSON", plot_json)->required();
  plot->add_option("--out", plot_out, "prefix of the .md and .svg (default: the JSON's)");

  auto* demo = app.add_subcommand("demo", "N ranks load a checkpoint under mpirun; check digests; report node memory");
  std::string demo_checkpoint;
  int demo_ranks = 4;
  demo->add_option("CHECKPOINT", demo_checkpoint)->required();
  demo->add_option("--ranks", demo_ranks)->check(cli::whole_number_at_least(1))->capture_default_str();

  auto* gpu = app.add_subcommand("gpu", "Placement cuda on this machine's GPU against its pinned H2D ceiling");
  GpuBenchArgs gpu_args;
  gpu->add_option("--checkpoint", gpu_args.checkpoint, "safetensors checkpoint (default: synthesize one of --size)");
  gpu->add_option("--size", gpu_args.size, "size of the synthesized checkpoint")
      ->check(cli::size_at_least(1))
      ->capture_default_str();
  gpu->add_option("--rings", gpu_args.rings, "rings to try, SLOTSxSIZE")
      ->delimiter(',')
      ->check(cli::ring_shape())
      ->capture_default_str();
  gpu->add_option("--device", gpu_args.device, "CUDA device index")
      ->check(cli::whole_number_at_least(0))
      ->capture_default_str();
  gpu->add_option("--out", gpu_args.out, "prefix of the .json and .md written")
      ->check(output_prefix())
      ->capture_default_str();

  auto* headers = app.add_subcommand("headers", "Time parsing a safetensors header and an index of N tensors");
  HeaderBenchArgs header_args;
  headers->add_option("--tensors", header_args.tensors, "tensor counts to try")
      ->delimiter(',')
      ->check(cli::whole_number_at_least(1))
      ->capture_default_str();
  headers
      ->add_option("--before-up-to", header_args.before_up_to,
                   "also time the parser used before issue 13 up to this many tensors (it is quadratic)")
      ->check(cli::whole_number_at_least(0))
      ->capture_default_str();
  headers->add_option("--out", header_args.out, "prefix of the .json and .md written")
      ->check(output_prefix())
      ->capture_default_str();

  try {
    app.parse(argc, argv);
    if (*gpu) return run_gpu(gpu_args);
    if (*headers) return run_header_bench(header_args);
    if (!dtype.empty()) shardcast_flags = {"--dtype", dtype};
    if (*run) return run_matrix(checkpoint, size, ranks, methods, out, !warm);
    if (*demo) return run_demo(demo_checkpoint, demo_ranks);
    if (*nodes) return run_nodes(nodes_args);
    if (*plot) {
      std::ifstream in(plot_json);
      auto results = nlohmann::ordered_json::parse(in);
      write_table_and_chart(results, plot_out.empty() ? fs::path(plot_json).replace_extension().string() : plot_out);
      return 0;
    }
    if (*rank) {
      const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
      std::string path = report;
      auto at = path.find("{rank}");
      if (at != std::string::npos) path.replace(at, 6, r ? r : "0");
      const std::string problem = cli::output_file_problem(path);
      if (!problem.empty()) throw Error(ErrorCode::kInvalidArgument, "--report-out: " + problem);
      double seconds = method == "naive" ? load_naive(rank_checkpoint) : load_mmap(rank_checkpoint);
      // The same counter and key as `shardcast load --report-out`, so `nodes` sums both kinds of report alike.
      std::ofstream(path) << nlohmann::json{{"seconds", seconds}, {"rank_bytes_read", checkpoint_bytes_read()}}.dump()
                          << "\n";
      return 0;
    }
    Measurement m = measure_command(command);
    fmt::print("{}\n", nlohmann::json{{"seconds", m.seconds},
                                      {"exit_code", m.exit_code},
                                      {"peak_unreclaimable_bytes", m.peak_unreclaimable},
                                      {"peak_page_cache_bytes", m.peak_page_cache},
                                      {"peak_shmem_bytes", m.peak_shmem}}
                           .dump());
    return m.exit_code;
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "shardcast-bench: error: {}\n", e.what());
    return 1;
  }
}
