// Logging of the sidecar: one timestamped line per event on stderr, safe to
// call from any thread (runners, librdkafka's own threads), and the masking
// that keeps passwords out of every line.
#pragma once

#include <string>
#include <vector>

namespace kafka_sync_sidecar {

enum class LogLevel { Error = 0, Warning = 1, Info = 2, Debug = 3 };

// Parses "error", "warning", "info" or "debug"; false for anything else.
bool parse_log_level(const std::string &text, LogLevel &out);
void set_log_level(LogLevel level);
bool log_enabled(LogLevel level);

void log_line(LogLevel level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ERROR(...) ::kafka_sync_sidecar::log_line(::kafka_sync_sidecar::LogLevel::Error, __VA_ARGS__)
#define LOG_WARNING(...) ::kafka_sync_sidecar::log_line(::kafka_sync_sidecar::LogLevel::Warning, __VA_ARGS__)
#define LOG_INFO(...) ::kafka_sync_sidecar::log_line(::kafka_sync_sidecar::LogLevel::Info, __VA_ARGS__)
#define LOG_DEBUG(...)                                                                                                 \
    do {                                                                                                               \
        if (::kafka_sync_sidecar::log_enabled(::kafka_sync_sidecar::LogLevel::Debug))                                  \
            ::kafka_sync_sidecar::log_line(::kafka_sync_sidecar::LogLevel::Debug, __VA_ARGS__);                        \
    } while (0)

// A libpq connection string with the value of every keyword in
// secret_keywords replaced by "****" (the sidecar passes the keywords libpq
// itself marks secret: password, sslpassword, ...; see conninfo_secret_keywords()).
// Read as libpq reads it: key = value pairs, quoted or not, and URIs
// (postgresql://user:secret@host/db?sslpassword=secret, keywords and values
// percent-encoded). A string libpq takes as a plain database name (no "=",
// not a URI) is returned as it is. From a syntax error on (a missing "=", an
// unterminated quote) the rest of the string is masked: which part of it is
// a password cannot be told any more.
std::string mask_conninfo(const std::string &conninfo, const std::vector<std::string> &secret_keywords);

// A message about conninfo with its secrets masked. libpq quotes the piece of
// a connection string it stumbled on (missing "=" after "<piece>"), or a URI
// whole; a quoted piece taken from inside a secret is masked whole, and every
// secret value (as written and as decoded) wherever it appears.
std::string mask_conninfo_message(const std::string &message, const std::string &conninfo,
                                  const std::vector<std::string> &secret_keywords);

// text with every occurrence of each secret replaced by "****" (for messages
// of libraries that may quote a configuration value back).
std::string mask_values(const std::string &text, const std::vector<std::string> &secrets);

// Error messages end in "\n" (libpq) and may span lines: one line, trimmed.
std::string one_line(const std::string &message);

} // namespace kafka_sync_sidecar
