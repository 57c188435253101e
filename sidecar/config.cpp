// Command-line parsing (--dsn, --dsn-file, --check, --log-level, --help,
// --version) and reading the connection string from its one source.
#include "config.hpp"

#include "db_session.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace kafka_sync_sidecar {

namespace {

// A connection string is a line; a file much larger than that is the wrong file.
constexpr size_t kMaxDsnFileSize = 64 * 1024;

void usage(FILE *out) {
    fprintf(out,
            "kafka_sync_sidecar %s - applies peers' Kafka topics to a kafka_sync database\n"
            "\n"
            "Usage: kafka_sync_sidecar --dsn-file PATH [--log-level info] [--check]\n"
            "       KAFKA_SYNC_SIDECAR_DSN='host=... dbname=...' kafka_sync_sidecar [...]\n"
            "       kafka_sync_sidecar --dsn 'host=... dbname=...' [...]\n"
            "\n"
            "Runs every enabled subscription of the database (kafka_sync.sidecar_subscriptions())\n"
            "in its own thread; subscriptions created, paused, resumed or dropped take effect at\n"
            "once (SIGHUP re-reads them too). SIGTERM or SIGINT stops it after the current\n"
            "transaction and exits 0; a large transaction being streamed is rolled back.\n"
            "\n"
            "The libpq connection string of the local database (a superuser) comes from exactly\n"
            "one of:\n"
            "  --dsn-file PATH  a file holding it; refused unless only its owner may read it\n"
            "                   (chmod 600), or root owns it and its group may only read it (640)\n"
            "  $%s\n"
            "                   the environment (removed from it once read)\n"
            "  --dsn DSN        the command line, which every local user can read (ps): put no\n"
            "                   password there\n"
            "libpq fills in what the connection string leaves out from its own environment\n"
            "variables (PGHOST, PGUSER, PGPASSWORD, PGPASSFILE, PGSSLMODE, ...), the password\n"
            "file ~/.pgpass (or $PGPASSFILE, mode 600) and the service file: with the password in\n"
            "a password file, --dsn 'dbname=chat1' holds no secret at all. Passwords and every\n"
            "other value libpq marks secret (sslpassword, ...) are shown as **** in the log.\n"
            "\n"
            "  --check          connect, show the node's status and subscriptions, and exit\n"
            "  --log-level L    error, warning, info (default) or debug\n"
            "  -h, --help       this help\n"
            "  --version        print the version\n",
            kVersion, kDsnEnvironmentVariable);
}

std::string trimmed(const std::string &s) {
    const char *blanks = " \t\n\r\f\v";
    size_t begin = s.find_first_not_of(blanks);
    if (begin == std::string::npos)
        return std::string();
    return s.substr(begin, s.find_last_not_of(blanks) + 1 - begin);
}

// "--name VALUE" or "--name=VALUE": true with value set, advancing i past it.
bool option_value(const char *name, int argc, char **argv, int &i, const char *&value) {
    const char *a = argv[i];
    size_t len = strlen(name);
    if (strncmp(a, name, len) != 0)
        return false;
    if (a[len] == '=') {
        value = a + len + 1;
        return true;
    }
    if (a[len] != '\0')
        return false;
    value = i + 1 < argc ? argv[++i] : nullptr;
    return true;
}

} // namespace

bool read_dsn_file(const std::string &path, std::string &dsn, std::string &error) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error = "cannot open the DSN file \"" + path + "\": " + strerror(errno);
        return false;
    }
    // the file's mode as opened, not as it was when looked at before
    struct stat st;
    if (fstat(fd, &st) != 0) {
        error = "cannot stat the DSN file \"" + path + "\": " + strerror(errno);
        close(fd);
        return false;
    }
    const bool others = (st.st_mode & S_IRWXO) != 0;
    const bool group_beyond_read = (st.st_mode & (S_IWGRP | S_IXGRP)) != 0;
    const bool group_reads = (st.st_mode & S_IRGRP) != 0;
    if (others || group_beyond_read || (group_reads && st.st_uid != 0)) {
        char mode[8];
        snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        error = "the DSN file \"" + path + "\" has group or world access (mode " + mode +
                "); it must be u=rw (0600) or less, or u=rw,g=r (0640) or less if owned by root";
        close(fd);
        return false;
    }
    std::string content;
    char buf[4096];
    while (true) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            error = "cannot read the DSN file \"" + path + "\": " + strerror(errno);
            close(fd);
            return false;
        }
        if (n == 0)
            break;
        content.append(buf, static_cast<size_t>(n));
        if (content.size() > kMaxDsnFileSize) {
            error = "the DSN file \"" + path + "\" is larger than 64 kB: not a connection string";
            close(fd);
            return false;
        }
    }
    close(fd);
    dsn = trimmed(content);
    return true;
}

int parse_command_line(int argc, char **argv, Options &options) {
    std::vector<std::string> sources;
    const char *dsn_arg = nullptr, *dsn_file = nullptr;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *value = nullptr;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("kafka_sync_sidecar %s\n", kVersion);
            return 0;
        } else if (option_value("--dsn", argc, argv, i, value) || option_value("--dsn-file", argc, argv, i, value) ||
                   option_value("--log-level", argc, argv, i, value)) {
            if (!value) {
                fprintf(stderr, "kafka_sync_sidecar: %s needs a value\n", a);
                return 2;
            }
            if (!strncmp(a, "--dsn-file", 10)) {
                dsn_file = value;
                sources.push_back("--dsn-file");
            } else if (!strncmp(a, "--dsn", 5)) {
                dsn_arg = value;
                sources.push_back("--dsn");
            } else if (!parse_log_level(value, options.log_level)) {
                fprintf(stderr, "kafka_sync_sidecar: invalid --log-level \"%s\" (error, warning, info or debug)\n",
                        value);
                return 2;
            }
        } else if (!strcmp(a, "--check")) {
            options.check = true;
        } else {
            fprintf(stderr, "kafka_sync_sidecar: unknown argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }

    const char *from_env = getenv(kDsnEnvironmentVariable);
    if (from_env)
        sources.push_back(std::string("$") + kDsnEnvironmentVariable);
    if (sources.size() != 1) {
        std::string given;
        for (const std::string &s : sources)
            given += (given.empty() ? "" : ", ") + s;
        if (!sources.empty()) {
            fprintf(stderr,
                    "kafka_sync_sidecar: the connection string must come from exactly one of --dsn-file, $%s "
                    "and --dsn (given: %s)\n",
                    kDsnEnvironmentVariable, given.c_str());
            return 2;
        }
        fprintf(stderr, "kafka_sync_sidecar: no connection string: give --dsn-file, $%s or --dsn\n",
                kDsnEnvironmentVariable);
        usage(stderr);
        return 2;
    }
    if (dsn_file) {
        std::string error;
        if (!read_dsn_file(dsn_file, options.dsn, error)) {
            fprintf(stderr, "kafka_sync_sidecar: %s\n", error.c_str());
            return 2;
        }
        options.dsn_source = std::string("--dsn-file ") + dsn_file;
    } else if (from_env) {
        options.dsn = trimmed(from_env);
        options.dsn_source = sources[0];
        // nothing the sidecar starts (librdkafka's sasl.kerberos.kinit.cmd) inherits it
        unsetenv(kDsnEnvironmentVariable);
    } else {
        options.dsn = trimmed(dsn_arg);
        options.dsn_source = "--dsn";
    }
    if (options.dsn.empty()) {
        fprintf(stderr, "kafka_sync_sidecar: the connection string from %s is empty\n", options.dsn_source.c_str());
        return 2;
    }
    std::string error;
    bool has_secret = false;
    if (!check_dsn(options.dsn, error, has_secret)) {
        fprintf(stderr, "kafka_sync_sidecar: the connection string from %s is invalid: %s\n",
                options.dsn_source.c_str(), error.c_str());
        return 2;
    }
    options.dsn_secret_in_argv = has_secret && !dsn_file && !from_env;
    return -1;
}

} // namespace kafka_sync_sidecar
