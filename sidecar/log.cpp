// Logging and password masking (see log.hpp).
#include "log.hpp"

#include "common/secrets_file.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <sys/time.h>

namespace kafka_sync_sidecar {

namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::Info)};

// A plain pointer, created on first use and never destroyed: no global C++
// object with a destructor (a runner thread may still log during exit).
std::mutex &log_mutex() {
    static std::mutex *m = new std::mutex;
    return *m;
}

const char *level_name(LogLevel level) {
    switch (level) {
    case LogLevel::Error: return "ERROR";
    case LogLevel::Warning: return "WARNING";
    case LogLevel::Info: return "INFO";
    case LogLevel::Debug: return "DEBUG";
    }
    return "?";
}

// Where the value of the keyword "password" starts in a key=value connection
// string (after "password", blanks, "=", blanks), or npos.
size_t find_password_value(const std::string &s, size_t from, size_t &value_start) {
    while (true) {
        size_t k = s.find("password", from);
        if (k == std::string::npos)
            return std::string::npos;
        bool at_word_start =
            k == 0 || s[k - 1] == ' ' || s[k - 1] == '\t' || s[k - 1] == '\n' || s[k - 1] == '?' || s[k - 1] == '&';
        size_t p = k + strlen("password");
        while (p < s.size() && (s[p] == ' ' || s[p] == '\t'))
            p++;
        if (at_word_start && p < s.size() && s[p] == '=') {
            p++;
            while (p < s.size() && (s[p] == ' ' || s[p] == '\t'))
                p++;
            value_start = p;
            return k;
        }
        from = k + 1;
    }
}

} // namespace

bool parse_log_level(const std::string &text, LogLevel &out) {
    if (text == "error")
        out = LogLevel::Error;
    else if (text == "warning")
        out = LogLevel::Warning;
    else if (text == "info")
        out = LogLevel::Info;
    else if (text == "debug")
        out = LogLevel::Debug;
    else
        return false;
    return true;
}

void set_log_level(LogLevel level) {
    g_level = static_cast<int>(level);
}

bool log_enabled(LogLevel level) {
    return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed);
}

void log_line(LogLevel level, const char *fmt, ...) {
    if (!log_enabled(level))
        return;
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, nullptr);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char stamp[40];
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);

    std::lock_guard<std::mutex> guard(log_mutex());
    fprintf(stderr, "%s.%03d UTC %s: %s\n", stamp, static_cast<int>(tv.tv_usec / 1000), level_name(level), message);
    fflush(stderr);
}

std::string mask_dsn(const std::string &dsn) {
    std::string out = dsn;
    // URI form: scheme://user:secret@host
    size_t scheme = out.find("://");
    if (scheme != std::string::npos) {
        size_t auth_start = scheme + 3;
        size_t at = out.find('@', auth_start);
        size_t slash = out.find('/', auth_start);
        if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
            size_t colon = out.find(':', auth_start);
            if (colon != std::string::npos && colon < at)
                out.replace(colon + 1, at - colon - 1, "****");
        }
    }
    // keyword form, and ?password= / &password= in URIs
    size_t from = 0, value_start = 0;
    while (find_password_value(out, from, value_start) != std::string::npos) {
        size_t end = value_start;
        if (end < out.size() && out[end] == '\'') {
            end++;
            while (end < out.size() && out[end] != '\'') {
                if (out[end] == '\\' && end + 1 < out.size())
                    end++;
                end++;
            }
            if (end < out.size())
                end++;
        } else {
            while (end < out.size() && out[end] != ' ' && out[end] != '\t' && out[end] != '\n' && out[end] != '&')
                end++;
        }
        out.replace(value_start, end - value_start, "****");
        from = value_start + 4;
    }
    return out;
}

std::string mask_values(const std::string &text, const std::vector<std::string> &secrets) {
    return kafka_sync::mask_secrets(text, secrets);
}

std::string one_line(const std::string &message) {
    std::string out;
    out.reserve(message.size());
    for (char c : message) {
        bool blank = c == '\n' || c == '\r' || c == '\t' || c == ' ';
        if (!blank)
            out += c;
        else if (!out.empty() && out.back() != ' ')
            out += ' ';
    }
    while (!out.empty() && out.back() == ' ')
        out.pop_back();
    return out;
}

} // namespace kafka_sync_sidecar
