// Each `shardcast` subcommand registers itself on the app and runs when chosen.
#pragma once

#include <CLI/CLI.hpp>

namespace shardcast::cli {

// Set by a subcommand's callback: the process exit code.
extern int exit_code;

void add_inspect(CLI::App& app);
void add_verify(CLI::App& app);
void add_digest(CLI::App& app);
void add_convert(CLI::App& app);
void add_synth(CLI::App& app);
void add_info(CLI::App& app);
void add_load(CLI::App& app);
void add_plan(CLI::App& app);
void add_gc(CLI::App& app);
void add_ls(CLI::App& app);
void add_doctor(CLI::App& app);

}  // namespace shardcast::cli
