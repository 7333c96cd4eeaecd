# Benchmarks (issue 5): `make bench` (about 15 minutes) or `make bench-quick` (a few minutes).
# Both need root (network namespaces named nsgb-*, always removed) and write docs/benchmarks.md.
.PHONY: bench bench-quick bench-fleet

bench:
	bash scripts/install.sh && NSG_BENCH_COMMAND="make bench" .venv/bin/python -m bench $(BENCH_ARGS)

bench-quick:
	bash scripts/install.sh && NSG_BENCH_COMMAND="make bench-quick" .venv/bin/python -m bench --quick $(BENCH_ARGS)

# The fleet benchmark (issue 15): 1, 10 and 50 agents following one etcd (a few minutes; root,
# namespaces named nsgfe-*, always removed); writes its section of docs/fleet.md.
.PHONY: bench-fleet
bench-fleet:
	bash scripts/install.sh && NSG_BENCH_COMMAND="make bench-fleet" .venv/bin/python -m bench.fleet $(BENCH_ARGS)
