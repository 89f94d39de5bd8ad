// `shardcast`: inspect, verify, digest, convert and synthesize checkpoints.
#include <cstdio>
#include <exception>

#include "core/error.h"
#include "shardcast/config.h"
#include "tools/commands.h"

namespace shardcast::cli {
int exit_code = 0;
}

int main(int argc, char** argv) {
  CLI::App app{"shardcast: load big checkpoints into distributed jobs with one host copy per node"};
  app.set_version_flag("--version", SHARDCAST_VERSION);
  app.require_subcommand(1);
  shardcast::cli::add_inspect(app);
  shardcast::cli::add_verify(app);
  shardcast::cli::add_digest(app);
  shardcast::cli::add_convert(app);
  shardcast::cli::add_synth(app);
  shardcast::cli::add_load(app);
  shardcast::cli::add_plan(app);
  shardcast::cli::add_gc(app);
  shardcast::cli::add_ls(app);
  shardcast::cli::add_doctor(app);
  shardcast::cli::add_info(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;  // usage errors exit 2, as POSIX tools do
  } catch (const shardcast::Error& e) {
    std::fprintf(stderr, "shardcast: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardcast: internal error: %s\n", e.what());
    return 1;
  }
  return shardcast::cli::exit_code;
}
