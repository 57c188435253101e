// The sidecar's command line.
#pragma once

#include "log.hpp"

#include <string>

namespace kafka_sync_sidecar {

constexpr const char *kVersion = "0.1.0";

struct Options {
    std::string dsn;
    bool check = false;
    LogLevel log_level = LogLevel::Info;
};

// Parses argv. Returns -1 to go on, or the exit code when the command line was
// fully handled (--help, --version: 0) or is wrong (2, with a message on stderr).
int parse_command_line(int argc, char **argv, Options &options);

} // namespace kafka_sync_sidecar
