// Logging and password masking (see log.hpp).
#include "log.hpp"

#include "common/secrets_file.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
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

// Where a connection string holds a secret: [begin, end) of its text, and
// the value libpq reads from there (unquoted, unescaped, percent-decoded).
struct SecretSpan {
    size_t begin;
    size_t end;
    std::string value;
};

bool is_blank(char c) {
    return isspace(static_cast<unsigned char>(c)) != 0;
}

bool is_secret(const std::string &keyword, const std::vector<std::string> &secret_keywords) {
    return std::find(secret_keywords.begin(), secret_keywords.end(), keyword) != secret_keywords.end();
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

std::string percent_decode(const std::string &s, size_t begin, size_t end) {
    std::string out;
    for (size_t i = begin; i < end; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < end && (hi = hex_digit(s[i + 1])) >= 0 && (lo = hex_digit(s[i + 2])) >= 0) {
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

size_t uri_prefix_length(const std::string &s) {
    for (const char *prefix : {"postgresql://", "postgres://"})
        if (s.compare(0, strlen(prefix), prefix) == 0)
            return strlen(prefix);
    return 0;
}

// keyword = value pairs, scanned as libpq's conninfo_parse() does.
void keyword_secret_spans(const std::string &s, const std::vector<std::string> &secret_keywords,
                          std::vector<SecretSpan> &out) {
    const size_t n = s.size();
    size_t p = 0;
    while (true) {
        while (p < n && is_blank(s[p]))
            p++;
        if (p >= n)
            return;
        const size_t name_start = p;
        while (p < n && s[p] != '=' && !is_blank(s[p]))
            p++;
        const std::string name = s.substr(name_start, p - name_start);
        while (p < n && is_blank(s[p]))
            p++;
        if (p >= n || s[p] != '=') { // missing "=": libpq refuses; the rest may be a password's second half
            out.push_back({name_start, n, s.substr(name_start)});
            return;
        }
        p++;
        while (p < n && is_blank(s[p]))
            p++;
        const size_t value_start = p;
        std::string value;
        if (p < n && s[p] == '\'') {
            p++;
            while (true) {
                if (p >= n) { // unterminated quoted string
                    out.push_back({value_start, n, s.substr(value_start)});
                    return;
                }
                if (s[p] == '\\') {
                    if (++p < n)
                        value += s[p++];
                } else if (s[p] == '\'') {
                    p++;
                    break;
                } else {
                    value += s[p++];
                }
            }
        } else {
            while (p < n && !is_blank(s[p])) {
                if (s[p] == '\\') {
                    if (++p < n)
                        value += s[p++];
                } else {
                    value += s[p++];
                }
            }
        }
        if (is_secret(name, secret_keywords))
            out.push_back({value_start, p, value});
    }
}

// postgresql://[user[:password]@][netloc][/dbname][?param=value&...], scanned
// as libpq's conninfo_uri_parse_options() does.
void uri_secret_spans(const std::string &s, size_t prefix, const std::vector<std::string> &secret_keywords,
                      std::vector<SecretSpan> &out) {
    const size_t n = s.size();
    // libpq looks for the "@" ending the user info up to the first "/". A
    // password with an unencoded "/" has its "@" later, before any "?": libpq
    // then reads its pieces as port and dbname, but they are still a password.
    size_t at = s.find_first_of("@/", prefix);
    if (at != std::string::npos && s[at] == '/') {
        size_t later = s.find('@', at);
        at = later < s.find('?', at) ? later : std::string::npos;
    }
    size_t p = prefix;
    if (at != std::string::npos) {
        size_t colon = s.find(':', prefix);
        if (colon < at && is_secret("password", secret_keywords))
            out.push_back({colon + 1, at, percent_decode(s, colon + 1, at)});
        p = at + 1;
    }
    size_t query = s.find('?', p);
    if (query == std::string::npos)
        return;
    for (p = query + 1; p < n;) {
        size_t amp = std::min(s.find('&', p), n);
        size_t eq = s.find('=', p);
        if (eq >= amp) { // missing "=": libpq refuses; mask the rest
            out.push_back({p, n, s.substr(p)});
            return;
        }
        if (is_secret(percent_decode(s, p, eq), secret_keywords))
            out.push_back({eq + 1, amp, percent_decode(s, eq + 1, amp)});
        p = amp + 1;
    }
}

std::vector<SecretSpan> secret_spans(const std::string &conninfo, const std::vector<std::string> &secret_keywords) {
    std::vector<SecretSpan> spans;
    if (size_t prefix = uri_prefix_length(conninfo))
        uri_secret_spans(conninfo, prefix, secret_keywords, spans);
    else if (conninfo.find('=') != std::string::npos) // else libpq takes it as a database name
        keyword_secret_spans(conninfo, secret_keywords, spans);
    return spans;
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

std::string mask_conninfo(const std::string &conninfo, const std::vector<std::string> &secret_keywords) {
    std::string out = conninfo;
    std::vector<SecretSpan> spans = secret_spans(conninfo, secret_keywords);
    // from the last to the first, so that the earlier positions stay right
    for (auto it = spans.rbegin(); it != spans.rend(); ++it)
        out.replace(it->begin, it->end - it->begin, "****");
    return out;
}

std::string mask_conninfo_message(const std::string &message, const std::string &conninfo,
                                  const std::vector<std::string> &secret_keywords) {
    std::vector<std::string> raw, secrets;
    for (const SecretSpan &span : secret_spans(conninfo, secret_keywords)) {
        raw.push_back(conninfo.substr(span.begin, span.end - span.begin));
        secrets.push_back(raw.back());
        secrets.push_back(span.value);
    }
    std::string out;
    size_t p = 0;
    while (true) {
        size_t open = message.find('"', p);
        size_t close = open == std::string::npos ? open : message.find('"', open + 1);
        if (close == std::string::npos)
            break;
        std::string piece = message.substr(open + 1, close - open - 1);
        // "=", ":", "/", "]" are libpq's own words (missing "=" after ...)
        const bool syntax = piece.size() == 1 && strchr("=:/]", piece[0]);
        bool inside_secret = !piece.empty() && !syntax &&
                             std::any_of(raw.begin(), raw.end(),
                                         [&](const std::string &r) { return r.find(piece) != std::string::npos; });
        out.append(message, p, open + 1 - p);
        out += inside_secret ? "****" : piece;
        out += '"';
        p = close + 1;
    }
    out.append(message, p, std::string::npos);
    // the longest first: a quoted value before its unquoted self
    std::sort(secrets.begin(), secrets.end(),
              [](const std::string &a, const std::string &b) { return a.size() > b.size(); });
    return mask_values(out, secrets);
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
