# jq and sed drive the quickstart's lines-mode functions; protoc
# regenerates proto/.
apt_install jq protobuf-compiler
go mod download
