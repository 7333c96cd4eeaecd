# The lab demo (included from the top Makefile). See docs/lab.md.
#
#   sudo make demo        install, build the lab from examples/lab-demo.yaml, start the lab
#                         daemon (it follows edits of the file), print the probe matrix
#   sudo make demo-probe  probe again (e.g. after editing examples/lab-demo.yaml)
#   sudo make demo-down   stop the daemon and remove the lab
#
# Everything lives in network namespaces named nsgl-demo-*: the host's own firewall, addresses
# and routes are never touched, and no namespace has a link to the host's network.
LAB_AGENT ?= $(CURDIR)/.venv/bin/nsg-agent
LAB_DEMO_FILE ?= examples/lab-demo.yaml
LAB_DEMO_NAME ?= demo
LAB_RUN_DIR ?= /run/nsg-agent/lab
LAB_DEMO_PID = $(LAB_RUN_DIR)/$(LAB_DEMO_NAME).daemon.pid
LAB_DEMO_LOG = $(LAB_RUN_DIR)/$(LAB_DEMO_NAME).daemon.log

.PHONY: demo demo-probe demo-down demo-stop-daemon

demo:
	@[ "$$(id -u)" = 0 ] || { echo "make demo: run as root (or with sudo): the lab creates network namespaces"; exit 1; }
	bash scripts/install.sh
	@$(MAKE) --no-print-directory demo-stop-daemon
	$(LAB_AGENT) lab up $(LAB_DEMO_FILE) --name $(LAB_DEMO_NAME)
	@mkdir -p $(LAB_RUN_DIR)
	@setsid $(LAB_AGENT) lab run $(LAB_DEMO_FILE) --name $(LAB_DEMO_NAME) </dev/null >$(LAB_DEMO_LOG) 2>&1 & echo $$! >$(LAB_DEMO_PID)
	@for i in $$(seq 1 100); do grep -q '"config.applied"' $(LAB_DEMO_LOG) 2>/dev/null && break; sleep 0.1; done; \
	 grep -q '"config.applied"' $(LAB_DEMO_LOG) || { echo "demo: the lab daemon did not start:"; cat $(LAB_DEMO_LOG); exit 1; }
	@echo "lab daemon running (pid $$(cat $(LAB_DEMO_PID)), log $(LAB_DEMO_LOG)): edits of $(LAB_DEMO_FILE) are applied live"
	@echo
	$(LAB_AGENT) lab probe --name $(LAB_DEMO_NAME)
	@echo
	@echo "The lab stays up. Try:"
	@echo "  $(LAB_AGENT) lab exec client --name $(LAB_DEMO_NAME) -- ip addr"
	@echo "  $(LAB_AGENT) verify $(LAB_DEMO_FILE) --nic web3 --direction Inbound --protocol tcp --local 10.10.1.6:80 --remote 203.0.113.10:50000"
	@echo "  edit $(LAB_DEMO_FILE), then, as root (or with sudo): bash scripts/demo.sh probe   (or: make demo-probe)"
	@echo "Tear it down, as root (or with sudo): bash scripts/demo.sh down   (or: make demo-down)"

demo-probe:
	$(LAB_AGENT) lab probe --name $(LAB_DEMO_NAME)

# Stops only the daemon this makefile started: the pid in the pid file, if it still is
# "nsg-agent lab run" for this lab.
demo-stop-daemon:
	@if [ -f $(LAB_DEMO_PID) ]; then \
	   pid=$$(cat $(LAB_DEMO_PID)); \
	   if [ -n "$$pid" ] && tr '\0' ' ' </proc/$$pid/cmdline 2>/dev/null | grep -q "lab run .* --name $(LAB_DEMO_NAME)"; then \
	     kill $$pid; for i in $$(seq 1 50); do [ -d /proc/$$pid ] || break; sleep 0.1; done; \
	     echo "lab daemon (pid $$pid) stopped"; \
	   fi; \
	   rm -f $(LAB_DEMO_PID); \
	 fi

demo-down: demo-stop-daemon
	$(LAB_AGENT) lab down --name $(LAB_DEMO_NAME)
	@rm -f $(LAB_DEMO_LOG)
