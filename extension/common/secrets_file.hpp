// The secrets file: librdkafka properties kept out of SQL text and tables.
//
// kafka_config names it ("kafka_sync.secrets_file": "/etc/kafka_sync/chat1.properties")
// instead of holding passwords itself; the producer worker and the sidecar
// read it each time they connect, and again when it changed (the worker on a
// configuration reload, the sidecar on SIGHUP and its periodic refresh).
// One "key=value" per line; blank lines and lines starting with '#' are
// ignored; whitespace around key and value is dropped.
//
// Pure C++ (no PostgreSQL or librdkafka header): compiled into the extension
// and the sidecar. Messages never contain a value from the file.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kafka_sync {

constexpr const char kSecretsFileSetting[] = "kafka_sync.secrets_file";

// Reads path into out (in file order). On failure returns false with error
// set (the path and line number, never a value).
bool read_secrets_file(const std::string &path, std::vector<std::pair<std::string, std::string>> &out,
                       std::string &error);

// text with every one of secrets replaced by "****" (the producer's and the
// sidecar's messages from librdkafka).
std::string mask_secrets(std::string text, const std::vector<std::string> &secrets);

// The file's content as read now, to tell whether it changed; empty with
// error set when it cannot be read.
std::string secrets_file_content(const std::string &path, std::string &error);

} // namespace kafka_sync
