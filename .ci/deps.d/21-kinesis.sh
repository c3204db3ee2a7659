# Kinesis tests: kinesalite (npm, started by internal/kinesistest on
# 127.0.0.1) and Debian's awscli v2 (/usr/bin/aws) as an independent client.
apt_install nodejs npm awscli
kdir=internal/kinesistest/node
if [ ! -d "$kdir/node_modules/kinesalite" ]; then
	echo "installing kinesalite into $kdir"
	(cd "$kdir" && npm ci --no-audit --no-fund --loglevel=error)
fi
