# Kinesis tests: kinesalite (npm, started by internal/kinesistest on
# 127.0.0.1) and Debian's awscli v2 (/usr/bin/aws) as an independent client.
# node and npm may come from another package (nodesource's nodejs includes
# npm and conflicts with Debian's npm): install them only when missing.
apt_install awscli
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	apt_install nodejs npm
fi
kdir=internal/kinesistest/node
if [ ! -e "$kdir/node_modules/kinesalite/package.json" ] ||
	[ "$kdir/package-lock.json" -nt "$kdir/node_modules/.package-lock.json" ]; then
	echo "installing kinesalite into $kdir"
	(cd "$kdir" && npm ci --no-audit --no-fund --loglevel=error)
fi
