# sandbox/network programs nftables and links through netlink from Go and
# its tests build their own namespaces, so they need no command-line tools.
# nft and ip are installed to inspect a running host (docs/network.md
# shows how); util-linux's nsenter is part of every Debian.
apt_install nftables iproute2
