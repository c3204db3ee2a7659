# What the SDKs in sdk/ need to build and test:
# - sdk/python: Debian's python3-protobuf (for /usr/bin/python3), whose C++
#   backend decodes batches;
# - sdk/node: @bufbuild/protobuf (and protoc-gen-es, to regenerate its code)
#   from npm, at the versions of sdk/node/package-lock.json, into the
#   git-ignored sdk/node/node_modules;
# - sdk/c: gcc and clang, with the sanitizer and libFuzzer runtimes.
apt_install python3-protobuf gcc clang libclang-rt-14-dev
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	apt_install nodejs npm
fi
if [ ! -e sdk/node/node_modules/@bufbuild/protobuf/package.json ] ||
	[ sdk/node/package-lock.json -nt sdk/node/node_modules/.package-lock.json ]; then
	echo "installing sdk/node's npm packages"
	(cd sdk/node && npm ci --no-audit --no-fund --loglevel=error)
fi
