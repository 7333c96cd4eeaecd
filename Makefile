# Convenience targets; each is a thin wrapper over a script so a fresh machine without make
# can run the same thing (see README).
.PHONY: install test unit integration demo demo-down bench clean

install:
	bash scripts/install.sh

test:
	bash scripts/test.sh

unit:
	bash scripts/install.sh && .venv/bin/python -m pytest -p no:cacheprovider tests

integration:
	bash scripts/install.sh && .venv/bin/python -m pytest -p no:cacheprovider integration

clean:
	rm -rf .venv build *.egg-info

-include mk/lab.mk
-include mk/bench.mk
