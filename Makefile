# assetflow: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run test lint fmt services services-stop build clean bench alerts

## run: the embedded default topology (config.toml) over examples/, from a clean state.
run:
	rm -rf data out
	$(CARGO) run --quiet -- run --config config.toml
	@echo; echo "outputs:"; wc -l out/*.jsonl

## test: everything the tests need, then every test (unit, actor-level, system), then lint.
test: services
	$(CARGO) test --workspace --all-targets
	$(MAKE) lint
	$(MAKE) alerts

## alerts: the Prometheus alert rules in ops/ are valid and their unit tests pass (promtool).
alerts:
	.services/prometheus/usr/bin/promtool check rules ops/alerts.yml
	cd ops && ../.services/prometheus/usr/bin/promtool test rules alerts_test.yml

## lint: formatting and clippy, warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: end-to-end benchmarks (written to BENCHMARKS.md) and the hot-path micro-benchmarks.
## Starts the services first: the Kafka, seed and AWS sections use them, and the AWS script
## runs boto3 from this checkout's .services/venv even when another checkout's moto listens.
## It measures the binary `cargo build --release` gives: left to itself, `cargo bench` would
## hand the bench the one it builds with the dev-dependencies' features, the tests' fail points
## among them (~1% more CPU per event), so the release build's is copied aside (same file name:
## it names the process's main thread in the report) and named.
bench: services
	$(CARGO) bench -p assetflow-actors --bench hot_paths
	$(CARGO) build --release --bin assetflow
	@dir=$$($(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'); \
	  mkdir -p "$$dir/release/as-built" && cp "$$dir/release/assetflow" "$$dir/release/as-built/assetflow" && \
	  echo "ASSETFLOW_BIN=$$dir/release/as-built/assetflow $(CARGO) bench --bench pipeline" && \
	  ASSETFLOW_BIN="$$dir/release/as-built/assetflow" $(CARGO) bench --bench pipeline

## services: install and start the local backends the tests use (moto for AWS), on 127.0.0.1.
services:
	@bash scripts/services.sh start

services-stop:
	@bash scripts/services.sh stop

build:
	$(CARGO) build --workspace --all-targets

clean:
	rm -rf data out target
