# kafka_sync: the PostgreSQL extension (PGXS), the sidecar and the test tools.
#
#   make && make install      build and install extension + sidecar
#   make test                 pg_regress, unit tests and pytest (as root: runs clusters as postgres)
#   make installcheck         pg_regress only, with a private temporary instance
#   make bench                kafka_sync beside native logical replication (BENCH_ARGS=--quick for CI)

EXTENSION   = kafka_sync
EXTVERSION  = 0.1.0
MODULE_big  = kafka_sync
DATA        = extension/kafka_sync--$(EXTVERSION).sql
PGFILEDESC  = "kafka_sync - multi-master sync of PostgreSQL through Kafka"

EXT_SRCS    = $(sort $(wildcard extension/*.cpp extension/*/*.cpp))
OBJS        = $(EXT_SRCS:.cpp=.o)

PG_CONFIG  ?= pg_config
# Only what PostgreSQL looks up by name is exported (extension/boundary/pg_export.hpp):
# PGDLLEXPORT as PostgreSQL 16 defines it, everything else hidden.
PG_CPPFLAGS = -I$(srcdir)/extension -isystem $(shell $(PG_CONFIG) --includedir-server) \
              '-DPGDLLEXPORT=__attribute__((visibility("default")))'
PG_CXXFLAGS = -std=c++17 -Wall -Wextra -Werror -Wno-missing-field-initializers -fno-omit-frame-pointer \
              -fvisibility=hidden
SHLIB_LINK  = -lrdkafka -ljansson -lstdc++ -Wl,--version-script=$(srcdir)/extension/boundary/kafka_sync.map

# The JIT cannot inline C++ extension code usefully; skip the bitcode build.
override with_llvm = no
# Rebuild an object when a header it includes changed (.deps/*.Po): a struct
# changed in a header and one stale object is a crashed backend.
override autodepend = yes

REGRESS      = plugin_basic plugin_types plugin_filters plugin_options node_api subscription_api apply conflicts
REGRESS_OPTS = --temp-config=$(srcdir)/test/regress.conf --temp-instance=$(CURDIR)/tmp_check \
               --load-extension=kafka_sync

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PostgreSQL 15's PG_FUNCTION_INFO_V1(f) exports pg_finfo_f but not f.
SQL_FUNCTION_OBJS = $(patsubst %.cpp,%.o,$(shell grep -l '^PG_FUNCTION_INFO_V1' $(EXT_SRCS)))
$(SQL_FUNCTION_OBJS): override CPPFLAGS += -include $(srcdir)/extension/boundary/pg_export.hpp

# PostgreSQL's executable exports json_object (an SQL function); a reference
# to jansson's json_object from kafka_sync.so would bind to it instead. See
# extension/wire/json_object_new.hpp.
# kafka_sync.so exports exactly what PostgreSQL looks up by name: the module magic,
# _PG_init, the output plugin's init, each PG_FUNCTION_INFO_V1 function with
# its pg_finfo_, each bgw_function_name (extension/boundary/pg_export.hpp).
all: check-symbols
check-symbols: $(shlib)
	@if nm -u $(shlib) | grep -qw json_object; then \
	    echo "kafka_sync.so must not call json_object(); use kafka_sync::json_object_new()"; exit 1; fi
	@expected=$$( { echo Pg_magic_func _PG_init _PG_output_plugin_init; \
	        sed -n 's/^PG_FUNCTION_INFO_V1(\([a-z_0-9]*\)).*/\1 pg_finfo_\1/p' $(EXT_SRCS); \
	        sed -n 's/.*bgw_function_name, "\([a-z_0-9]*\)".*/\1/p' $(EXT_SRCS); } | tr ' ' '\n' | sort -u); \
	    exported=$$(nm -D --defined-only $(shlib) | awk '{ print $$3 }' | sort -u); \
	    if [ "$$expected" != "$$exported" ]; then \
	        echo "kafka_sync.so must export exactly what PostgreSQL looks up by name (extension/boundary/pg_export.hpp)"; \
	        echo "missing:"; echo "$$expected" | grep -vxF "$$exported"; \
	        echo "extra:"; echo "$$exported" | grep -vxF "$$expected"; exit 1; fi

# ---- programs (plain g++, not PGXS) ----
CXXSTD      = -std=c++17 -O2 -g -Wall -Wextra -Werror
SIDECAR     = sidecar/kafka_sync_sidecar
MOCK_KAFKA  = test/kafka_mock/kafka_sync_mock_kafka
UNIT_TESTS  = test/unit/unit_tests

# extension/common/secrets_file.cpp and kafka_properties.cpp are pure C++, shared by both sides
SIDECAR_SRCS = $(sort $(wildcard sidecar/*.cpp)) extension/common/secrets_file.cpp extension/common/kafka_properties.cpp \
               extension/wire/wire.cpp extension/wire/json_scan.cpp
UNIT_SRCS    = test/unit/unit_tests.cpp extension/produce/inflight.cpp extension/common/secrets_file.cpp \
               extension/common/kafka_properties.cpp \
               extension/wire/record_encoder.cpp extension/produce/kafka_config.cpp \
               extension/wire/record_decoder.cpp extension/produce/kafka_producer.cpp extension/wire/wire.cpp \
               extension/wire/json_scan.cpp

all: $(SIDECAR) $(MOCK_KAFKA) $(UNIT_TESTS) test/unit/sidecar_tests test/unit/conflict_policy_tests test/unit/wire_tests

$(SIDECAR): $(SIDECAR_SRCS) $(wildcard sidecar/*.hpp) extension/common/secrets_file.hpp extension/common/kafka_properties.hpp \
            extension/wire/wire.hpp extension/wire/json_scan.hpp
	$(CXX) $(CXXSTD) -I$(shell $(PG_CONFIG) --includedir) -Isidecar -Iextension -o $@ $(SIDECAR_SRCS) -lpq -lrdkafka -ljansson

$(MOCK_KAFKA): test/kafka_mock/mock_kafka.cpp
	$(CXX) $(CXXSTD) -o $@ $< -lrdkafka -lpthread

$(UNIT_TESTS): $(UNIT_SRCS) $(wildcard extension/wire/*.hpp extension/produce/*.hpp extension/wire/record_decoder.hpp) \
               extension/wire/wire.hpp
	$(CXX) $(CXXSTD) -Iextension -o $@ $(UNIT_SRCS) -lrdkafka -ljansson

# The sidecar's pure parts (no libpq, no librdkafka); see the file's header.
test/unit/sidecar_tests: test/unit/sidecar_tests.cpp sidecar/txn_assembler.cpp sidecar/stream_tracker.cpp sidecar/record.cpp sidecar/pg_array.cpp \
                         sidecar/subscription.cpp sidecar/kafka_stats.cpp sidecar/log.cpp \
                         extension/common/secrets_file.cpp extension/common/kafka_properties.cpp extension/wire/wire.cpp \
                         extension/wire/json_scan.cpp \
                         $(wildcard sidecar/*.hpp) extension/common/secrets_file.hpp extension/common/kafka_properties.hpp \
                         extension/wire/wire.hpp extension/wire/json_scan.hpp
	$(CXX) $(CXXSTD) -Isidecar -Iextension -o $@ $(filter %.cpp,$^) -ljansson -lpthread

# The wire contract read by both sides: the sidecar's record grouping and the
# extension's header decoding must agree on every (hostile) header set.
test/unit/wire_tests: test/unit/wire_tests.cpp extension/wire/wire.cpp sidecar/record.cpp \
                      extension/wire/record_decoder.cpp extension/wire/json_scan.cpp extension/wire/wire.hpp \
                      sidecar/record.hpp extension/wire/record_decoder.hpp extension/wire/json_scan.hpp test/unit/check.hpp
	$(CXX) $(CXXSTD) -Isidecar -Iextension -o $@ $(filter %.cpp,$^) -ljansson

# The conflict policy's truth table (extension/apply/conflict_policy.cpp is pure C++).
test/unit/conflict_policy_tests: test/unit/conflict_policy_tests.cpp extension/apply/conflict_policy.cpp \
                                 extension/apply/conflict_policy.hpp test/unit/check.hpp
	$(CXX) $(CXXSTD) -Iextension -o $@ $(filter %.cpp,$^)

install: install-sidecar
install-sidecar: $(SIDECAR)
	$(INSTALL_PROGRAM) $(SIDECAR) '$(DESTDIR)$(bindir)/kafka_sync_sidecar'

EXTRA_CLEAN = $(SIDECAR) $(MOCK_KAFKA) $(UNIT_TESTS) test/unit/sidecar_tests test/unit/conflict_policy_tests test/unit/wire_tests tmp_check results regression.diffs regression.out .deps

.PHONY: test unit-test install-sidecar check-symbols demo demo-stop
unit-test: $(UNIT_TESTS) test/unit/sidecar_tests
	./$(UNIT_TESTS)
	./test/unit/sidecar_tests

test: all
	test/run_tests.sh

demo:
	KAFKA_BROKERS=$(KAFKA_BROKERS) test/demo/demo.sh

demo-stop:
	test/demo/demo.sh stop

# Benchmark, not a test: prints one table and writes test/bench/results/bench-<time>.json.
.PHONY: bench
bench: all
	/usr/bin/python3 test/bench/bench.py $(BENCH_ARGS)
