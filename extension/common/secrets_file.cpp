// See secrets_file.hpp.
#include "common/secrets_file.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace kafka_sync {

namespace {

std::string trim(const std::string &s) {
    const char *ws = " \t\r";
    size_t b = s.find_first_not_of(ws);
    if (b == std::string::npos)
        return std::string();
    size_t e = s.find_last_not_of(ws);
    return s.substr(b, e - b + 1);
}

} // namespace

std::string mask_secrets(std::string text, const std::vector<std::string> &secrets) {
    for (const std::string &secret : secrets) {
        if (secret.empty())
            continue;
        for (size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 4))
            text.replace(at, secret.size(), "****");
    }
    return text;
}

std::string secrets_file_content(const std::string &path, std::string &error) {
    if (path.empty() || path[0] != '/') {
        error = "the secrets file \"" + path + "\" must be given as an absolute path";
        return std::string();
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        error = "cannot read the secrets file \"" + path + "\": " + strerror(errno);
        return std::string();
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        error = "cannot read the secrets file \"" + path + "\"";
        return std::string();
    }
    error.clear();
    return text.str();
}

bool read_secrets_file(const std::string &path, std::vector<std::pair<std::string, std::string>> &out,
                       std::string &error) {
    out.clear();
    std::string text = secrets_file_content(path, error);
    if (!error.empty())
        return false;
    std::istringstream lines(text);
    std::string line;
    int number = 0;
    while (std::getline(lines, line)) {
        number++;
        std::string t = trim(line);
        if (t.empty() || t[0] == '#')
            continue;
        size_t eq = t.find('=');
        std::string key = eq == std::string::npos ? std::string() : trim(t.substr(0, eq));
        // a property name, or not a key=value line (e.g. "password: x=y"):
        // a malformed line's "key" may hold a secret and must not be echoed
        if (key.empty() || key.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789._-") != std::string::npos) {
            error = "line " + std::to_string(number) + " of the secrets file \"" + path + "\" is not key=value";
            return false;
        }
        out.emplace_back(key, trim(t.substr(eq + 1)));
    }
    return true;
}

} // namespace kafka_sync
