"""Azure-format flow logs: denied flows from NFLOG, allowed flows from conntrack, written as
hourly files (docs/flowlogs.md)."""
