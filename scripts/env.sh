# Sourced by the other scripts: one persistent target directory outside the clone, so CI on the
# same machine builds incrementally, and the system RocksDB (Debian's librocksdb-dev) instead of
# an 11-minute C++ build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferromq/target}"
export ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-/usr/lib/$(uname -m)-linux-gnu}"
export ROCKSDB_INCLUDE_DIR="${ROCKSDB_INCLUDE_DIR:-/usr/include}"
export PATH="${FERROMQ_TOOLS_DIR:-$HOME/.cache/ferromq/tools}/bin:$PATH"
# Python test tools installed by scripts/install-deps.sh.
export SCHEMATHESIS_BIN="${SCHEMATHESIS_BIN:-${TEST_VENV_DIR:-$HOME/.cache/ferromq/venv}/bin/schemathesis}"
export TEST_PYTHON="${TEST_PYTHON:-${TEST_VENV_DIR:-$HOME/.cache/ferromq/venv}/bin/python}"
