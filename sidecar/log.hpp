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

// A libpq connection string with every password replaced by "****": both the
// keyword form (password=secret, password = 'a b') and the URI form
// (postgresql://user:secret@host/db, ?password=secret).
std::string mask_dsn(const std::string &dsn);

// text with every occurrence of each secret replaced by "****" (for messages
// of libraries that may quote a configuration value back).
std::string mask_values(const std::string &text, const std::vector<std::string> &secrets);

// Error messages end in "\n" (libpq) and may span lines: one line, trimmed.
std::string one_line(const std::string &message);

} // namespace kafka_sync_sidecar
