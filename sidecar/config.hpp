// The sidecar's command line, and where its connection string comes from.
#pragma once

#include "log.hpp"

#include <string>

namespace kafka_sync_sidecar {

constexpr const char *kVersion = "0.1.0";

// The environment variable that may hold the connection string.
constexpr const char *kDsnEnvironmentVariable = "KAFKA_SYNC_SIDECAR_DSN";

struct Options {
    std::string dsn;
    std::string dsn_source; // where dsn came from, for messages: --dsn, --dsn-file PATH, $KAFKA_SYNC_SIDECAR_DSN
    bool dsn_secret_in_argv = false; // --dsn with a password: every local user can read it in ps
    bool check = false;
    LogLevel log_level = LogLevel::Info;
};

// Parses argv and reads the connection string from the one source given
// (--dsn, --dsn-file or $KAFKA_SYNC_SIDECAR_DSN, which is then removed from the
// environment). Returns -1 to go on, or the exit code when the command line
// was fully handled (--help, --version: 0) or is wrong (2, with a message on
// stderr that shows no secret).
int parse_command_line(int argc, char **argv, Options &options);

// The connection string held in path. Refused (false, error set) unless only
// its owner can read it, or root owns it and its group may only read it: the
// rule libpq applies to a client's SSL key and PostgreSQL to the server's.
bool read_dsn_file(const std::string &path, std::string &dsn, std::string &error);

} // namespace kafka_sync_sidecar
