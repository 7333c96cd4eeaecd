"""nsg-agent: Azure Network Security Group semantics on Linux, enforced with nftables."""

__version__ = "0.1.0"
